// Private to diffpost: not part of the public API, may change without notice.
//
// The data-fidelity residual of Gaussian (and noise-free) measurements.
#pragma once

#include <torch/torch.h>

namespace diffpost::detail {

/// ||y_b - predicted_b||_2 per batch element, shape [B], differentiable in `predicted`: the plain, unsquared
/// norm the reference descends (DPS eq. 16 with its `ps` conditioning). `caller` names the noise model in
/// errors.
inline torch::Tensor l2_residual(const torch::Tensor& y, const torch::Tensor& predicted, const char* caller) {
  TORCH_CHECK(y.sizes() == predicted.sizes(), caller, ": measurement shape ", y.sizes(),
              " differs from the predicted measurement A(x0_hat) shape ", predicted.sizes());
  TORCH_CHECK(y.dim() >= 1, caller, ": expected a measurement batch [B, ...], got a scalar");
  return (y - predicted).reshape({y.size(0), -1}).norm(2, 1);
}

}  // namespace diffpost::detail
