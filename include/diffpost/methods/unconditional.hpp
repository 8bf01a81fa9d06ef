// Sampling the prior alone, and one-step Tweedie denoising.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/common.hpp>

#include <cmath>

namespace diffpost {

/// Runs the sampler's reverse process from x at schedule step `start_index` down to 0 with no conditioning
/// (SDEdit's second half, and plain sampling when x = x_T and start_index = N - 1).
template <ScoreModel Model, Sampler SamplerType>
torch::Tensor reverse_process(Model& model, const SamplerType& sampler, torch::Tensor x, int64_t start_index,
                              at::Generator& generator, const StepCallback& callback = {}) {
  sampler.schedule().check_index(start_index);
  torch::NoGradGuard no_grad;
  detail::DivergenceMonitor monitor(x);
  const int64_t steps = start_index + 1;
  const torch::Tensor no_residual;
  for (int64_t index = start_index; index >= 0; --index) {
    auto noise = detail::randn_like(x, generator);
    auto result =
        sampler.step(model(x, detail::model_timesteps(sampler.schedule(), index, x)), x, index, noise);
    x = result.x_prev;
    monitor.observe(x, start_index + 1 - index);
    if (callback) callback(StepInfo{index, start_index + 1 - index, steps, x, result.x0_hat, no_residual});
  }
  monitor.check("sampling", "Check the model output and the schedule.");
  return x;
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
