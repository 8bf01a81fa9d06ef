// DiffPIR, denoising diffusion models for plug-and-play image restoration (Zhu, Zhang, Liang, Cao, Wen,
// Timofte & Van Gool, CVPR workshops 2023; official code yuanzhi-zhu/DiffPIR): half-quadratic splitting
// inside the reverse process. The network denoises, a closed-form data step pulls x0 toward the measurement,
// and the result is re-noised with a mix of the implied and fresh noise.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/conjugate_gradient.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace diffpost {

/// DiffPIR's official step sequence (`skip_type: quad`) for `steps` steps over `num_timesteps` original
/// timesteps: t_k = T - 1 - floor(T sqrt(k / (N - 1))) for k < N - 1 and t_{N-1} = 0, dense near t = 0.
/// Returned ascending and without repeats, for `DiffusionSchedule::restricted_to`.
inline std::vector<int64_t> diffpir_timesteps(int64_t steps, int64_t num_timesteps = 1000) {
  TORCH_CHECK(steps >= 2 && steps <= num_timesteps, "diffpir_timesteps: steps must lie in [2, ",
              num_timesteps, "], got ", steps);
  const auto total = static_cast<double>(num_timesteps);
  const double spacing = total * total / static_cast<double>(steps - 1);  // numpy.linspace(0, T^2, N) step
  std::set<int64_t> kept;
  for (int64_t k = 0; k < steps; ++k) {
    const auto offset = k == steps - 1 ? num_timesteps - 1
                                       : static_cast<int64_t>(std::sqrt(static_cast<double>(k) * spacing));
    kept.insert(num_timesteps - 1 - offset);
  }
  return {kept.begin(), kept.end()};
}

/// Options of DiffPIR. Defaults are the official code's Gaussian-deblurring setting (`main_ddpir_deblur.py`,
/// `configs/deblur.yaml`): lambda 1, zeta 0.1, x0 clipped to [-1, 1] (its `clip_denoised=True`); its SR
/// script uses zeta 0.1 (`sisr.yaml` 0.25), its inpainting config zeta 1 over 20 steps. The official schedule
/// is 100 quadratically spaced steps: `DiffusionSchedule::linear().restricted_to(diffpir_timesteps(100))`.
/// `cg_iterations` is diffpost's: the conjugate-gradient steps of the data step for linear operators without
/// an SVD.
struct DiffPIROptions {
  TORCH_ARG(double, lambda) = 1.0;
  TORCH_ARG(double, zeta) = 0.1;
  TORCH_ARG(bool, clip_denoised) = true;
  TORCH_ARG(int64_t, cg_iterations) = 30;
};

/// DiffPIR (the paper's Algorithm 1). At step t with x0 = Tweedie's estimate at x_t:
///   data step:  x0' = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2,  rho_t = lambda sigma^2 / sigmabar_t^2,
///               sigmabar_t = sqrt(1 - abar_t) / sqrt(abar_t);
///   re-noise:   eps' = (x_t - sqrt(abar_t) x0') / sqrt(1 - abar_t),
///               x_{t-1} = sqrt(abar_{t-1}) x0' + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps' + sqrt(zeta) z).
/// sigma is the measurement noise on the [0, 1] scale as the official code plugs it in, sigma_y / 2 for the
/// likelihood's sigma_y on diffpost's [-1, 1] scale (floored at 0.001 as there), so that its lambda values
/// carry over. The data step is exact in closed form for a DecomposableOperator (masks, super-resolution,
/// colorization, Gaussian blur: V (s U^T y + rho V^T x0) / (s^2 + rho)), conjugate gradients on the normal
/// equations for other linear operators (motion blur), and one gradient step x0 - grad(r^2 / 2) / (1 + rho_t)
/// on the likelihood's residual r for nonlinear ones (exact when A^T A is a projection). The network is
/// evaluated once per step and never differentiated. Unlike the official loop, whose last network evaluation
/// is discarded, every step takes its data step, as the paper's algorithm.
template <GaussianNoiseModel Likelihood, ForwardOperator Operator>
class DiffPIR : public detail::MethodParts<Likelihood, Operator, DiffusionSchedule, DiffPIROptions> {
 public:
  DiffPIR(Likelihood likelihood, Operator measurement_operator, DiffusionSchedule schedule,
          DiffPIROptions options = {})
      : DiffPIR::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(schedule),
                             std::move(options)) {
    const auto& o = this->options();
    TORCH_CHECK(o.lambda() > 0.0 && std::isfinite(o.lambda()),
                "DiffPIROptions::lambda must be a finite number > 0, got ", o.lambda());
    TORCH_CHECK(o.zeta() >= 0.0 && o.zeta() <= 1.0, "DiffPIROptions::zeta must lie in [0, 1], got ",
                o.zeta());
    TORCH_CHECK(o.cg_iterations() >= 1, "DiffPIROptions::cg_iterations must be >= 1, got ",
                o.cg_iterations());
  }

  /// Per-run constants: the measurement, U^T y with the SVD when there is one, A^T y otherwise.
  struct Context {
    torch::Tensor y;
    torch::Tensor projected_y;  ///< U^T y (DecomposableOperator) or A^T y (other linear operators)
    detail::OptionalSVD<Operator> svd;
  };

  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    const auto& op = this->measurement_operator();
    detail::OptionalSVD<Operator> svd(op, like);
    if constexpr (HasSingularValueDecomposition<Operator>) {
      auto projected = (*svd).u_transpose(y);
      return {y, std::move(projected), std::move(svd)};
    } else if constexpr (LinearOperator<Operator>) {
      return {y, op.adjoint(y), std::move(svd)};
    } else {
      return {y, {}, std::move(svd)};
    }
  }

  /// rho_t = lambda sigma^2 / sigmabar_t^2 at schedule step `index`, sigma = max(0.001, sigma_y / 2).
  [[nodiscard]] double rho(int64_t index) const {
    this->schedule().check_index(index);
    const double sigma = std::max(0.001, this->likelihood().sigma() / 2.0);
    const double sigmabar = this->schedule().sqrt_recipm1_alphas_cumprod()[index];
    return this->options().lambda() * sigma * sigma / (sigmabar * sigmabar);
  }

  /// The data step x0' = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2 at schedule step `index` for x0 [B, C,
  /// H, W], with the run's constants (`prepare`).
  [[nodiscard]] torch::Tensor data_step(const Context& context, const torch::Tensor& x0,
                                        int64_t index) const {
    const auto& op = this->measurement_operator();
    const double r = rho(index);
    if constexpr (HasSingularValueDecomposition<Operator>) {
      torch::NoGradGuard no_grad;
      const auto& svd = *context.svd;
      const auto s = svd.singular_values();
      return svd.v((s * context.projected_y + r * svd.v_transpose(x0)) / (s * s + r));
    } else if constexpr (LinearOperator<Operator>) {
      torch::NoGradGuard no_grad;
      const auto normal = [&](const torch::Tensor& v) { return op.adjoint(op.forward(v)) + r * v; };
      return detail::conjugate_gradient(normal, context.projected_y + r * x0, x0,
                                        this->options().cg_iterations());
    } else {
      const auto fidelity =
          fidelity_gradient(this->likelihood(), op, context.y, x0, FidelityPenalty::half_squared_norm);
      return x0.detach() - fidelity.gradient / (1.0 + r);
    }
  }

  /// The DiffPIR update of the network prediction at x_t with the loop's standard-normal `noise`.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::NoGradGuard no_grad;
    const auto& schedule = this->schedule();
    const auto denoised = detail::denoise(schedule, prediction, this->options().clip_denoised());
    const auto i = prediction.index;
    const auto x0 = data_step(context, denoised.x0, i);
    const auto implied_eps = predict_eps_from_x0(schedule, prediction.x_t, x0, i, EpsForm::forward_process);
    const double zeta = this->options().zeta();
    auto x_prev =
        q_sample_previous(schedule, x0, i, std::sqrt(1.0 - zeta) * implied_eps + std::sqrt(zeta) * noise);
    auto residual =
        this->likelihood().data_fidelity(context.y, this->measurement_operator().forward(denoised.x0));
    return {std::move(x_prev), denoised.x0, std::move(residual)};
  }

  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "DiffPIR"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Raise DiffPIROptions::lambda or check the likelihood's noise level.";
  }
};

}  // namespace diffpost
