// Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023): ancestral sampling with a
// gradient step on the measurement residual of Tweedie's x0 estimate after every reverse step.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
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
  /// Posterior samples drawn per measurement, in one batch.
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// Diffusion posterior sampling for y = A(x) + noise:
///   x'_{t-1} ~ p(x_{t-1} | x_t)                      (the Sampler's ordinary reverse step)
///   x_{t-1}  = x'_{t-1} - zeta_t grad_{x_t} r(y, A(x0_hat(x_t)))   (DPS Algorithm 1, eq. 16)
/// where r is the likelihood's data fidelity (the plain L2 norm for Gaussian noise). The gradient is taken
/// through the operator and the score model by autograd; only the input gradient is requested. Template
/// parameters pick the likelihood, the operator and the sampler; DPSOptions picks the step size.
///
/// Clipping of x0_hat is an option of the sampler (DDPMOptions::clip_denoised, on by default as in the
/// reference).
template <NoiseModel Likelihood, ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
class DPS : public detail::PosteriorSamplerBase<DPS<Likelihood, Operator, SamplerType>> {
 public:
  DPS(Operator measurement_operator, Likelihood likelihood, SamplerType sampler, DPSOptions options = {})
      : operator_(std::move(measurement_operator)),
        likelihood_(std::move(likelihood)),
        sampler_(std::move(sampler)),
        options_(std::move(options)) {
    TORCH_CHECK(options_.scale() >= 0.0 && std::isfinite(options_.scale()),
                "DPSOptions::scale must be a finite number >= 0, got ", options_.scale());
    TORCH_CHECK(options_.num_samples() >= 1, "DPSOptions::num_samples must be >= 1, got ",
                options_.num_samples());
    TORCH_CHECK(options_.decay_rate() >= 0.0, "DPSOptions::decay_rate must be >= 0, got ",
                options_.decay_rate());
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const Likelihood& likelihood() const noexcept { return likelihood_; }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return sampler_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return sampler_.schedule(); }
  [[nodiscard]] const DPSOptions& options() const noexcept { return options_; }

  /// zeta at schedule step `index` under the chosen StepSizeSchedule.
  [[nodiscard]] double step_size(int64_t index) const {
    const int64_t n = sampler_.schedule().num_steps();
    sampler_.schedule().check_index(index);
    switch (options_.step_size_schedule()) {
      case StepSizeSchedule::constant:
        return options_.scale();
      case StepSizeSchedule::linear_decay:
        return options_.scale() * static_cast<double>(index + 1) / static_cast<double>(n);
      case StepSizeSchedule::exponential_decay: {
        const double progress = n > 1 ? static_cast<double>(n - 1 - index) / static_cast<double>(n - 1) : 0.0;
        return options_.scale() * std::exp(-options_.decay_rate() * progress);
      }
    }
    TORCH_CHECK(false, "unknown StepSizeSchedule");
  }

  /// The DPS correction (Algorithm 1, eq. 16) of a network prediction taken with its graph: the sampler's
  /// reverse step with the given standard-normal `noise`, then the gradient step on the residual of
  /// A(x0_hat(x_t)). `y` has x_t's batch size.
  [[nodiscard]] MethodStep gradient_step(const NetworkPrediction& prediction, const torch::Tensor& y,
                                         const torch::Tensor& noise) const {
    const auto& x = prediction.x_t;
    torch::AutoGradMode enable_grad(true);
    auto reverse_step = sampler_.step(prediction.output, x, prediction.index, noise);
    auto residual = likelihood_.data_fidelity(y, operator_.forward(reverse_step.x0_hat));
    TORCH_CHECK(residual.dim() == 1 && residual.size(0) == x.size(0),
                "data_fidelity must return one value per ", "sample, shape [", x.size(0), "], got ",
                residual.sizes());
    // Samples are independent, so the gradient of the sum is each sample's own gradient.
    auto gradient = torch::autograd::grad({residual.sum()}, {x})[0];
    auto x_prev = reverse_step.x_prev.detach() - step_size(prediction.index) * gradient;
    return {x_prev, reverse_step.x0_hat.detach(), residual.detach()};
  }

  /// One DPS step at schedule step `index` from x_t, with an explicit standard-normal `noise` for the
  /// ancestral part, so that a step can be compared number for number with the reference. `y` has x_t's batch
  /// size.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  const torch::Tensor& noise) const {
    return gradient_step(detail::evaluate_network(model, schedule(), x_t, index, differentiates_network), y,
                         noise);
  }

  /// One DPS step drawing the ancestral noise from `generator` (what `sample` does).
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  at::Generator& generator) const {
    return step(model, x_t, y, index, detail::randn_like(x_t, generator));
  }

  /// The reverse loop's hook: the gradient step on the loop's prediction.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    return gradient_step(prediction, y, noise);
  }

  /// DPS backpropagates through the network at every step.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] int64_t num_samples() const noexcept { return options_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "DPS"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower DPSOptions::scale (the reference uses 0.3 to 1.0) or check the measurement scale.";
  }

 private:
  Operator operator_;
  Likelihood likelihood_;
  SamplerType sampler_;
  DPSOptions options_;
};

}  // namespace diffpost
