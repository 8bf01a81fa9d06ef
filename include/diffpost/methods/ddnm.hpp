// Denoising Diffusion Null-space Model (Wang, Yu & Zhang, ICLR 2023; official code wyhuai/DDNM): keep the
// network's x0 estimate in the null space of A and replace its range-space part by the measurement's, then
// take a DDIM-style step. DDNM+ shrinks that replacement and the added noise for noisy measurements.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <cstdint>

namespace diffpost {

/// Options of DDNM. Defaults are the official code's: eta 0.85 (its `--eta`, the share of fresh noise in the
/// DDIM-style step), no clipping of x0 (its x0_t is the raw Tweedie estimate). The official schedule is 100
/// evenly strided steps: `DiffusionSchedule::linear().respaced("ddim100")`.
struct DDNMOptions {
  TORCH_ARG(double, eta) = 0.85;
  TORCH_ARG(bool, clip_denoised) = false;
};

/// DDNM for y = A x (noise-free) and DDNM+ for y = A x + sigma_y n. With x0 = Tweedie's estimate at x_t,
/// a = sqrt(abar_{t-1}) and s_t = sqrt(1 - abar_{t-1}) (eqs. 12, 17, 19 and 51 as the official code
/// labels them):
///   DDNM:  x0' = x0 - A^+ (A x0 - y),  x_{t-1} = a x0' + s_t (eta z + sqrt(1 - eta^2) eps_hat);
///   DDNM+: per singular value s of A, the range-space correction is scaled by lambda = 1 where
///          s_t >= a sigma_y / s, else lambda = s s_t sqrt(1 - eta^2) / (a sigma_y), and the noise of that
///          component is sqrt(s_t^2 - (a sigma_y / s)^2) z where s_t >= a sigma_y / s, else s_t eta z, so
///          that x_{t-1} keeps the variance s_t^2 (the official SVD-based `Lambda` / `Lambda_noise`);
///          null-space components get the DDNM noise.
/// Needs a PseudoInvertibleOperator (anything else fails to compile with that requirement named). With an
/// operator that also exposes its SVD (DecomposableOperator) DDNM+ is applied per singular value; without one
/// every singular value is taken to be 1, the README's simplified DDNM+, exact when A A^T = I (masks,
/// subsampling). The network is evaluated once per step and never differentiated.
template <GaussianNoiseModel Likelihood, PseudoInvertibleOperator Operator>
class DDNM : public detail::MethodParts<Likelihood, Operator, DiffusionSchedule, DDNMOptions> {
 public:
  DDNM(Likelihood likelihood, Operator measurement_operator, DiffusionSchedule schedule,
       DDNMOptions options = {})
      : DDNM::MethodParts(std::move(likelihood), std::move(measurement_operator), std::move(schedule),
                          std::move(options)) {
    TORCH_CHECK(this->options().eta() >= 0.0 && this->options().eta() <= 1.0,
                "DDNMOptions::eta must lie in [0, 1], got ", this->options().eta());
  }

  /// Per-run constants: the measurement, A^+ y and, for a DecomposableOperator, the SVD and U^T y.
  struct Context {
    torch::Tensor y;
    torch::Tensor pseudo_inverse_y;  ///< A^+ y; used without an SVD
    detail::OptionalSVD<Operator> svd;
    torch::Tensor u_transpose_y;  ///< U^T y; undefined without an SVD
  };

  /// Computes the per-run constants for measurements y and iterates shaped like `like` (once per run).
  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    const auto& op = this->measurement_operator();
    detail::OptionalSVD<Operator> svd(op, like);
    torch::Tensor u_transpose_y;
    if constexpr (HasSingularValueDecomposition<Operator>) u_transpose_y = (*svd).u_transpose(y);
    return {y, op.pseudo_inverse(y), std::move(svd), std::move(u_transpose_y)};
  }

  /// The DDNM / DDNM+ update of the network prediction at x_t with the standard-normal `noise`.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::NoGradGuard no_grad;
    const auto& op = this->measurement_operator();
    const auto& schedule = this->schedule();
    const auto denoised = detail::denoise(schedule, prediction, this->options().clip_denoised());
    const auto i = prediction.index;
    const double a = std::sqrt(schedule.alphas_cumprod_prev()[i]);
    const double s_t = std::sqrt(1.0 - schedule.alphas_cumprod_prev()[i]);
    const double eta = this->options().eta();
    const double sigma_y = this->likelihood().sigma();
    const auto residual = this->likelihood().data_fidelity(context.y, op.forward(denoised.x0));
    // The DDNM noise: fresh and predicted noise mixed by eta, as the official DDIM-style step.
    const auto ddnm_noise = s_t * (eta * noise + std::sqrt(1.0 - eta * eta) * denoised.eps);
    if constexpr (HasSingularValueDecomposition<Operator>) {
      // In the SVD's coordinates; V^T z of a standard normal z is standard normal, so the fresh noise enters
      // them as drawn.
      const auto& svd = *context.svd;
      const auto s = svd.singular_values();
      const auto measured = s > 0;
      const auto safe_s = torch::where(measured, s, torch::ones_like(s));
      const auto c0 = svd.v_transpose(denoised.x0);
      const auto measured_c0 = context.u_transpose_y / safe_s;  // V^T A^+ y on the measured components
      // DDNM: the range part replaced by A^+ y's (the official code runs DDNM+ only for sigma_y > 0).
      if (sigma_y == 0.0) {
        return {a * svd.v(torch::where(measured, measured_c0, c0)) + ddnm_noise, denoised.x0, residual};
      }
      // DDNM+ per singular value.
      const auto threshold = a * sigma_y / safe_s;  // the noise of A^+ y in this component, times a
      const auto full = threshold <= s_t;
      const auto lambda =
          torch::where(full, torch::ones_like(s), s * (s_t * std::sqrt(1.0 - eta * eta) / (a * sigma_y)));
      const auto range_noise_scale = torch::where(
          full, (s_t * s_t - threshold * threshold).clamp_min(0.0).sqrt(), torch::full_like(s, s_t * eta));
      const auto range = a * (c0 - lambda * (c0 - measured_c0)) + range_noise_scale * noise;
      const auto null =
          a * c0 + s_t * (eta * noise + std::sqrt(1.0 - eta * eta) * svd.v_transpose(denoised.eps));
      return {svd.v(torch::where(measured, range, null)), denoised.x0, residual};
    } else {
      if (sigma_y == 0.0) {  // DDNM
        auto x0 = denoised.x0 - op.pseudo_inverse(op.forward(denoised.x0)) + context.pseudo_inverse_y;
        return {a * x0 + ddnm_noise, denoised.x0, residual};
      }
      // The simplified DDNM+ (every singular value 1): one lambda and one range-space noise scale.
      const bool full = s_t >= a * sigma_y;
      const double lambda = full ? 1.0 : s_t * std::sqrt(1.0 - eta * eta) / (a * sigma_y);
      const double range_noise_scale =
          full ? std::sqrt(std::max(0.0, s_t * s_t - a * a * sigma_y * sigma_y)) : s_t * eta;
      const auto range_part = [&](const torch::Tensor& v) { return op.pseudo_inverse(op.forward(v)); };
      const auto correction = range_part(denoised.x0) - context.pseudo_inverse_y;
      const auto x0 = denoised.x0 - lambda * correction;
      const auto range_noise = range_part(noise);
      const auto noise_term = range_noise_scale * range_noise + (ddnm_noise - range_part(ddnm_noise));
      return {a * x0 + noise_term, denoised.x0, residual};
    }
  }

  /// No gradient passes through the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "DDNM"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Check the operator's pseudo-inverse and the noise level of the likelihood.";
  }
};

}  // namespace diffpost
