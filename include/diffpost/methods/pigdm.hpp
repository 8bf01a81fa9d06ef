// Pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz, ICLR 2023; NVIDIA's implementation in
// NVlabs/RED-diff, algos/pgdm.py): DDIM steps guided by the vector-Jacobian product of the network with the
// Gaussian approximation of p(y | x_t), whose covariance uses the pseudo-inverse structure of A.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/conjugate_gradient.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/samplers/ddim.hpp>
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
class PiGDM : public detail::MethodParts<Likelihood, Operator, DiffusionSchedule, PiGDMOptions> {
 public:
  PiGDM(Likelihood likelihood, Operator measurement_operator, DiffusionSchedule schedule,
        PiGDMOptions options = {})
      : PiGDM::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(schedule),
                           std::move(options)) {
    const auto& o = this->options();
    TORCH_CHECK(o.eta() >= 0.0 && o.eta() <= 1.0, "PiGDMOptions::eta must lie in [0, 1], got ", o.eta());
    TORCH_CHECK(o.guidance_scale() >= 0.0 && std::isfinite(o.guidance_scale()),
                "PiGDMOptions::guidance_scale must be a finite number >= 0, got ", o.guidance_scale());
    TORCH_CHECK(o.cg_iterations() >= 1, "PiGDMOptions::cg_iterations must be >= 1, got ", o.cg_iterations());
  }

  /// Per-run constants: the measurement and the operator's SVD when it has one.
  struct Context {
    torch::Tensor y;
    detail::OptionalSVD<Operator> svd;
  };

  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    return {y, detail::OptionalSVD<Operator>(this->measurement_operator(), like)};
  }

  /// h = r_t^2 A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0) at schedule step `index`, the vector PiGDM
  /// pulls back through the network.
  [[nodiscard]] torch::Tensor guidance_vector(const Context& context, const torch::Tensor& x0,
                                              int64_t index) const {
    torch::NoGradGuard no_grad;
    const auto& op = this->measurement_operator();
    const double r2 = 1.0 - this->schedule().alphas_cumprod()[index];
    const double sigma2 = this->likelihood().sigma() * this->likelihood().sigma();
    const auto misfit = context.y - op.forward(x0);
    if constexpr (HasSingularValueDecomposition<Operator>) {
      const auto& svd = *context.svd;
      const auto s = svd.singular_values();
      const auto denominator = r2 * s * s + sigma2;
      const auto weight =
          torch::where(denominator > 0, r2 * s / denominator.clamp_min(1e-30), torch::zeros_like(s));
      return svd.v(weight * svd.u_transpose(misfit));
    } else {
      const auto apply = [&](const torch::Tensor& u) { return r2 * op.forward(op.adjoint(u)) + sigma2 * u; };
      const auto u = detail::conjugate_gradient(apply, misfit, torch::zeros_like(misfit),
                                                this->options().cg_iterations());
      return r2 * op.adjoint(u);
    }
  }

  /// The PiGDM update of a network prediction taken with its graph, with the loop's standard-normal `noise`.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    const auto& schedule = this->schedule();
    const auto& o = this->options();
    const auto i = prediction.index;
    detail::Denoised denoised;
    torch::Tensor gradient;
    {
      torch::AutoGradMode enable_grad(true);
      denoised = detail::denoise(schedule, prediction, o.clip_denoised());
      const auto h = guidance_vector(context, denoised.x0.detach(), i);
      gradient = torch::autograd::grad({(h * denoised.x0).sum()}, {prediction.x_t})[0];
    }
    torch::NoGradGuard no_grad;
    const double abar = schedule.alphas_cumprod()[i];
    const double abar_prev = schedule.alphas_cumprod_prev()[i];
    const auto c = ddim_coefficients(schedule, i, o.eta());
    const auto x0 = denoised.x0.detach();
    auto x_prev = std::sqrt(abar_prev) * x0 + c.noise_scale * noise + c.eps_scale * denoised.eps.detach() +
                  (o.guidance_scale() * std::sqrt(abar_prev) * std::sqrt(abar)) * gradient;
    auto residual = this->likelihood().data_fidelity(context.y, this->measurement_operator().forward(x0));
    return {std::move(x_prev), x0, std::move(residual)};
  }

  /// PiGDM backpropagates through the network at every step.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] static const char* method_name() noexcept { return "PiGDM"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower PiGDMOptions::guidance_scale.";
  }
};

}  // namespace diffpost
