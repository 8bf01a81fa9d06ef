// Manifold Constrained Gradients (Chung, Sim, Ryu & Ye, NeurIPS 2022): the DPS gradient step followed by a
// projection onto the noisy measurement set.
#pragma once

#include <diffpost/detail/random.hpp>
#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/projection.hpp>

namespace diffpost {

/// MCG as the reference runs it (`mcg`): DPS, then projection. x_{t-1} = P_t(x'_{t-1} - zeta grad_{x_t} r(y,
/// A(x0_hat))) with P_t the projection onto {x : A x = sqrt(abar_t) y + sqrt(1 - abar_t) n} (the measurement
/// diffused as the reference's `q_sample`). It is DPS (its step, options and constructor) composed with that
/// projection, and needs a LinearOperator (a nonlinear operator fails to compile with that requirement
/// named).
template <NoiseModel Likelihood, LinearOperator Operator, Sampler SamplerType = DDPMSampler>
class MCG : public DPS<Likelihood, Operator, SamplerType> {
  using Step = DPS<Likelihood, Operator, SamplerType>;

 public:
  using Step::Step;

  /// DPS's correction, then the projection onto the measurement diffused to step `index` with noise drawn
  /// from `generator` (after the loop's ancestral noise).
  template <ScoreModel Model>
  MethodStep correct(Model& model, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    const auto measurement_noise = detail::randn_like(y, generator);
    auto result = Step::correct(model, y, prediction, noise, generator);
    result.x_prev = project_onto_diffused_measurements(this->measurement_operator(), this->schedule(),
                                                       result.x_prev, y, prediction.index, measurement_noise);
    return result;
  }

  [[nodiscard]] static const char* method_name() noexcept { return "MCG"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept { return "Lower DPSOptions::scale."; }
};

}  // namespace diffpost
