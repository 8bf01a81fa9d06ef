// Sampling the prior alone, and one-step Tweedie denoising.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/common.hpp>

#include <cmath>

namespace diffpost {

namespace detail {

/// The unconditional correction: the sampler's own reverse step, nothing else.
template <Sampler SamplerType>
struct PlainReverseStep {
  const SamplerType& sampler;

  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return sampler.schedule(); }
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "sampling"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the model output and the schedule.";
  }

  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& /*context*/, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::NoGradGuard no_grad;
    auto result = sampler.step(prediction.output, prediction.x_t, prediction.index, noise);
    return {result.x_prev, result.x0_hat, {}};
  }
};

}  // namespace detail

/// Runs the sampler's reverse process from x at schedule step `start_index` down to 0 with no conditioning
/// (SDEdit's second half, and plain sampling when x = x_T and start_index = N - 1).
template <ScoreModel Model, Sampler SamplerType>
torch::Tensor reverse_process(Model& model, const SamplerType& sampler, torch::Tensor x, int64_t start_index,
                              at::Generator& generator, const StepCallback& callback = {}) {
  return detail::reverse_loop(detail::PlainReverseStep<SamplerType>{sampler}, model, torch::Tensor{},
                              std::move(x), start_index, generator, callback);
}

/// The network work of unconditional sampling over the whole schedule: one evaluation per step.
template <Sampler SamplerType>
NetworkCost unconditional_network_cost(const SamplerType& sampler) {
  return {sampler.schedule().num_steps(), 0};
}

/// Draws `shape` [B, C, H, W] samples from the prior: x_T ~ N(0, I), then the full reverse process.
template <ScoreModel Model, Sampler SamplerType>
torch::Tensor sample_unconditional(Model& model, const SamplerType& sampler, const Shape& shape,
                                   at::Generator& generator, torch::TensorOptions options = {},
                                   const StepCallback& callback = {}) {
  TORCH_CHECK(shape.size() == 4, "sample_unconditional: shape must be [B, C, H, W], got ",
              c10::IntArrayRef(shape));
  auto x_T = detail::randn_like(torch::empty(shape, options), generator);
  return reverse_process(model, sampler, x_T, sampler.schedule().num_steps() - 1, generator, callback);
}

/// One-step Tweedie denoising: x0_hat = E[x_0 | x_t] from a single model evaluation at schedule step `index`.
template <ScoreModel Model>
torch::Tensor tweedie_denoise(Model& model, const DiffusionSchedule& schedule, const torch::Tensor& x_t,
                              int64_t index, bool clip = true) {
  torch::NoGradGuard no_grad;
  auto output = model(x_t, detail::model_timesteps(schedule, index, x_t));
  return predict_x0_from_eps(schedule, x_t, split_model_output(output, x_t).eps, index, clip);
}

/// The schedule step whose noise level best matches an image corrupted as x + sigma n: x_t = sqrt(abar) x +
/// sqrt(1 - abar) n has noise-to-signal sqrt((1 - abar) / abar), so x_t = sqrt(abar) (x + sigma n) at the
/// step where that ratio is closest to sigma.
inline int64_t index_for_noise_level(const DiffusionSchedule& schedule, double sigma) {
  TORCH_CHECK(sigma >= 0.0, "noise level sigma must be >= 0, got ", sigma);
  int64_t best = 0;
  double best_error = INFINITY;
  for (int64_t i = 0; i < schedule.num_steps(); ++i) {
    const double ratio = schedule.sqrt_recipm1_alphas_cumprod()[i];
    const double error = std::abs(ratio - sigma);
    if (error < best_error) {
      best_error = error;
      best = i;
    }
  }
  return best;
}

}  // namespace diffpost
