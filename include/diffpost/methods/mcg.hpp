// Manifold Constrained Gradients (Chung, Sim, Ryu & Ye, NeurIPS 2022): the DPS gradient step followed by a
// projection onto the noisy measurement set.
#pragma once

#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/projection.hpp>

namespace diffpost {

/// MCG as the reference runs it (`mcg`): x_{t-1} = P(x'_{t-1} - zeta grad_{x_t} r(y, A(x0_hat))) with P the
/// projection onto {x : A x = sqrt(abar_t) y + sqrt(1 - abar_t) n}. Shares DPS's step and options; needs a
/// LinearOperator (a nonlinear operator fails to compile with that requirement named).
template <NoiseModel Likelihood, LinearOperator Operator, Sampler SamplerType = DDPMSampler>
class MCG : public detail::PosteriorSamplerBase<MCG<Likelihood, Operator, SamplerType>> {
 public:
  MCG(Operator measurement_operator, Likelihood likelihood, SamplerType sampler, DPSOptions options = {})
      : dps_(std::move(measurement_operator), std::move(likelihood), std::move(sampler), std::move(options)) {
  }

  /// One MCG step with explicit noise for the ancestral step and for the measurement diffusion.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  const torch::Tensor& noise, const torch::Tensor& measurement_noise) const {
    auto result = dps_.step(model, x_t, y, index, noise);
    auto y_t = noisy_measurement(sampler().schedule(), y, index, measurement_noise);
    result.x_prev = project_onto_measurements(measurement_operator(), result.x_prev, y_t);
    return result;
  }

  /// One MCG step drawing both noises from `generator`.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  at::Generator& generator) const {
    auto noise = detail::randn_like(x_t, generator);
    return step(model, x_t, y, index, noise, detail::randn_like(y, generator));
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return dps_.measurement_operator(); }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return dps_.sampler(); }
  [[nodiscard]] const DPSOptions& options() const noexcept { return dps_.options(); }
  [[nodiscard]] int64_t num_samples() const noexcept { return dps_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "MCG"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept { return "Lower DPSOptions::scale."; }

 private:
  DPS<Likelihood, Operator, SamplerType> dps_;
};

}  // namespace diffpost
