// Training objectives of DDPM models: the simple noise-prediction loss of Ho et al. (2020) and the hybrid
// loss of Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (2021), which also trains
// the `learned_range` variance through the variational bound. The bound's pieces - the KL divergence of two
// diagonal Gaussians and the discretized Gaussian log-likelihood of 8-bit data at t = 0 - are here as free
// functions so that they can be checked against closed forms.
#pragma once

#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>

#include <torch/torch.h>

#include <cmath>
#include <numbers>

namespace diffpost {

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats:
/// 0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)).
/// The arguments broadcast against each other.
inline torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& logvar1,
                               const torch::Tensor& mean2, const torch::Tensor& logvar2) {
  return 0.5 * (-1.0 + logvar2 - logvar1 + torch::exp(logvar1 - logvar2) +
                (mean1 - mean2).pow(2) * torch::exp(-logvar2));
}

/// The standard normal CDF through the tanh approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
/// that improved DDPM uses (Page 1977; absolute error below 2e-4), kept for bit-compatible loss values.
inline torch::Tensor approx_standard_normal_cdf(const torch::Tensor& x) {
  return 0.5 * (1.0 + torch::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x.pow(3))));
}

/// log p(x) of 8-bit data x in [-1, 1] (bin width 2/255) under N(mean, exp(2 log_scale)), elementwise, in
/// nats (Ho et al. 2020 eq. 13): the Gaussian mass of the bin [x - 1/255, x + 1/255], with the lowest bin
/// extended to -inf and the highest to +inf (x < -0.999 and x > 0.999). Probabilities are floored at 1e-12
/// before the log, as in improved DDPM.
inline torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                         const torch::Tensor& log_scale) {
  TORCH_CHECK(x.sizes() == mean.sizes() && x.sizes() == log_scale.sizes(),
              "discretized_gaussian_log_likelihood: x, mean and log_scale must have one shape, got ",
              x.sizes(), ", ", mean.sizes(), " and ", log_scale.sizes());
  const auto centered = x - mean;
  const auto inv_stdv = torch::exp(-log_scale);
  const auto cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0));
  const auto cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0));
  const auto log_cdf_plus = torch::log(cdf_plus.clamp_min(1e-12));
  const auto log_one_minus_cdf_min = torch::log((1.0 - cdf_min).clamp_min(1e-12));
  const auto log_cdf_delta = torch::log((cdf_plus - cdf_min).clamp_min(1e-12));
  return torch::where(x < -0.999, log_cdf_plus,
                      torch::where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta));
}

/// Mean over every dimension but the first: [B, ...] -> [B].
inline torch::Tensor mean_flat(const torch::Tensor& x) {
  return x.flatten(1).mean(1);
}

/// The terms of one DDPM training loss evaluation, each [B]: `mse` = mean (eps - eps_hat)^2 (L_simple),
/// `vlb` = the variational-bound term L_t in bits per dimension (zero when the variance is fixed), `loss` =
/// what is minimised.
struct DiffusionLossTerms {
  torch::Tensor loss;
  torch::Tensor mse;
  torch::Tensor vlb;
};

/// The variational-bound term of improved DDPM for step indices t [B], in bits per dimension: L_{t-1} =
/// KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the decoder term -log p(x_0 | x_1) (the
/// discretized Gaussian likelihood) at t = 0 (Nichol & Dhariwal eq. 4-5). p's mean comes from `eps` without
/// clipping x0_hat, its log-variance from the `learned_range` interpolation v in [-1, 1] between
/// log beta_t and the clipped log posterior variance (eq. 15).
inline torch::Tensor vlb_terms_bits(const DiffusionSchedule& schedule, const torch::Tensor& x0,
                                    const torch::Tensor& x_t, const torch::Tensor& t,
                                    const torch::Tensor& eps, const torch::Tensor& v) {
  // True posterior q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7).
  const auto true_mean = posterior_mean(schedule, x0, x_t, t);
  const auto true_logvar =
      DiffusionSchedule::gather(schedule.posterior_log_variance_clipped(), t, x0).expand_as(x0);
  // Model p(x_{t-1} | x_t): mean through x0_hat (Ho et al. eq. 15), log-variance by learned_range.
  const auto model_mean = posterior_mean(schedule, predict_x0_from_eps(schedule, x_t, eps, t, false), x_t, t);
  const auto model_logvar = learned_range_log_variance(schedule, v, t);
  const double ln2 = std::log(2.0);
  const auto kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / ln2;
  const auto decoder_nll =
      -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / ln2;
  return torch::where(t.to(kl.device()) == 0, decoder_nll, kl);
}

/// The DDPM training loss for a model output `model_output` ([B, C, ...] eps, or [B, 2C, ...] eps then v
/// for a learned variance) at step indices t [B] of `schedule`, where x_t = q_sample(x0, t, noise).
/// Fixed variance: L_simple = mean (noise - eps)^2 (Ho et al. eq. 14). Learned variance: the hybrid loss
/// L_simple + lambda L_vlb of improved DDPM (sec. 3.1) with lambda = 0.001: L_vlb = T E_t[L_t] for uniform t,
/// so per sample lambda T L_t = (T / 1000) L_t, and the vlb term sees eps with its gradient stopped so that
/// it trains only the variance (the "stop-gradient on the mean" of sec. 3.1). L_t is taken in bits per
/// dimension as in the reference code.
inline DiffusionLossTerms diffusion_loss(const DiffusionSchedule& schedule, const torch::Tensor& model_output,
                                         const torch::Tensor& x0, const torch::Tensor& x_t,
                                         const torch::Tensor& t, const torch::Tensor& noise,
                                         double vlb_weight = 0.001) {
  const int64_t channels = x0.size(1);
  TORCH_CHECK(model_output.dim() == x0.dim() && model_output.size(0) == x0.size(0) &&
                  (model_output.size(1) == channels || model_output.size(1) == 2 * channels),
              "diffusion_loss: model output of shape ", model_output.sizes(), " does not fit x0 of shape ",
              x0.sizes(), "; expected C or 2C channels");
  const bool learned_variance = model_output.size(1) == 2 * channels;
  const auto eps = model_output.narrow(1, 0, channels);
  DiffusionLossTerms terms;
  terms.mse = mean_flat((noise - eps).pow(2));
  if (!learned_variance) {
    terms.vlb = torch::zeros_like(terms.mse);
    terms.loss = terms.mse;
    return terms;
  }
  const auto v = model_output.narrow(1, channels, channels);
  terms.vlb = vlb_terms_bits(schedule, x0, x_t, t, eps.detach(), v);
  const double weight = vlb_weight * static_cast<double>(schedule.num_steps());
  terms.loss = terms.mse + weight * terms.vlb;
  return terms;
}

}  // namespace diffpost
