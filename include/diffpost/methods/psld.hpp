// Posterior Sampling with Latent Diffusion (Rout, Raoof, Daras, Caramanis, Dimakis & Shakkottai, "Solving
// Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion Models", NeurIPS 2023;
// official code LituRout/PSLD, `stable-diffusion/ldm/models/diffusion/psld.py`): a DDIM step in the latent
// space, then one gradient step, through the network, the decoder and the encoder, on the measurement
// residual of the decoded x0 estimate plus a "gluing" term that asks the encoder to reproduce the latent once
// the measured part of the decoded image is replaced by the measurement.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/samplers/ddim.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <cstdint>
#include <utility>

namespace diffpost {

/// Options of PSLD. Defaults are the official settings for the FFHQ LDM (`run/inverse_*_ldm.sh`: 1000 DDIM
/// steps, eta 0, omega 0.1 and gamma 0.1 for Gaussian and motion deblur, box and random inpainting; omega 0.9
/// for SR x4). The command-line defaults of `scripts/inverse.py` (omega 1, gamma 0.1) are its Stable
/// Diffusion settings. Both weights multiply plain (not squared) norms and are the step sizes themselves.
struct PSLDOptions {
  /// DDIM steps on ldm's uniform discretisation (`ldm_uniform_ddim_schedule`).
  TORCH_ARG(int64_t, ddim_steps) = 1000;
  /// DDIM's eta (0: deterministic steps).
  TORCH_ARG(double, eta) = 0.0;
  /// Weight of the measurement term ||A(D(z0_hat)) - y|| (the likelihood's data fidelity).
  TORCH_ARG(double, omega) = 0.1;
  /// Weight of the gluing term ||E(A^+ y + (I - A^+ A) D(z0_hat)) - z0_hat||; 0 makes PSLD latent DPS on DDIM
  /// (and skips the encoder).
  TORCH_ARG(double, gamma) = 0.1;
};

/// PSLD for y = A(D(z)) + noise with a latent prior, as the official code runs it:
///   z0_hat  = (z_t - sqrt(1 - abar_t) eps(z_t)) / sqrt(abar_t)                    (Tweedie, not clipped)
///   z'_{t-1} = DDIM step from z0_hat and eps (eta)
///   x0_hat  = D(z0_hat)
///   z_{t-1}  = z'_{t-1} - grad_{z_t} [ omega r(y, A(x0_hat))
///                                     + gamma || E(A^+ y + (I - A^+ A) x0_hat) - z0_hat || ]
/// with r the likelihood's data fidelity (||y - A x|| for Gaussian noise, as the reference's
/// `torch.linalg.norm`), the gradient taken by autograd through the operator, the decoder D, the encoder E
/// and the network, once per step. The measurement operator is `ThroughDecoder<Operator, Codec>`
/// (`LatentPrior::through_decoder(op)`), so the sampler checks measurements against latent shapes.
///
/// The gluing map is the pseudo-inverse A^+, not the adjoint: the paper writes A^T y + (I - A^T A) x, the
/// projection of x onto {A x = y} when A has orthonormal rows, and the official operators' `transpose` is
/// that right inverse where they have one, not the adjoint: the identity for masks (A^T = A^+) and nearest
/// upsampling for super-resolution, which is the pseudo-inverse of f x f average pooling (its adjoint is
/// 1/f^2 times that). For blurs the official `transpose` is the identity, which is neither; diffpost's blurs
/// have no cheap pseudo-inverse, so PSLD takes a PseudoInvertibleOperator (masks, super-resolution,
/// colorization, the identity).
///
/// Steps: ldm's uniform DDIM timesteps (`ldm_uniform_ddim_schedule`) of `model_schedule`, the schedule the
/// latent network was trained on. Cost per step: one network evaluation and one backpropagation through it
/// (`network_cost()`), plus one decoder pass and, when gamma > 0, one encoder pass, each with its backward.
/// Samples of a batch are independent: each has its own norms (the reference takes both norms over the whole
/// batch, the same for one image).
template <NoiseModel Likelihood, PseudoInvertibleOperator Operator, Autoencoder Codec>
class PSLD
    : public detail::MethodParts<Likelihood, ThroughDecoder<Operator, Codec>, DDIMSampler, PSLDOptions> {
 public:
  /// The run's constants: the measurement and A^+ y.
  struct Context {
    torch::Tensor y;
    torch::Tensor pseudo_inverse_y;
  };

  PSLD(Likelihood likelihood, ThroughDecoder<Operator, Codec> measurement_operator,
       const DiffusionSchedule& model_schedule, const PSLDOptions& options = {})
      : PSLD::MethodParts(std::move(likelihood), std::move(measurement_operator),
                          make_sampler(model_schedule, options), options) {}

  /// The run's constants for measurements y and latents shaped like `like`: y and A^+ y, which must be an
  /// image batch of the decoded latents' shape.
  [[nodiscard]] Context prepare(const torch::Tensor& y, const torch::Tensor& like) const {
    const auto& op = this->measurement_operator();
    auto pseudo_inverse_y = op.pixel_operator().pseudo_inverse(y);
    const Shape image_shape = op.autoencoder().image_shape(like.sizes().vec());
    TORCH_CHECK(
        pseudo_inverse_y.sizes().vec() == image_shape, "PSLD: the operator's pseudo_inverse(y) has shape ",
        pseudo_inverse_y.sizes(), " but the latents ", like.sizes(), " decode to images ",
        c10::IntArrayRef(image_shape),
        "; the gluing term needs A^+ y shaped like the decoded image (check the operator's image size)");
    return {y, std::move(pseudo_inverse_y)};
  }

  /// The PSLD step on a network prediction taken with its graph: the DDIM step with the loop's `noise`, then
  /// the gradient step on the weighted measurement and gluing norms with respect to z_t.
  template <ScoreModel Model>
  MethodStep correct(Model& /*model*/, const Context& context, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    torch::AutoGradMode enable_grad(true);
    const auto& o = this->options();
    const auto& op = this->measurement_operator();
    const auto& pixel_operator = op.pixel_operator();
    auto reverse_step = this->sampler().step(prediction.output, prediction.x_t, prediction.index, noise);
    const auto& z0_hat = reverse_step.x0_hat;
    const auto x0_hat = op.autoencoder().decode(z0_hat);
    auto residual = this->likelihood().data_fidelity(context.y, pixel_operator.forward(x0_hat));
    TORCH_CHECK(residual.dim() == 1 && residual.size(0) == z0_hat.size(0),
                "data_fidelity must return one value per sample, shape [", z0_hat.size(0), "], got ",
                residual.sizes());
    auto objective = o.omega() * residual.sum();
    if (o.gamma() != 0.0) {
      // The gluing: keep the unmeasured part of D(z0_hat), replace the measured part by y.
      const auto glued =
          context.pseudo_inverse_y + x0_hat - pixel_operator.pseudo_inverse(pixel_operator.forward(x0_hat));
      const auto gluing = (op.autoencoder().encode(glued) - z0_hat).flatten(1).norm(2, 1);
      objective = objective + o.gamma() * gluing.sum();
    }
    const auto gradient = torch::autograd::grad({objective}, {prediction.x_t})[0];
    auto x_prev = reverse_step.x_prev.detach() - gradient;
    return {std::move(x_prev), z0_hat.detach(), residual.detach()};
  }

  /// PSLD backpropagates through the network at every step.
  static constexpr bool differentiates_network = true;
  [[nodiscard]] static const char* method_name() noexcept { return "PSLD"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower PSLDOptions::omega and gamma (the reference uses 0.1 to 1 and 0.1 with the FFHQ LDM) or "
           "check "
           "the measurement scale.";
  }

 private:
  static DDIMSampler make_sampler(const DiffusionSchedule& model_schedule, const PSLDOptions& options) {
    TORCH_CHECK(std::isfinite(options.omega()) && options.omega() >= 0.0,
                "PSLDOptions::omega must be a finite number >= 0, got ", options.omega());
    TORCH_CHECK(std::isfinite(options.gamma()) && options.gamma() >= 0.0,
                "PSLDOptions::gamma must be a finite number >= 0, got ", options.gamma());
    TORCH_CHECK(std::isfinite(options.eta()) && options.eta() >= 0.0,
                "PSLDOptions::eta must be a finite number >= 0, got ", options.eta());
    TORCH_CHECK(options.ddim_steps() >= 1 && options.ddim_steps() <= model_schedule.num_steps(),
                "PSLDOptions::ddim_steps must be in [1, ", model_schedule.num_steps(), "] for a ",
                model_schedule.num_steps(), "-step model schedule, got ", options.ddim_steps());
    // Latents are not bounded like images: the reference never clips z0_hat.
    return DDIMSampler(ldm_uniform_ddim_schedule(model_schedule, options.ddim_steps()),
                       DDIMOptions{}.eta(options.eta()).clip_denoised(false));
  }
};

}  // namespace diffpost
