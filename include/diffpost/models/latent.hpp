// Latent diffusion priors (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
// CVPR 2022): a score model over the latents of an autoencoder. `FirstStage` is an LDM autoencoder with its
// scale factor as an Autoencoder; `ThroughDecoder` is a pixel-space operator seen from the latent space,
// A(D(z)), so that every operator and every pixel-space method applies to latents unchanged; `LatentPrior`
// holds the three parts of a latent prior (autoencoder, latent score model, schedule).
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/schedule.hpp>

#include <utility>

namespace diffpost {

/// An LdmAutoencoder as the first stage of a latent diffusion model, as ldm's `LatentDiffusion` uses it:
/// `encode(x)` = scale_factor x `encode_first_stage(x)` (for VQ the latent before quantization, for KL the
/// posterior's mean), `decode(z)` = `decode_first_stage(z)` = the autoencoder's decode of z / scale_factor
/// (for VQ after quantizing, with the straight-through gradient, unless `quantize` is false). The FFHQ LDM's
/// scale factor is 1; Stable Diffusion's KL-f8 uses 0.18215. The module is shared, not copied: a FirstStage
/// and the LdmAutoencoder it was made from are the same network.
class FirstStage {
 public:
  explicit FirstStage(LdmAutoencoder autoencoder, double scale_factor = 1.0, bool quantize = true)
      : autoencoder_(std::move(autoencoder)), scale_factor_(scale_factor), quantize_(quantize) {
    TORCH_CHECK(!autoencoder_.is_empty(),
                "FirstStage: the autoencoder is empty (a default-constructed handle)");
    TORCH_CHECK(scale_factor_ > 0.0, "FirstStage: scale_factor must be > 0, got ", scale_factor_,
                " (ldm's model.params.scale_factor; 1.0 when the config has none)");
  }

  /// Images [B, C, H, W] in [-1, 1] to latents [B, embed_dim, H / f, W / f].
  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const {
    auto z = autoencoder_.ptr()->encode(x);
    return scale_factor_ == 1.0 ? z : z * scale_factor_;
  }

  /// Latents [B, embed_dim, h, w] to images [B, C, h f, w f].
  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const {
    return autoencoder_.ptr()->decode(scale_factor_ == 1.0 ? z : z / scale_factor_, quantize_);
  }

  /// The image batch shape of latents shaped `latent_shape` [B, embed_dim, h, w].
  [[nodiscard]] Shape image_shape(const Shape& latent_shape) const {
    const auto& o = autoencoder_->options();
    check_shape(latent_shape, o.embed_dim(), "a latent", "embed_dim");
    const int64_t f = o.downsampling_factor();
    return {latent_shape[0], o.out_ch(), latent_shape[2] * f, latent_shape[3] * f};
  }

  /// The latent batch shape of images shaped `image_shape` [B, C, H, W] (H and W multiples of the factor).
  [[nodiscard]] Shape latent_shape(const Shape& image_shape) const {
    const auto& o = autoencoder_->options();
    check_shape(image_shape, o.in_channels(), "an image", "in_channels");
    const int64_t f = o.downsampling_factor();
    TORCH_CHECK(image_shape[2] % f == 0 && image_shape[3] % f == 0, "FirstStage: images of ", image_shape[2],
                " x ", image_shape[3],
                " have no latent: height and width must be multiples of the "
                "autoencoder's downsampling factor ",
                f, "; crop or pad the images");
    return {image_shape[0], o.embed_dim(), image_shape[2] / f, image_shape[3] / f};
  }

  [[nodiscard]] const LdmAutoencoder& autoencoder() const noexcept { return autoencoder_; }
  [[nodiscard]] double scale_factor() const noexcept { return scale_factor_; }
  [[nodiscard]] bool quantizes() const noexcept { return quantize_; }

 private:
  static void check_shape(const Shape& shape, int64_t channels, const char* what, const char* option) {
    TORCH_CHECK(shape.size() == 4 && shape[1] == channels, "FirstStage: expected ", what, " batch shape [B, ",
                channels, ", H, W] (the autoencoder's ", option, " is ", channels, "), got ",
                c10::IntArrayRef(shape));
  }

  LdmAutoencoder autoencoder_;
  double scale_factor_;
  bool quantize_;
};

/// A pixel-space measurement operator seen from the latent space: forward(z) = A(D(z)), differentiable
/// through the decoder, so that DPS, DAPS and the latent methods take latents with any ForwardOperator
/// (phase retrieval and nonlinear blur included). Not linear even when A is (the decoder is not).
template <ForwardOperator Operator, Autoencoder Codec>
class ThroughDecoder {
 public:
  ThroughDecoder(Operator pixel_operator, Codec autoencoder)
      : pixel_operator_(std::move(pixel_operator)), autoencoder_(std::move(autoencoder)) {}

  /// A(D(z)) for latents z [B, c, h, w].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& z) const {
    return pixel_operator_.forward(autoencoder_.decode(z));
  }

  /// The measurement shape of latents shaped `latent_shape`: A's measurement of the decoded image shape.
  [[nodiscard]] Shape measurement_shape(const Shape& latent_shape) const {
    return pixel_operator_.measurement_shape(autoencoder_.image_shape(latent_shape));
  }

  /// The latent of A's naive inverse: E(A_naive^{-1}(y)), where A has one (SDEdit-like starts).
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const requires HasNaiveInverse<Operator> {
    return autoencoder_.encode(pixel_operator_.naive_inverse(y));
  }

  [[nodiscard]] const Operator& pixel_operator() const noexcept { return pixel_operator_; }
  [[nodiscard]] const Codec& autoencoder() const noexcept { return autoencoder_; }

 private:
  Operator pixel_operator_;
  Codec autoencoder_;
};

/// A latent diffusion prior: an Autoencoder, the ScoreModel over its latents, and the schedule that model was
/// trained on (an LDM checkpoint's own betas). A method runs on latents with `through_decoder(op)` as its
/// operator and latent shapes (`latent_shape`); `decode` turns its result into images:
///
///   LatentPrior prior(first_stage, unet, schedule);
///   PosteriorSampler daps(DAPS(likelihood, prior.through_decoder(blur), prior.schedule(), latent_options));
///   auto z0 = daps.sample(prior.score_model(), y, prior.latent_shape({3, 256, 256}), generator);
///   auto x0 = prior.decode(z0);
template <Autoencoder Codec, ScoreModel Model>
class LatentPrior {
 public:
  LatentPrior(Codec autoencoder, Model score_model, DiffusionSchedule schedule)
      : autoencoder_(std::move(autoencoder)),
        score_model_(std::move(score_model)),
        schedule_(std::move(schedule)) {}

  /// The pixel-space operator `op` applied to decoded latents, A(D(z)).
  template <ForwardOperator Operator>
  [[nodiscard]] ThroughDecoder<Operator, Codec> through_decoder(Operator op) const {
    return {std::move(op), autoencoder_};
  }

  /// The latent shape [c, h, w] of images shaped [C, H, W].
  [[nodiscard]] Shape latent_shape(const Shape& image_shape) const {
    TORCH_CHECK(image_shape.size() == 3, "LatentPrior::latent_shape: expected an image shape [C, H, W], got ",
                c10::IntArrayRef(image_shape));
    auto batch = autoencoder_.latent_shape({1, image_shape[0], image_shape[1], image_shape[2]});
    return {batch[1], batch[2], batch[3]};
  }

  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const { return autoencoder_.encode(x); }
  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const { return autoencoder_.decode(z); }

  [[nodiscard]] const Codec& autoencoder() const noexcept { return autoencoder_; }
  [[nodiscard]] Model& score_model() noexcept { return score_model_; }
  [[nodiscard]] const Model& score_model() const noexcept { return score_model_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }

 private:
  Codec autoencoder_;
  Model score_model_;
  DiffusionSchedule schedule_;
};

}  // namespace diffpost
