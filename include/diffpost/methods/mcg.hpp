// Manifold Constrained Gradients (Chung, Sim, Ryu & Ye, NeurIPS 2022): the DPS gradient step followed by a
// projection onto the noisy measurement set.
#pragma once

#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/projection.hpp>

namespace diffpost {

/// MCG as the reference runs it (`mcg`): DPS, then projection. x_{t-1} = P_t(x'_{t-1} - zeta grad_{x_t} r(y,
/// A(x0_hat))) with P_t the projection onto {x : A x = sqrt(abar_t) y + sqrt(1 - abar_t) n} (the measurement
/// diffused as the reference's `q_sample`). Shares DPS's step and options; needs a LinearOperator (a
/// nonlinear operator fails to compile with that requirement named).
template <NoiseModel Likelihood, LinearOperator Operator, Sampler SamplerType = DDPMSampler>
class MCG : public detail::PosteriorSamplerBase<MCG<Likelihood, Operator, SamplerType>> {
 public:
  MCG(Operator measurement_operator, Likelihood likelihood, SamplerType sampler, DPSOptions options = {})
      : dps_(std::move(measurement_operator), std::move(likelihood), std::move(sampler), std::move(options)) {
  }

  /// The MCG correction of a network prediction taken with its graph: DPS's gradient step, then the
  /// projection onto the measurement diffused to step `index` with the explicit `measurement_noise`.
  [[nodiscard]] MethodStep projected_step(const NetworkPrediction& prediction, const torch::Tensor& y,
                                          const torch::Tensor& noise,
                                          const torch::Tensor& measurement_noise) const {
    auto result = dps_.gradient_step(prediction, y, noise);
    auto y_t = noisy_measurement(schedule(), y, prediction.index, measurement_noise);
    result.x_prev = project_onto_measurements(measurement_operator(), result.x_prev, y_t);
    return result;
  }

  /// One MCG step with explicit noise for the ancestral step and for the measurement diffusion.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  const torch::Tensor& noise, const torch::Tensor& measurement_noise) const {
    return projected_step(detail::evaluate_network(model, schedule(), x_t, index, differentiates_network), y,
                          noise, measurement_noise);
  }

  /// One MCG step drawing both noises from `generator`.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  at::Generator& generator) const {
    auto noise = detail::randn_like(x_t, generator);
    return step(model, x_t, y, index, noise, detail::randn_like(y, generator));
  }

  /// The reverse loop's hook: the measurement noise is drawn after the loop's ancestral noise.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    return projected_step(prediction, y, noise, detail::randn_like(y, generator));
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return dps_.measurement_operator(); }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return dps_.sampler(); }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return dps_.schedule(); }
  [[nodiscard]] const DPSOptions& options() const noexcept { return dps_.options(); }
  /// MCG backpropagates through the network at every step, as DPS.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] int64_t num_samples() const noexcept { return dps_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "MCG"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept { return "Lower DPSOptions::scale."; }

 private:
  DPS<Likelihood, Operator, SamplerType> dps_;
};

}  // namespace diffpost
