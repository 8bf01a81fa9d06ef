// Annealed Langevin-style measurement guidance on x_t (Jalal et al. 2021, "ScoreALD" in the seed reports),
// adapted to the VP / DDPM reverse process.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/ddpm.hpp>

#include <cmath>

namespace diffpost {

/// Options of ScoreALD. `sigma` is the measurement noise level the weighting assumes; `gamma` scales the
/// annealed term gamma_t^2 = gamma^2 (1 - abar_t), the noise variance still present in x_t.
struct ScoreALDOptions {
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(double, sigma) = 0.05;
  TORCH_ARG(double, gamma) = 1.0;
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// ScoreALD: x_{t-1} = x'_{t-1} - scale beta_t grad_{x_t} r(y, A(x_t))^2 / (sigma^2 + gamma_t^2), where
/// x'_{t-1} is the plain reverse step and r the likelihood's data fidelity (the L2 norm for Gaussian noise,
/// so r^2 is the squared residual of the ALD likelihood). The step size beta_t, the variance the reverse step
/// adds, makes it an annealed Langevin step. Unlike DPS the residual is of x_t itself, so no gradient goes
/// through the network.
template <NoiseModel Likelihood, ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
class ScoreALD : public detail::PosteriorSamplerBase<ScoreALD<Likelihood, Operator, SamplerType>> {
 public:
  ScoreALD(Operator measurement_operator, Likelihood likelihood, SamplerType sampler,
           ScoreALDOptions options = {})
      : operator_(std::move(measurement_operator)),
        likelihood_(std::move(likelihood)),
        sampler_(std::move(sampler)),
        options_(std::move(options)) {
    TORCH_CHECK(options_.scale() >= 0.0 && std::isfinite(options_.scale()),
                "ScoreALDOptions::scale must be a finite number >= 0, got ", options_.scale());
    TORCH_CHECK(
        options_.sigma() >= 0.0 && options_.gamma() >= 0.0 && options_.sigma() + options_.gamma() > 0.0,
        "ScoreALDOptions: sigma and gamma must be >= 0 and not both 0, got sigma ", options_.sigma(),
        " and gamma ", options_.gamma());
    TORCH_CHECK(options_.num_samples() >= 1, "ScoreALDOptions::num_samples must be >= 1, got ",
                options_.num_samples());
  }

  /// The guidance weight scale beta_t / (sigma^2 + gamma_t^2) at schedule step `index`.
  [[nodiscard]] double step_size(int64_t index) const {
    const auto& schedule = sampler_.schedule();
    schedule.check_index(index);
    const double gamma_squared =
        options_.gamma() * options_.gamma() * (1.0 - schedule.alphas_cumprod()[index]);
    return options_.scale() * schedule.betas()[index] / (options_.sigma() * options_.sigma() + gamma_squared);
  }

  /// The ScoreALD correction of a prediction taken without graph: the sampler's reverse step with the given
  /// `noise`, then the Langevin-style gradient step on the residual of A(x_t).
  [[nodiscard]] MethodStep guided_step(const NetworkPrediction& prediction, const torch::Tensor& y,
                                       const torch::Tensor& noise) const {
    SamplerStep reverse_step;
    {
      torch::NoGradGuard no_grad;
      reverse_step = sampler_.step(prediction.output, prediction.x_t, prediction.index, noise);
    }
    auto x = prediction.x_t.detach().requires_grad_(true);
    torch::AutoGradMode enable_grad(true);
    auto residual = likelihood_.data_fidelity(y, operator_.forward(x));
    auto gradient = torch::autograd::grad({residual.square().sum()}, {x})[0];
    return {reverse_step.x_prev - step_size(prediction.index) * gradient, reverse_step.x0_hat,
            residual.detach()};
  }

  /// One ScoreALD step drawing the ancestral noise from `generator`.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  at::Generator& generator) const {
    auto noise = detail::randn_like(x_t, generator);
    return guided_step(detail::evaluate_network(model, schedule(), x_t, index, differentiates_network), y,
                       noise);
  }

  /// The reverse loop's hook.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    return guided_step(prediction, y, noise);
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return sampler_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return sampler_.schedule(); }
  /// The residual is of x_t itself: no gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] int64_t num_samples() const noexcept { return options_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "ScoreALD"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept { return "Lower ScoreALDOptions::scale."; }

 private:
  Operator operator_;
  Likelihood likelihood_;
  SamplerType sampler_;
  ScoreALDOptions options_;
};

}  // namespace diffpost
