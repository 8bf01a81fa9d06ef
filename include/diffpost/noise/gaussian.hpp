// Additive white Gaussian measurement noise, y = A(x) + sigma n, and the DPS data-fidelity term for it.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/detail/residual.hpp>

namespace diffpost {

/// Gaussian likelihood p(y | x) = N(A(x), sigma^2 I), sigma in units of the [-1, 1] image scale
/// (the reference's 0.05 is 0.025 on a [0, 1] scale). Satisfies NoiseModel.
class GaussianLikelihood {
 public:
  explicit GaussianLikelihood(double sigma) : sigma_(sigma) {
    TORCH_CHECK(sigma >= 0.0, "GaussianLikelihood: sigma must be >= 0, got ", sigma);
  }

  [[nodiscard]] double sigma() const noexcept { return sigma_; }

  /// y = clean + sigma * n with n ~ N(0, I) drawn from `generator`.
  [[nodiscard]] torch::Tensor sample(const torch::Tensor& clean, at::Generator& generator) const {
    return clean + sigma_ * detail::randn_like(clean, generator);
  }

  /// ||y - A(x0_hat)||_2 per batch element, the plain (not squared) norm the reference differentiates
  /// (DPS eq. 16 with zeta_i = zeta' / ||y - A(x0_hat)||, so scale = 2 zeta').
  [[nodiscard]] torch::Tensor data_fidelity(const torch::Tensor& y, const torch::Tensor& predicted) const {
    return detail::l2_residual(y, predicted, "GaussianLikelihood");
  }

 private:
  double sigma_;
};

static_assert(GaussianNoiseModel<GaussianLikelihood>);

}  // namespace diffpost
