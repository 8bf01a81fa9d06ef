// A linear Autoencoder for closed forms: with a Gaussian prior over its latents and a linear operator, the
// posterior over latents is Gaussian and known exactly (gaussian_posterior.hpp with A D as the operator).
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/random.hpp>

#include <cmath>
#include <cstdint>
#include <utility>

namespace diffpost::testing {

/// decode(z) = nearest-neighbour x `factor` upsampling of M z (M [C, c] mixing the channels at each latent
/// position); encode(x) = M^+ applied to `factor` x `factor` average pooling of x. encode(decode(z)) = z when
/// M has full column rank. Tensors in M's dtype and device.
class LinearAutoencoder {
 public:
  LinearAutoencoder(torch::Tensor mixing, int64_t factor)
      : mixing_(std::move(mixing)), pseudo_inverse_(torch::linalg::pinv(mixing_)), factor_(factor) {
    TORCH_CHECK(mixing_.dim() == 2 && factor_ >= 1, "LinearAutoencoder: mixing must be [C, c], factor >= 1");
  }

  /// A random mixing [image_channels, latent_channels] with entries N(0, 1 / latent_channels), float64.
  static LinearAutoencoder random(int64_t image_channels, int64_t latent_channels, int64_t factor,
                                  uint64_t seed) {
    auto generator = make_generator(seed);
    auto mixing = at::randn({image_channels, latent_channels}, generator, torch::kFloat64) /
                  std::sqrt(static_cast<double>(latent_channels));
    return {mixing, factor};
  }

  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const {
    auto x = torch::einsum("oc,bchw->bohw", {mixing_.to(z.options()), z});
    return factor_ == 1 ? x : x.repeat_interleave(factor_, 2).repeat_interleave(factor_, 3);
  }

  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const {
    auto pooled = factor_ == 1 ? x : torch::avg_pool2d(x, factor_);
    return torch::einsum("co,bohw->bchw", {pseudo_inverse_.to(x.options()), pooled});
  }

  [[nodiscard]] Shape image_shape(const Shape& latent_shape) const {
    TORCH_CHECK(latent_shape.size() == 4 && latent_shape[1] == mixing_.size(1),
                "LinearAutoencoder: latent shape");
    return {latent_shape[0], mixing_.size(0), latent_shape[2] * factor_, latent_shape[3] * factor_};
  }

  [[nodiscard]] Shape latent_shape(const Shape& image_shape) const {
    TORCH_CHECK(image_shape.size() == 4 && image_shape[1] == mixing_.size(0) &&
                    image_shape[2] % factor_ == 0 && image_shape[3] % factor_ == 0,
                "LinearAutoencoder: image shape");
    return {image_shape[0], mixing_.size(1), image_shape[2] / factor_, image_shape[3] / factor_};
  }

  /// The decoder as a dense matrix [C H W, c h w] (row-major pixel and latent order) for latents [c, h, w].
  [[nodiscard]] torch::Tensor decoder_matrix(const Shape& latent_shape) const {
    TORCH_CHECK(latent_shape.size() == 3, "decoder_matrix: latent shape [c, h, w]");
    const int64_t size = latent_shape[0] * latent_shape[1] * latent_shape[2];
    const auto basis =
        torch::eye(size, mixing_.options()).view({size, latent_shape[0], latent_shape[1], latent_shape[2]});
    return decode(basis).reshape({size, -1}).t().contiguous();
  }

  [[nodiscard]] const torch::Tensor& mixing() const noexcept { return mixing_; }
  [[nodiscard]] int64_t factor() const noexcept { return factor_; }

 private:
  torch::Tensor mixing_;
  torch::Tensor pseudo_inverse_;
  int64_t factor_;
};

static_assert(Autoencoder<LinearAutoencoder>);

}  // namespace diffpost::testing
