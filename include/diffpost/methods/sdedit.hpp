// SDEdit (Meng et al., ICLR 2022): diffuse the naive reconstruction to an intermediate time t*, then run the
// plain reverse process. The prior repairs what the noise covers; the measurement is used only at the start.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/samplers/ddpm.hpp>

namespace diffpost {

/// Options of SDEdit. `t_star` counts ORIGINAL timesteps of noise (the seed report uses 250 of 1000); 0
/// returns the naive reconstruction unchanged.
struct SDEditOptions {
  TORCH_ARG(int64_t, t_star) = 250;
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// SDEdit from the operator's naive inverse (zero-filled, upsampled, the blurred image itself): x_{t*} =
/// sqrt(abar) x_naive + sqrt(1 - abar) z at the last schedule step whose original timestep is below t*, then
/// the sampler's reverse process to 0. Needs an operator with `naive_inverse` (HasNaiveInverse).
template <ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
requires HasNaiveInverse<Operator>
class SDEdit {
 public:
  SDEdit(Operator measurement_operator, SamplerType sampler, SDEditOptions options = {})
      : operator_(std::move(measurement_operator)),
        sampler_(std::move(sampler)),
        options_(std::move(options)) {
    TORCH_CHECK(options_.t_star() >= 0, "SDEditOptions::t_star must be >= 0, got ", options_.t_star());
    TORCH_CHECK(options_.num_samples() >= 1, "SDEditOptions::num_samples must be >= 1, got ",
                options_.num_samples());
  }

  /// The schedule step SDEdit starts from, or -1 when t* = 0 (no noise, no steps).
  [[nodiscard]] int64_t start_index() const {
    const auto& schedule = sampler_.schedule();
    int64_t start = -1;
    for (int64_t i = 0; i < schedule.num_steps(); ++i) {
      if (schedule.model_timestep(i) < options_.t_star()) start = i;
    }
    return start;
  }

  /// Restores measurements y [B, ...] to images of `image_shape` [C, H, W]; returns [B * num_samples, C, H,
  /// W].
  template <ScoreModel Model>
  torch::Tensor sample(Model& model, const torch::Tensor& y, const Shape& image_shape,
                       at::Generator& generator, const StepCallback& callback = {}) const {
    TORCH_CHECK(y.dim() >= 1 && at::isFloatingType(y.scalar_type()),
                "measurement y must be a floating-point batch [B, ...], got ", y.sizes(), " ",
                y.scalar_type());
    detail::check_measurement_shape(operator_, detail::batch_image_shape(image_shape, y.size(0)), y);
    auto naive = operator_.naive_inverse(y.detach());
    if (options_.num_samples() > 1) naive = naive.repeat_interleave(options_.num_samples(), 0);
    const int64_t start = start_index();
    if (start < 0) return naive;
    const auto& schedule = sampler_.schedule();
    auto x = schedule.sqrt_alphas_cumprod()[start] * naive +
             schedule.sqrt_one_minus_alphas_cumprod()[start] * detail::randn_like(naive, generator);
    return reverse_process(model, sampler_, x, start, generator, callback);
  }

  /// The network work of one run: one evaluation per step from the start step down to 0, no gradient.
  [[nodiscard]] NetworkCost network_cost() const { return {start_index() + 1, 0}; }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return sampler_; }

 private:
  Operator operator_;
  SamplerType sampler_;
  SDEditOptions options_;
};

}  // namespace diffpost
