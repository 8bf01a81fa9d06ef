// Projection onto the (noisy) measurement set, the step that Score-SDE / ILVR-style solvers and MCG share.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/ddpm.hpp>
#include <diffpost/schedule.hpp>

namespace diffpost {

/// Moves x onto {x : A x = y}: x - A^+ (A x - y) when the operator has a pseudo-inverse (the exact orthogonal
/// projection), otherwise x - A^T (A x - y), the reference's `project`, exact when A A^T = I (masks).
template <LinearOperator Operator>
torch::Tensor project_onto_measurements(const Operator& op, const torch::Tensor& x, const torch::Tensor& y) {
  auto misfit = op.forward(x) - y;
  if constexpr (HasPseudoInverse<Operator>) {
    return x - op.pseudo_inverse(misfit);
  } else {
    return x - op.adjoint(misfit);
  }
}

/// Moves x onto the measurement set diffused to step `index` with `measurement_noise`, {x : A x =
/// sqrt(abar) y + sqrt(1 - abar) n}: the reference's `q_sample` of y, then `project`.
template <LinearOperator Operator>
torch::Tensor project_onto_diffused_measurements(const Operator& op, const DiffusionSchedule& schedule,
                                                 const torch::Tensor& x, const torch::Tensor& y,
                                                 int64_t index, const torch::Tensor& measurement_noise) {
  return project_onto_measurements(op, x, q_sample(schedule, y, index, measurement_noise));
}

/// The Score-SDE / ILVR baseline (Song et al. 2021, Choi et al. 2021; the reference's `projection` method):
/// the plain reverse step, then projection of x_{t-1} onto the measurement set diffused to the same noise
/// level. It ignores the measurement noise, which is why it degrades on noisy problems (DPS table 1). Needs a
/// LinearOperator; a nonlinear operator fails to compile with the LinearOperator requirement named.
template <LinearOperator Operator, Sampler SamplerType = DDPMSampler>
class ScoreSDEProjection
    : public detail::MethodParts<detail::NoLikelihood, Operator, SamplerType, detail::NoOptions> {
 public:
  ScoreSDEProjection(Operator measurement_operator, SamplerType sampler)
      : ScoreSDEProjection::MethodParts(std::move(measurement_operator), std::move(sampler), {}) {}

  /// The sampler's reverse step with the loop's `noise`, then the projection onto the measurement diffused
  /// to step `index` with noise drawn from `generator`.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    const auto measurement_noise = detail::randn_like(y, generator);
    auto result = detail::plain_reverse_step(this->sampler(), prediction, noise);
    result.x_prev = project_onto_diffused_measurements(this->measurement_operator(), this->schedule(),
                                                       result.x_prev, y, prediction.index, measurement_noise);
    return result;
  }

  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "ScoreSDEProjection"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the operator's adjoint and scale.";
  }
};

}  // namespace diffpost
