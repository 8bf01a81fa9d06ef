// Ancestral DDPM sampling (Ho et al. 2020), with the learned-range variance of improved DDPM (Nichol &
// Dhariwal 2021) as the reference's FFHQ and ImageNet models use.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <optional>

namespace diffpost {

/// How the reverse-step variance is chosen.
enum class VarianceType {
  learned_range,  ///< log var = frac log(beta) + (1 - frac) log(posterior var), frac = (v + 1) / 2 from the
                  ///< model
  fixed_small,    ///< the posterior variance of q(x_{t-1} | x_t, x_0)
  fixed_large,    ///< beta_t (with the posterior variance at t = 0, as the reference)
};

/// Options of DDPMSampler. `variance` left unset follows the model output: learned_range when it carries 2C
/// channels, fixed_large when it carries C (the guided-diffusion default for eps-only models).
struct DDPMOptions {
  TORCH_ARG(bool, clip_denoised) = true;
  TORCH_ARG(std::optional<VarianceType>, variance) = std::nullopt;
};

/// Mean, log-variance and x0 estimate of p(x_{t-1} | x_t) for one step.
struct ReverseDistribution {
  torch::Tensor mean;
  torch::Tensor log_variance;  ///< broadcastable against mean
  torch::Tensor x0_hat;
};

/// The DDPM ancestral sampler: x_{t-1} = mu(x_t, x0_hat) + exp(log var / 2) z, with no noise at the last
/// step. Satisfies the Sampler concept.
class DDPMSampler {
 public:
  explicit DDPMSampler(DiffusionSchedule schedule, DDPMOptions options = {})
      : schedule_(std::move(schedule)), options_(std::move(options)) {}

  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }
  [[nodiscard]] const DDPMOptions& options() const noexcept { return options_; }

  /// p(x_{t-1} | x_t) at step `index` from the raw model output (improved DDPM eq. 15 for learned_range).
  [[nodiscard]] ReverseDistribution reverse_distribution(const torch::Tensor& model_output,
                                                         const torch::Tensor& x_t, int64_t index) const {
    auto parts = split_model_output(model_output, x_t);
    const auto type = options_.variance().value_or(
        parts.variance_values.defined() ? VarianceType::learned_range : VarianceType::fixed_large);
    auto x0_hat = predict_x0_from_eps(schedule_, x_t, parts.eps, index, options_.clip_denoised());
    auto mean = posterior_mean(schedule_, x0_hat, x_t, index);
    torch::Tensor log_variance;
    switch (type) {
      case VarianceType::learned_range: {
        TORCH_CHECK(parts.variance_values.defined(), "VarianceType::learned_range needs a model output of ",
                    2 * x_t.size(1), " channels (eps and variance), got ", model_output.size(1),
                    "; use fixed_small or fixed_large for eps-only models");
        log_variance = learned_range_log_variance(schedule_, parts.variance_values, index);
        break;
      }
      case VarianceType::fixed_small:
        log_variance = torch::full({}, schedule_.posterior_log_variance_clipped()[index], x_t.options());
        break;
      case VarianceType::fixed_large: {
        const double variance = index == 0 && schedule_.num_steps() > 1 ? schedule_.posterior_variance()[1]
                                                                        : schedule_.betas()[index];
        log_variance = torch::full({}, std::log(variance), x_t.options());
        break;
      }
    }
    return {mean, log_variance, x0_hat};
  }

  /// One ancestral step with the given standard-normal `noise` (unused at index 0).
  [[nodiscard]] SamplerStep step(const torch::Tensor& model_output, const torch::Tensor& x_t, int64_t index,
                                 const torch::Tensor& noise) const {
    detail::check_step_inputs(schedule_, x_t, index, noise);
    auto p = reverse_distribution(model_output, x_t, index);
    if (index == 0) return {p.mean, p.x0_hat};
    return {p.mean + torch::exp(0.5 * p.log_variance) * noise, p.x0_hat};
  }

 private:
  DiffusionSchedule schedule_;
  DDPMOptions options_;
};

static_assert(Sampler<DDPMSampler>);

}  // namespace diffpost
