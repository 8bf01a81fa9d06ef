// SDEdit (Meng et al., ICLR 2022): diffuse the naive reconstruction to an intermediate time t*, then run the
// plain reverse process. The prior repairs what the noise covers; the measurement is used only at the start.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/ddpm.hpp>

namespace diffpost {

/// Options of SDEdit. `t_star` counts ORIGINAL timesteps of noise (the seed report uses 250 of 1000); 0
/// returns the naive reconstruction unchanged.
struct SDEditOptions {
  TORCH_ARG(int64_t, t_star) = 250;
};

/// SDEdit from the operator's naive inverse (zero-filled, upsampled, the blurred image itself): x_{t*} =
/// sqrt(abar) x_naive + sqrt(1 - abar) z at the last schedule step whose original timestep is below t*, then
/// the sampler's reverse process to 0. Needs an operator with `naive_inverse` (HasNaiveInverse).
template <ForwardOperator Operator, Sampler SamplerType = DDPMSampler>
requires HasNaiveInverse<Operator>
class SDEdit : public detail::MethodParts<detail::NoLikelihood, Operator, SamplerType, SDEditOptions> {
 public:
  SDEdit(Operator measurement_operator, SamplerType sampler, SDEditOptions options = {})
      : SDEdit::MethodParts(std::move(measurement_operator), std::move(sampler), std::move(options)) {
    TORCH_CHECK(this->options().t_star() >= 0, "SDEditOptions::t_star must be >= 0, got ",
                this->options().t_star());
  }

  /// The schedule step SDEdit starts from, or -1 when t* = 0 (no noise, no steps).
  [[nodiscard]] int64_t start_index() const {
    const auto& schedule = this->schedule();
    int64_t start = -1;
    for (int64_t i = 0; i < schedule.num_steps(); ++i) {
      if (schedule.model_timestep(i) < this->options().t_star()) start = i;
    }
    return start;
  }

  /// The naive inverse of the measurements y, diffused to the start step with noise from `generator`.
  [[nodiscard]] torch::Tensor initial_state(const torch::Tensor& y, const torch::Tensor& /*like*/,
                                            at::Generator& generator) const {
    auto naive = this->measurement_operator().naive_inverse(y);
    const int64_t start = start_index();
    if (start < 0) return naive;
    return q_sample(this->schedule(), naive, start, detail::randn_like(naive, generator));
  }

  /// The plain reverse step: after its start, SDEdit is unconditional sampling.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& /*y*/, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    return detail::plain_reverse_step(this->sampler(), prediction, noise);
  }

  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "SDEdit"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the model output and the schedule.";
  }
};

}  // namespace diffpost
