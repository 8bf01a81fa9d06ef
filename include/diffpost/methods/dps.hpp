// Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023): ancestral sampling with a
// gradient step on the measurement residual of Tweedie's x0 estimate after every reverse step.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/samplers/ddpm.hpp>

#include <cmath>
#include <cstdint>

namespace diffpost {

/// How the DPS step size zeta_i varies over the N reverse steps (DPS appendix C.3 ablates these). With index
/// i running from N-1 (first step) to 0 and progress p = (N-1-i)/(N-1):
///   constant:          zeta_i = scale
///   linear_decay:      zeta_i = scale (i + 1) / N
///   exponential_decay: zeta_i = scale exp(-decay_rate p)
enum class StepSizeSchedule { constant, linear_decay, exponential_decay };

/// Options of DPS. `scale` is the reference's step size on the plain residual norm; its configs use 0.3 (SR
/// x4, Gaussian and motion deblur), 0.5 (inpainting) and 1.0 (phase retrieval) for noise sigma = 0.05.
struct DPSOptions {
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(StepSizeSchedule, step_size_schedule) = StepSizeSchedule::constant;
  TORCH_ARG(double, decay_rate) = 3.0;
};

/// Diffusion posterior sampling for y = A(x) + noise:
///   x'_{t-1} ~ p(x_{t-1} | x_t)                      (the Sampler's ordinary reverse step)
///   x_{t-1}  = x'_{t-1} - zeta_t grad_{x_t} r(y, A(x0_hat(x_t)))   (DPS Algorithm 1, eq. 16)
/// where r is the likelihood's data fidelity (the plain L2 norm for Gaussian noise). The gradient is taken
/// through the operator and the score model by autograd; only the input gradient is requested. Template
/// parameters pick the likelihood, the operator and the sampler, in the constructor's order; DPSOptions picks
/// the step size. Clipping of x0_hat is an option of the sampler (DDPMOptions::clip_denoised, on by default
/// as in the reference). Run it with PosteriorSampler.
template <NoiseModel Likelihood, ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
class DPS : public detail::MethodParts<Likelihood, Operator, SamplerType, DPSOptions> {
 public:
  DPS(Likelihood likelihood, Operator measurement_operator, SamplerType sampler, DPSOptions options = {})
      : DPS::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(sampler),
                         std::move(options)) {
    const auto& o = this->options();
    TORCH_CHECK(o.scale() >= 0.0 && std::isfinite(o.scale()),
                "DPSOptions::scale must be a finite number >= 0, got ", o.scale());
    TORCH_CHECK(o.decay_rate() >= 0.0, "DPSOptions::decay_rate must be >= 0, got ", o.decay_rate());
  }

  /// zeta at schedule step `index` under the chosen StepSizeSchedule.
  [[nodiscard]] double step_size(int64_t index) const {
    const auto& o = this->options();
    const int64_t n = this->schedule().num_steps();
    this->schedule().check_index(index);
    switch (o.step_size_schedule()) {
      case StepSizeSchedule::constant:
        return o.scale();
      case StepSizeSchedule::linear_decay:
        return o.scale() * static_cast<double>(index + 1) / static_cast<double>(n);
      case StepSizeSchedule::exponential_decay: {
        const double progress = n > 1 ? static_cast<double>(n - 1 - index) / static_cast<double>(n - 1) : 0.0;
        return o.scale() * std::exp(-o.decay_rate() * progress);
      }
    }
    TORCH_CHECK(false, "unknown StepSizeSchedule");
  }

  /// The DPS correction of a network prediction taken with its graph: the sampler's reverse step with the
  /// loop's `noise`, then the gradient step on the residual of A(x0_hat(x_t)).
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::AutoGradMode enable_grad(true);
    auto reverse_step = this->sampler().step(prediction.output, prediction.x_t, prediction.index, noise);
    auto fidelity = fidelity_gradient_through(this->likelihood(), this->measurement_operator(), y,
                                              reverse_step.x0_hat, prediction.x_t, FidelityPenalty::norm);
    auto x_prev = reverse_step.x_prev.detach() - step_size(prediction.index) * fidelity.gradient;
    return {x_prev, reverse_step.x0_hat.detach(), std::move(fidelity.residual)};
  }

  /// DPS backpropagates through the network at every step.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] static const char* method_name() noexcept { return "DPS"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower DPSOptions::scale (the reference uses 0.3 to 1.0) or check the measurement scale.";
  }
};

}  // namespace diffpost
