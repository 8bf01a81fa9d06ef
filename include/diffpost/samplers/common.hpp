// Pieces shared by the DDPM and DDIM reverse steps: splitting the model output, Tweedie's x0 estimate and the
// posterior q(x_{t-1} | x_t, x_0).
#pragma once

#include <torch/torch.h>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace diffpost {

/// The eps channels and, when present, the learned-variance channels of a raw model output.
struct ModelOutputParts {
  torch::Tensor eps;
  torch::Tensor variance_values;  ///< undefined when the model predicts eps only
};

/// Splits a model output [B, C or 2C, H, W] for an x_t of C channels; anything else is an error that names
/// both channel counts.
inline ModelOutputParts split_model_output(const torch::Tensor& model_output, const torch::Tensor& x_t) {
  TORCH_CHECK(model_output.dim() == x_t.dim() && model_output.size(0) == x_t.size(0), "model output shape ",
              model_output.sizes(), " does not match x_t shape ", x_t.sizes(),
              "; the score model must return [B, C, ...] or [B, 2C, ...] for x_t [B, C, ...]");
  for (int64_t d = 2; d < x_t.dim(); ++d) {
    TORCH_CHECK(model_output.size(d) == x_t.size(d), "model output shape ", model_output.sizes(),
                " has other spatial dimensions than x_t ", x_t.sizes());
  }
  const int64_t channels = x_t.size(1);
  if (model_output.size(1) == channels) return {model_output, {}};
  TORCH_CHECK(
      model_output.size(1) == 2 * channels, "model output has ", model_output.size(1),
      " channels but x_t has ", channels, "; expected ", channels, " (eps) or ", 2 * channels,
      " (eps and learned variance). Check in_channels / learn_sigma of the model against the images.");
  auto parts = model_output.split(channels, 1);
  return {parts[0], parts[1]};
}

/// A step index: one step for the whole batch (an integer, as in sampling: the coefficients are host numbers,
/// nothing is copied to the device), or one step per sample (a [B] index tensor, as in training: the
/// coefficients are gathered into [B, 1, ...] tensors).
template <class Index>
concept StepIndex = std::integral<Index> || std::same_as<Index, torch::Tensor>;

namespace detail {

/// `coefficients[index]`: a double for one step, a [B, 1, ...] tensor like `like` for per-sample steps.
inline double step_coefficient(const std::vector<double>& coefficients, int64_t index,
                               const torch::Tensor& /*like*/) {
  return coefficients[static_cast<size_t>(index)];
}
inline torch::Tensor step_coefficient(const std::vector<double>& coefficients, const torch::Tensor& indices,
                                      const torch::Tensor& like) {
  return DiffusionSchedule::gather(coefficients, indices, like);
}

/// log beta of `index` (see step_coefficient).
inline double step_log_beta(const DiffusionSchedule& schedule, int64_t index, const torch::Tensor& /*like*/) {
  return std::log(schedule.betas()[static_cast<size_t>(index)]);
}
inline torch::Tensor step_log_beta(const DiffusionSchedule& schedule, const torch::Tensor& indices,
                                   const torch::Tensor& like) {
  std::vector<double> log_betas(schedule.betas().size());
  for (size_t i = 0; i < log_betas.size(); ++i) log_betas[i] = std::log(schedule.betas()[i]);
  return DiffusionSchedule::gather(log_betas, indices, like);
}

inline void check_step_index(const DiffusionSchedule& schedule, int64_t index) {
  schedule.check_index(index);
}
inline void check_step_index(const DiffusionSchedule& /*schedule*/, const torch::Tensor& indices) {
  TORCH_CHECK(indices.dim() == 1, "step indices must be 1-D [B], got shape ", indices.sizes());
}

}  // namespace detail

/// Tweedie's estimate x0_hat = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (Ho et al. eq. 15), clamped to [-1, 1]
/// when `clip` is set (the reference's `clip_denoised`). Coefficients are those of schedule step `index` (one
/// step, or one per sample: StepIndex).
template <StepIndex Index>
torch::Tensor predict_x0_from_eps(const DiffusionSchedule& schedule, const torch::Tensor& x_t,
                                  const torch::Tensor& eps, const Index& index, bool clip) {
  detail::check_step_index(schedule, index);
  auto x0_hat = detail::step_coefficient(schedule.sqrt_recip_alphas_cumprod(), index, x_t) * x_t -
                detail::step_coefficient(schedule.sqrt_recipm1_alphas_cumprod(), index, x_t) * eps;
  return clip ? x0_hat.clamp(-1.0, 1.0) : x0_hat;
}

/// How `predict_eps_from_x0` evaluates eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). The two forms are equal
/// in exact arithmetic and round differently in float32; a reverse process carries that rounding through all
/// its steps, so each method keeps the form of the code it reproduces.
enum class EpsForm {
  /// (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1): guided-diffusion's `_predict_eps_from_xstart` (DDIM).
  guided_diffusion,
  /// (x_t - sqrt(abar) x0) / sqrt(1 - abar): the forward process solved for its noise (DiffPIR's and DAPS's
  /// official code).
  forward_process,
};

/// eps implied by x_t and an x0 estimate at step `index`; the inverse of predict_x0_from_eps. DDIM re-derives
/// eps this way after clipping x0_hat; DiffPIR and DAPS re-noise their corrected x0 with it.
inline torch::Tensor predict_eps_from_x0(const DiffusionSchedule& schedule, const torch::Tensor& x_t,
                                         const torch::Tensor& x0_hat, int64_t index,
                                         EpsForm form = EpsForm::guided_diffusion) {
  schedule.check_index(index);
  if (form == EpsForm::forward_process) {
    return (x_t - schedule.sqrt_alphas_cumprod()[index] * x0_hat) /
           schedule.sqrt_one_minus_alphas_cumprod()[index];
  }
  return (schedule.sqrt_recip_alphas_cumprod()[index] * x_t - x0_hat) /
         schedule.sqrt_recipm1_alphas_cumprod()[index];
}

/// The forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho et al. eq. 4) at step `index` (one
/// step, or one per sample: StepIndex).
template <StepIndex Index>
torch::Tensor q_sample(const DiffusionSchedule& schedule, const torch::Tensor& x0, const Index& index,
                       const torch::Tensor& noise) {
  detail::check_step_index(schedule, index);
  TORCH_CHECK(x0.sizes() == noise.sizes(), "q_sample: noise shape ", noise.sizes(), " differs from x0 shape ",
              x0.sizes());
  return detail::step_coefficient(schedule.sqrt_alphas_cumprod(), index, x0) * x0 +
         detail::step_coefficient(schedule.sqrt_one_minus_alphas_cumprod(), index, x0) * noise;
}

/// x0 diffused to the noise level abar_{t-1} of the step after `index` in the reverse direction: q_sample at
/// index - 1, and x0 itself at index 0 (abar_{-1} = 1). What methods that correct x0 re-noise it with.
inline torch::Tensor q_sample_previous(const DiffusionSchedule& schedule, const torch::Tensor& x0,
                                       int64_t index, const torch::Tensor& noise) {
  schedule.check_index(index);
  return index > 0 ? q_sample(schedule, x0, index - 1, noise) : x0;
}

/// Mean of q(x_{t-1} | x_t, x_0) = c1 x_0 + c2 x_t (Ho et al. eq. 7), at step `index` (StepIndex).
template <StepIndex Index>
torch::Tensor posterior_mean(const DiffusionSchedule& schedule, const torch::Tensor& x0,
                             const torch::Tensor& x_t, const Index& index) {
  detail::check_step_index(schedule, index);
  return detail::step_coefficient(schedule.posterior_mean_coef1(), index, x0) * x0 +
         detail::step_coefficient(schedule.posterior_mean_coef2(), index, x0) * x_t;
}

/// The learned-range log-variance of improved DDPM (Nichol & Dhariwal eq. 15): frac log beta_t + (1 - frac)
/// log beta~_t (the clipped posterior variance), frac = (v + 1) / 2 for the model's variance output v in
/// [-1, 1], at step `index` (StepIndex).
template <StepIndex Index>
torch::Tensor learned_range_log_variance(const DiffusionSchedule& schedule, const torch::Tensor& v,
                                         const Index& index) {
  detail::check_step_index(schedule, index);
  const auto min_log = detail::step_coefficient(schedule.posterior_log_variance_clipped(), index, v);
  const auto max_log = detail::step_log_beta(schedule, index, v);
  const auto frac = (v + 1.0) / 2.0;
  return frac * max_log + (1.0 - frac) * min_log;
}

namespace detail {
inline void check_step_inputs(const DiffusionSchedule& schedule, const torch::Tensor& x_t, int64_t index,
                              const torch::Tensor& noise) {
  schedule.check_index(index);
  TORCH_CHECK(x_t.dim() >= 2, "x_t must be a batch [B, C, ...], got shape ", x_t.sizes());
  TORCH_CHECK(noise.sizes() == x_t.sizes(), "noise shape ", noise.sizes(), " differs from x_t shape ",
              x_t.sizes(), "; pass a standard normal tensor shaped like x_t");
  TORCH_CHECK(at::isFloatingType(x_t.scalar_type()), "x_t must be a floating-point tensor, got ",
              x_t.scalar_type());
}
}  // namespace detail

}  // namespace diffpost
