// Pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz, ICLR 2023; NVIDIA's implementation in
// NVlabs/RED-diff, algos/pgdm.py): DDIM steps guided by the vector-Jacobian product of the network with the
// Gaussian approximation of p(y | x_t), whose covariance uses the pseudo-inverse structure of A.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/conjugate_gradient.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <cstdint>

namespace diffpost {

/// Options of PiGDM. `eta` is DDIM's (1 as in RED-diff's PiGDM runs in sample_test.sh; its pgdm.yaml default
/// is 0, InverseBench uses 0.2), `guidance_scale` RED-diff's `grad_term_weight` (1); x0 is not clipped, as
/// there. RED-diff runs 100 steps: `DiffusionSchedule::linear().respaced("ddim100")`. `cg_iterations` is
/// diffpost's: the conjugate-gradient steps for linear operators without an SVD.
struct PiGDMOptions {
  TORCH_ARG(double, eta) = 1.0;
  TORCH_ARG(double, guidance_scale) = 1.0;
  TORCH_ARG(bool, clip_denoised) = false;
  TORCH_ARG(int64_t, cg_iterations) = 30;
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// PiGDM: DDIM steps plus the guidance of the paper's Gaussian approximation p(y | x_t) = N(A x0, r_t^2 A
/// A^T + sigma_y^2 I). With x0 = x0(x_t) Tweedie's estimate, r_t^2 = 1 - abar_t and sigma_y the noise level:
///   h   = r_t^2 A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0)     (= A^+ (y - A x0) for sigma_y = 0)
///   g   = (d x0 / d x_t)^T h                                          (one vector-Jacobian product)
///   x_{t-1} = sqrt(abar_{t-1}) x0 + c1 z + c2 eps_hat + w sqrt(abar_{t-1}) sqrt(abar_t) g,
/// c1 = eta sqrt((1 - abar_t / abar_{t-1}) (1 - abar_{t-1}) / (1 - abar_t)), c2 = sqrt(1 - abar_{t-1} -
/// c1^2), w = guidance_scale, eps_hat the network's eps; the weight of g is RED-diff's (`awd`), which for
/// sigma_y = 0 is also InverseBench's. h is exact per singular value for a DecomposableOperator, conjugate
/// gradients in measurement space for other linear operators. Needs a LinearOperator (a nonlinear operator
/// fails to compile with that requirement named) and a GaussianNoiseModel. One network evaluation and one
/// backpropagation through the network per step.
template <GaussianNoiseModel Likelihood, LinearOperator Operator>
class PiGDM
    : public detail::ScheduledMethod<PiGDM<Likelihood, Operator>, Likelihood, Operator, PiGDMOptions> {
  using Base = detail::ScheduledMethod<PiGDM<Likelihood, Operator>, Likelihood, Operator, PiGDMOptions>;

 public:
  PiGDM(Operator measurement_operator, Likelihood likelihood, DiffusionSchedule schedule,
        PiGDMOptions options = {})
      : Base(std::move(measurement_operator), std::move(likelihood), std::move(schedule),
             std::move(options)) {
    TORCH_CHECK(options_.eta() >= 0.0 && options_.eta() <= 1.0, "PiGDMOptions::eta must lie in [0, 1], got ",
                options_.eta());
    TORCH_CHECK(options_.guidance_scale() >= 0.0 && std::isfinite(options_.guidance_scale()),
                "PiGDMOptions::guidance_scale must be a finite number >= 0, got ", options_.guidance_scale());
    TORCH_CHECK(options_.cg_iterations() >= 1, "PiGDMOptions::cg_iterations must be >= 1, got ",
                options_.cg_iterations());
  }

  /// Per-run constants: the measurement and the operator's SVD when it has one.
  struct Context {
    torch::Tensor y;
    detail::OptionalSVD<Operator> svd;
  };

  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    return {y, detail::OptionalSVD<Operator>(operator_, like)};
  }

  /// h = r_t^2 A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0) at schedule step `index`, the vector PiGDM
  /// pulls back through the network.
  [[nodiscard]] torch::Tensor guidance_vector(const Context& context, const torch::Tensor& x0,
                                              int64_t index) const {
    torch::NoGradGuard no_grad;
    const double r2 = 1.0 - schedule_.alphas_cumprod()[index];
    const double sigma2 = likelihood_.sigma() * likelihood_.sigma();
    const auto misfit = context.y - operator_.forward(x0);
    if constexpr (HasSingularValueDecomposition<Operator>) {
      const auto& svd = *context.svd;
      const auto s = svd.singular_values();
      const auto denominator = r2 * s * s + sigma2;
      const auto weight =
          torch::where(denominator > 0, r2 * s / denominator.clamp_min(1e-30), torch::zeros_like(s));
      return svd.v(weight * svd.u_transpose(misfit));
    } else {
      const auto apply = [&](const torch::Tensor& u) {
        return r2 * operator_.forward(operator_.adjoint(u)) + sigma2 * u;
      };
      const auto u =
          detail::conjugate_gradient(apply, misfit, torch::zeros_like(misfit), options_.cg_iterations());
      return r2 * operator_.adjoint(u);
    }
  }

  /// The PiGDM update of a network prediction taken with its graph, with the standard-normal `noise`.
  [[nodiscard]] MethodStep guided_step(const Context& context, const NetworkPrediction& prediction,
                                       const torch::Tensor& noise) const {
    const auto i = prediction.index;
    detail::Denoised denoised;
    torch::Tensor gradient;
    {
      torch::AutoGradMode enable_grad(true);
      denoised = detail::denoise(schedule_, prediction, options_.clip_denoised());
      const auto h = guidance_vector(context, denoised.x0.detach(), i);
      gradient = torch::autograd::grad({(h * denoised.x0).sum()}, {prediction.x_t})[0];
    }
    torch::NoGradGuard no_grad;
    const double abar = schedule_.alphas_cumprod()[i];
    const double abar_prev = schedule_.alphas_cumprod_prev()[i];
    const double c1 = options_.eta() * std::sqrt((1.0 - abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar));
    const double c2 = std::sqrt(std::max(0.0, 1.0 - abar_prev - c1 * c1));
    const auto x0 = denoised.x0.detach();
    auto x_prev = std::sqrt(abar_prev) * x0 + c1 * noise + c2 * denoised.eps.detach() +
                  (options_.guidance_scale() * std::sqrt(abar_prev) * std::sqrt(abar)) * gradient;
    auto residual = likelihood_.data_fidelity(context.y, operator_.forward(x0));
    return {std::move(x_prev), x0, std::move(residual)};
  }

  /// One PiGDM step at schedule step `index` from x_t with an explicit standard-normal `noise`; `y` has x_t's
  /// batch size.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  const torch::Tensor& noise) const {
    return guided_step(prepare(y, x_t),
                       detail::evaluate_network(model, schedule_, x_t, index, differentiates_network), noise);
  }

  /// The reverse loop's hook.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    return guided_step(context, prediction, noise);
  }

  /// PiGDM backpropagates through the network at every step.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] static const char* method_name() noexcept { return "PiGDM"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower PiGDMOptions::guidance_scale.";
  }

 private:
  using Base::likelihood_;
  using Base::operator_;
  using Base::options_;
  using Base::schedule_;
};

}  // namespace diffpost
