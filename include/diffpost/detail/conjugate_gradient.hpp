// Private to diffpost: not part of the public API, may change without notice.
//
// Conjugate gradients for the symmetric positive (semi-)definite systems some methods solve at every step
// ((A^T A + rho I) x = b for DiffPIR's data step, (r^2 A A^T + sigma^2 I) u = b for PiGDM), batch element by
// batch element, without a device sync.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace diffpost::detail {

/// Per-batch-element inner products <u_b, v_b>, shaped [B, 1, ..., 1] to broadcast against u.
inline torch::Tensor batch_inner(const torch::Tensor& u, const torch::Tensor& v) {
  std::vector<int64_t> shape(static_cast<size_t>(u.dim()), 1);
  shape[0] = u.size(0);
  return (u * v).reshape({u.size(0), -1}).sum(1).view(shape);
}

/// Solves M x = b for each batch element with `iterations` conjugate-gradient steps from `x`, where `apply`
/// computes M v for a batch v and M is symmetric positive semi-definite (Hestenes & Stiefel 1952). A fixed
/// iteration count instead of a tolerance keeps the loop free of device syncs; a batch element whose residual
/// has vanished stops moving (its step lengths are set to 0 instead of 0 / 0).
template <class Apply>
torch::Tensor conjugate_gradient(const Apply& apply, const torch::Tensor& b, torch::Tensor x,
                                 int64_t iterations) {
  auto residual = b - apply(x);
  auto direction = residual;
  auto residual_norm = batch_inner(residual, residual);
  for (int64_t k = 0; k < iterations; ++k) {
    const auto m_direction = apply(direction);
    const auto curvature = batch_inner(direction, m_direction);
    const auto alpha =
        torch::where(curvature > 0, residual_norm / curvature, torch::zeros_like(residual_norm));
    x = x + alpha * direction;
    residual = residual - alpha * m_direction;
    const auto new_norm = batch_inner(residual, residual);
    const auto beta = torch::where(residual_norm > 0, new_norm / residual_norm, torch::zeros_like(new_norm));
    direction = residual + beta * direction;
    residual_norm = new_norm;
  }
  return x;
}

}  // namespace diffpost::detail
