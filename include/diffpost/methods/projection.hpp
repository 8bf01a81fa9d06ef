// Projection onto the (noisy) measurement set, the step that Score-SDE / ILVR-style solvers and MCG share.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/ddpm.hpp>
#include <diffpost/schedule.hpp>

namespace diffpost {

/// The measurement diffused to step `index`: sqrt(abar) y + sqrt(1 - abar) n, the reference's `q_sample` of
/// y.
inline torch::Tensor noisy_measurement(const DiffusionSchedule& schedule, const torch::Tensor& y,
                                       int64_t index, const torch::Tensor& noise) {
  schedule.check_index(index);
  return schedule.sqrt_alphas_cumprod()[index] * y + schedule.sqrt_one_minus_alphas_cumprod()[index] * noise;
}

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

/// Options of ScoreSDEProjection.
struct ProjectionOptions {
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// The Score-SDE / ILVR baseline (Song et al. 2021, Choi et al. 2021; the reference's `projection` method):
/// the plain reverse step, then projection of x_{t-1} onto the measurement set diffused to the same noise
/// level. It ignores the measurement noise, which is why it degrades on noisy problems (DPS table 1). Needs a
/// LinearOperator; a nonlinear operator fails to compile with the LinearOperator requirement named.
template <LinearOperator Operator, Sampler SamplerType = DDPMSampler>
class ScoreSDEProjection : public detail::PosteriorSamplerBase<ScoreSDEProjection<Operator, SamplerType>> {
 public:
  ScoreSDEProjection(Operator measurement_operator, SamplerType sampler, ProjectionOptions options = {})
      : operator_(std::move(measurement_operator)),
        sampler_(std::move(sampler)),
        options_(std::move(options)) {
    TORCH_CHECK(options_.num_samples() >= 1, "ProjectionOptions::num_samples must be >= 1, got ",
                options_.num_samples());
  }

  /// The correction of a prediction taken without graph: x'_{t-1} from the sampler with the given `noise`,
  /// then the projection with the measurement diffused to step `index` with `measurement_noise`.
  [[nodiscard]] MethodStep projected_step(const NetworkPrediction& prediction, const torch::Tensor& y,
                                          const torch::Tensor& noise,
                                          const torch::Tensor& measurement_noise) const {
    torch::NoGradGuard no_grad;
    auto result = sampler_.step(prediction.output, prediction.x_t, prediction.index, noise);
    auto y_t = noisy_measurement(sampler_.schedule(), y, prediction.index, measurement_noise);
    return {project_onto_measurements(operator_, result.x_prev, y_t), result.x0_hat, {}};
  }

  /// One step: x'_{t-1} from the sampler, then the projection with the measurement noised to step `index`;
  /// both noises are drawn from `generator`.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  at::Generator& generator) const {
    auto noise = detail::randn_like(x_t, generator);
    auto prediction = detail::evaluate_network(model, schedule(), x_t, index, differentiates_network);
    return projected_step(prediction, y, noise, detail::randn_like(y, generator));
  }

  /// The reverse loop's hook: the measurement noise is drawn after the loop's ancestral noise.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    return projected_step(prediction, y, noise, detail::randn_like(y, generator));
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const SamplerType& sampler() const noexcept { return sampler_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return sampler_.schedule(); }
  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] int64_t num_samples() const noexcept { return options_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "ScoreSDEProjection"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the operator's adjoint and scale.";
  }

 private:
  Operator operator_;
  SamplerType sampler_;
  ProjectionOptions options_;
};

}  // namespace diffpost
