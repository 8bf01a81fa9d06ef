// Noise-free measurements.
#pragma once

#include <torch/torch.h>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/residual.hpp>

namespace diffpost {

/// No measurement noise: `sample` returns the clean measurement unchanged (the generator is not used), and
/// the data-fidelity residual is the plain per-sample L2 norm ||y_b - A x0_b||_2, as for Gaussian noise (DPS
/// eq. 16 with the reference's unsquared norm). Use it for noiseless experiments or when y is already a real
/// measurement.
class NoNoise {
 public:
  /// The noise level: 0 (HasNoiseLevel), so methods that weigh the measurement by its noise treat it as
  /// exact.
  [[nodiscard]] double sigma() const noexcept { return 0.0; }

  /// Returns `clean` itself.
  torch::Tensor sample(const torch::Tensor& clean, at::Generator& /*generator*/) const { return clean; }

  /// ||y_b - predicted_b||_2 per batch element, shape [B], differentiable in `predicted`.
  [[nodiscard]] torch::Tensor data_fidelity(const torch::Tensor& y, const torch::Tensor& predicted) const {
    return detail::l2_residual(y, predicted, "NoNoise::data_fidelity");
  }
};

static_assert(GaussianNoiseModel<NoNoise>);

}  // namespace diffpost
