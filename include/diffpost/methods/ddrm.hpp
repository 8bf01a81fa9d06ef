// Denoising Diffusion Restoration Models (Kawar, Elad, Ermon & Song, NeurIPS 2022; official code
// bahjat-kawar/ddrm): variational inference in the SVD coordinates of a linear operator, where every
// component is either measured more precisely than the current noise level, less precisely, or not at all.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <cstdint>

namespace diffpost {

/// Options of DDRM. Defaults are the official code's (`--eta 0.85 --etaB 1`, its eta also used as etaA and
/// etaC; x0 not clipped). The official schedule is 20 steps at a stride of 50:
/// `DiffusionSchedule::linear().respaced("ddim20")`.
struct DDRMOptions {
  TORCH_ARG(double, eta) = 0.85;
  TORCH_ARG(double, eta_b) = 1.0;
  /// Singular values below this count as zero (not measured), so that y' / s never divides by a rounding
  /// error; the official code zeroes 1-D singular values below 3e-2 (blur, bicubic SR) or 1e-3 (general),
  /// diffpost zeroes the products below this value.
  TORCH_ARG(double, min_singular_value) = 1e-3;
  TORCH_ARG(bool, clip_denoised) = false;
};

/// DDRM: the paper's conditional p(x_t | x_{t+1}, x_0, y), in the form of the official
/// `efficient_generalized_steps`. Work in the scaled variable x_t / sqrt(abar_t), whose noise level is
/// sigma_t = sqrt(1 - abar_t) / sqrt(abar_t), and in the SVD coordinates of A = U diag(s) V^T: c0 = V^T x0
/// (x0 Tweedie's estimate), y' = U^T y, e = V^T eps_hat. With sigma' the noise level of the next step,
/// sigma_y the measurement noise and z standard normal, each component of c' (x_{t-1} = sqrt(abar_{t-1}) V
/// c') is
///   not measured (s = 0):      c0 + sqrt(1 - eta^2) sigma' e + eta sigma' z
///   s sigma' < sigma_y:        c0 + sqrt(1 - eta^2) sigma' (y' - s c0) / sigma_y + eta sigma' z
///   s sigma' > sigma_y:        eta_b y' / s + (1 - eta_b) c0 + sqrt(sigma'^2 - (eta_b sigma_y / s)^2) z
/// (measured less, respectively more precisely than the noise level of the next step).
/// Needs a DecomposableOperator (an operator without `svd` fails to compile with that requirement named) and
/// a GaussianNoiseModel. The network is evaluated once per step and never differentiated. diffpost starts
/// from x_T ~ N(0, I) like every method; the official code starts from p(x_T | y), whose mean sqrt(abar_T)
/// A^+ y is about 1 % of the image scale at its first step (t = 950).
template <GaussianNoiseModel Likelihood, DecomposableOperator Operator>
class DDRM : public detail::MethodParts<Likelihood, Operator, DiffusionSchedule, DDRMOptions> {
 public:
  DDRM(Likelihood likelihood, Operator measurement_operator, DiffusionSchedule schedule,
       DDRMOptions options = {})
      : DDRM::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(schedule),
                          std::move(options)) {
    const auto& o = this->options();
    TORCH_CHECK(o.eta() >= 0.0 && o.eta() <= 1.0, "DDRMOptions::eta must lie in [0, 1], got ", o.eta());
    TORCH_CHECK(o.eta_b() >= 0.0 && o.eta_b() <= 1.0, "DDRMOptions::eta_b must lie in [0, 1], got ",
                o.eta_b());
    TORCH_CHECK(o.min_singular_value() > 0.0, "DDRMOptions::min_singular_value must be > 0, got ",
                o.min_singular_value());
  }

  /// Per-run constants: the measurement, the SVD and U^T y.
  struct Context {
    torch::Tensor y;
    detail::OptionalSVD<Operator> svd;
    torch::Tensor u_transpose_y;
  };

  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    detail::OptionalSVD<Operator> svd(this->measurement_operator(), like);
    auto u_transpose_y = (*svd).u_transpose(y);
    return {y, std::move(svd), std::move(u_transpose_y)};
  }

  /// The DDRM update of the network prediction at x_t; `noise` enters the SVD coordinates as drawn (V^T z of
  /// a standard normal z is standard normal).
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::NoGradGuard no_grad;
    const auto& o = this->options();
    const auto denoised = detail::denoise(this->schedule(), prediction, o.clip_denoised());
    const auto& svd = *context.svd;
    const double abar_next = this->schedule().alphas_cumprod_prev()[prediction.index];
    const double sigma_next = std::sqrt((1.0 - abar_next) / abar_next);
    const double sigma_y = this->likelihood().sigma();
    const double eta = o.eta();
    const double eta_b = o.eta_b();
    const double kept = std::sqrt(1.0 - eta * eta) * sigma_next;

    const auto measured = svd.singular_values() >= o.min_singular_value();
    const auto s = torch::where(measured, svd.singular_values(), torch::zeros_like(svd.singular_values()));
    const auto safe_s = torch::where(measured, s, torch::ones_like(s));
    const auto c0 = svd.v_transpose(denoised.x0);
    const auto& y_spectral = context.u_transpose_y;

    const auto unmeasured = c0 + kept * svd.v_transpose(denoised.eps) + eta * sigma_next * noise;
    const auto less_precise =
        c0 + (kept / std::max(sigma_y, 1e-30)) * (y_spectral - s * c0) + eta * sigma_next * noise;
    const auto more_precise =
        eta_b * y_spectral / safe_s + (1.0 - eta_b) * c0 +
        (sigma_next * sigma_next - (eta_b * sigma_y / safe_s).square()).clamp_min(0.0).sqrt() * noise;
    const auto c_next =
        torch::where(measured.logical_and(s * sigma_next > sigma_y), more_precise,
                     torch::where(measured.logical_and(s * sigma_next < sigma_y), less_precise, unmeasured));
    auto x_prev = std::sqrt(abar_next) * svd.v(c_next);
    auto residual =
        this->likelihood().data_fidelity(context.y, this->measurement_operator().forward(denoised.x0));
    return {std::move(x_prev), denoised.x0, std::move(residual)};
  }

  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "DDRM"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the operator's SVD and the likelihood's noise level.";
  }
};

}  // namespace diffpost
