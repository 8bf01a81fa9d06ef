// Annealed Langevin-style measurement guidance on x_t (Jalal et al. 2021, "ScoreALD" in the seed reports),
// adapted to the VP / DDPM reverse process.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/samplers/ddpm.hpp>

#include <cmath>

namespace diffpost {

/// Options of ScoreALD. `sigma` is the measurement noise level the weighting assumes; `gamma` scales the
/// annealed term gamma_t^2 = gamma^2 (1 - abar_t), the noise variance still present in x_t.
struct ScoreALDOptions {
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(double, sigma) = 0.05;
  TORCH_ARG(double, gamma) = 1.0;
};

/// ScoreALD: x_{t-1} = x'_{t-1} - scale beta_t grad_{x_t} r(y, A(x_t))^2 / (sigma^2 + gamma_t^2), where
/// x'_{t-1} is the plain reverse step and r the likelihood's data fidelity (the L2 norm for Gaussian noise,
/// so r^2 is the squared residual of the ALD likelihood). The step size beta_t, the variance the reverse step
/// adds, makes it an annealed Langevin step. Unlike DPS the residual is of x_t itself, so no gradient goes
/// through the network.
template <NoiseModel Likelihood, ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
class ScoreALD : public detail::MethodParts<Likelihood, Operator, SamplerType, ScoreALDOptions> {
 public:
  ScoreALD(Likelihood likelihood, Operator measurement_operator, SamplerType sampler,
           ScoreALDOptions options = {})
      : ScoreALD::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(sampler),
                              std::move(options)) {
    const auto& o = this->options();
    TORCH_CHECK(o.scale() >= 0.0 && std::isfinite(o.scale()),
                "ScoreALDOptions::scale must be a finite number >= 0, got ", o.scale());
    TORCH_CHECK(o.sigma() >= 0.0 && o.gamma() >= 0.0 && o.sigma() + o.gamma() > 0.0,
                "ScoreALDOptions: sigma and gamma must be >= 0 and not both 0, got sigma ", o.sigma(),
                " and gamma ", o.gamma());
  }

  /// The guidance weight scale beta_t / (sigma^2 + gamma_t^2) at schedule step `index`.
  [[nodiscard]] double step_size(int64_t index) const {
    const auto& o = this->options();
    const auto& schedule = this->schedule();
    schedule.check_index(index);
    const double gamma_squared = o.gamma() * o.gamma() * (1.0 - schedule.alphas_cumprod()[index]);
    return o.scale() * schedule.betas()[index] / (o.sigma() * o.sigma() + gamma_squared);
  }

  /// The sampler's reverse step with the loop's `noise`, then the Langevin-style gradient step on the
  /// residual of A(x_t).
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    auto result = detail::plain_reverse_step(this->sampler(), prediction, noise);
    auto fidelity = fidelity_gradient(this->likelihood(), this->measurement_operator(), y, prediction.x_t,
                                      FidelityPenalty::squared_norm);
    result.x_prev = result.x_prev - step_size(prediction.index) * fidelity.gradient;
    result.residual = std::move(fidelity.residual);
    return result;
  }

  /// The residual is of x_t itself: no gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "ScoreALD"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept { return "Lower ScoreALDOptions::scale."; }
};

}  // namespace diffpost
