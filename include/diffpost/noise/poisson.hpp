// Poisson (shot) noise on 8-bit photon counts, as in the DPS reference.
#pragma once

#include <torch/torch.h>

#include <diffpost/concepts.hpp>

namespace diffpost {

/// Poisson measurement noise at photon `rate` (counts per 8-bit level). Sampling follows the reference:
/// p = clamp((A x + 1) / 2, 0, 1), counts ~ Poisson(255 rate p), y = clamp(2 counts / (255 rate) - 1, -1, 1),
/// so E[y] = A x away from the clamps and Var[y] = 4 p / (255 rate) (higher rate = less noise).
/// The data-fidelity residual is the reference's `mean(||y - A x0||_2 / |y|)` per batch element:
/// r_b = ||y_b - A x0_b||_2 * mean_i 1 / max(|y_b,i|, floor), with floor = 1 / (255 rate), half of one
/// quantisation step of y. The floor guards the division: at rate 1 every reference measurement has |y| >=
/// 1/255 (y = (2k - 255) / 255 is never 0), so nothing changes there; at even rates y can be exactly 0, where
/// the reference would divide by zero and return infinity, and the floor keeps the residual finite.
class PoissonLikelihood {
 public:
  /// Noise at `rate` > 0 (the reference's config value; 1.0 = one photon per 8-bit level).
  explicit PoissonLikelihood(double rate = 1.0) : rate_(rate) {
    TORCH_CHECK(rate > 0.0, "PoissonLikelihood: rate must be positive, got ", rate);
  }

  /// A noisy measurement drawn from `generator` (on the generator's device, then moved back), not
  /// differentiable.
  torch::Tensor sample(const torch::Tensor& clean, at::Generator& generator) const {
    TORCH_CHECK(clean.defined() && at::isFloatingType(clean.scalar_type()),
                "PoissonLikelihood::sample: expected a floating-point measurement tensor");
    const double levels = 255.0 * rate_;
    const auto intensity = ((clean.detach() + 1.0) / 2.0).clamp(0.0, 1.0) * levels;
    const auto counts = at::poisson(intensity.to(generator.device()), generator).to(clean.device());
    return (counts / levels * 2.0 - 1.0).clamp(-1.0, 1.0);
  }

  /// r_b = ||y_b - predicted_b||_2 * mean_i 1 / max(|y_b,i|, 1 / (255 rate)), shape [B], differentiable in
  /// `predicted`.
  [[nodiscard]] torch::Tensor data_fidelity(const torch::Tensor& y, const torch::Tensor& predicted) const {
    TORCH_CHECK(y.sizes() == predicted.sizes(), "PoissonLikelihood::data_fidelity: y has shape ", y.sizes(),
                " but the predicted measurement has shape ", predicted.sizes());
    TORCH_CHECK(y.dim() >= 1, "PoissonLikelihood::data_fidelity: expected a batch [B, ...], got a scalar");
    const auto batch = y.size(0);
    const auto residual_norm = (y - predicted).reshape({batch, -1}).norm(2, 1);
    const auto inverse_magnitude =
        1.0 / y.detach().abs().clamp_min(min_abs_measurement()).reshape({batch, -1});
    return residual_norm * inverse_magnitude.mean(1);
  }

  [[nodiscard]] double rate() const { return rate_; }
  /// The floor on |y| in the residual's division: 1 / (255 rate).
  [[nodiscard]] double min_abs_measurement() const { return 1.0 / (255.0 * rate_); }

 private:
  double rate_;
};

static_assert(NoiseModel<PoissonLikelihood>);

}  // namespace diffpost
