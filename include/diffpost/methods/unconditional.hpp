// Sampling the prior alone, and one-step Tweedie denoising.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/common.hpp>

namespace diffpost {

namespace detail {

/// The unconditional correction for the reverse loop: the sampler's own reverse step, nothing else. Not a
/// PosteriorStep: there is no measurement.
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
    return plain_reverse_step(sampler, prediction, noise);
  }
};

}  // namespace detail

/// The network work of unconditional sampling over the whole schedule: one evaluation per step.
template <Sampler SamplerType>
NetworkCost unconditional_network_cost(const SamplerType& sampler) {
  return {sampler.schedule().num_steps(), 0};
}

/// Draws `shape` [B, C, H, W] samples from the prior: x_T ~ N(0, I), then the sampler's whole reverse
/// process.
template <ScoreModel Model, Sampler SamplerType>
torch::Tensor sample_unconditional(Model& model, const SamplerType& sampler, const Shape& shape,
                                   at::Generator& generator, torch::TensorOptions options = {},
                                   const StepCallback& callback = {}) {
  TORCH_CHECK(shape.size() == 4, "sample_unconditional: shape must be [B, C, H, W], got ",
              c10::IntArrayRef(shape));
  auto x_T = detail::randn_like(torch::empty(shape, options), generator);
  return detail::reverse_loop(detail::PlainReverseStep<SamplerType>{sampler}, model, torch::Tensor{},
                              std::move(x_T), sampler.schedule().num_steps() - 1, generator, callback);
}

/// One-step Tweedie denoising: x0_hat = E[x_0 | x_t] from a single model evaluation at schedule step `index`.
template <ScoreModel Model>
torch::Tensor tweedie_denoise(Model& model, const DiffusionSchedule& schedule, const torch::Tensor& x_t,
                              int64_t index, bool clip = true) {
  auto prediction = detail::evaluate_network(model, schedule, x_t, index, false);
  torch::NoGradGuard no_grad;
  return predict_x0_from_eps(schedule, x_t, split_model_output(prediction.output, x_t).eps, index, clip);
}

}  // namespace diffpost
