// Super-resolution: the measurement is a downsampled image, y = D x.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/operator_checks.hpp>
#include <diffpost/detail/resampling.hpp>
#include <diffpost/operators/svd.hpp>

namespace diffpost {

/// How `SuperResolutionOperator` downsamples.
enum class DownsamplingMode {
  /// MATLAB `imresize(x, 1/factor)` bicubic with antialiasing (cubic a = -0.5 stretched by the factor,
  /// symmetric
  /// boundary): the reference's resizer. For factor 4 every output pixel is a 16-tap weighted sum per axis.
  Bicubic,
  /// Mean over non-overlapping factor x factor blocks.
  AveragePool,
};

/// Downsampling by an integer factor, the SR x4 task of DPS: y = R_h x R_w^T per channel, where R_h and R_w
/// are the 1-D resampling matrices of the chosen mode (rows first, then columns, as the reference). The
/// operator is linear with an exact adjoint R_h^T y R_w (transposed resampling, unlike the reference, which
/// uses nearest upsampling as its "transpose"), a Moore-Penrose pseudo-inverse R_h^+ y (R_w^+)^T built from
/// the 1-D matrices, and a naive inverse that is bicubic upsampling (imresize(y, factor)). Image height and
/// width must be multiples of the factor, so that the adjoint knows the image size. Works on any batch size,
/// dtype and device. Every matrix (and pseudo-inverse) is built once per length, device and dtype and then
/// reused; copies of the operator share them (thread-safe).
class SuperResolutionOperator {
 public:
  /// Downsampling by `factor` (>= 1) in the given mode; the reference task is factor 4, Bicubic.
  explicit SuperResolutionOperator(int64_t factor = 4, DownsamplingMode mode = DownsamplingMode::Bicubic)
      : factor_(factor), mode_(mode) {
    TORCH_CHECK(factor >= 1, "SuperResolutionOperator: factor must be a positive integer, got ", factor);
  }

  /// y = D x: [B, C, H, W] -> [B, C, H / factor, W / factor].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    check_image(x);
    return detail::apply_separable(matrix(Matrix::down, x.size(2), x), matrix(Matrix::down, x.size(3), x), x);
  }

  /// Exact adjoint D^T y: [B, C, h, w] -> [B, C, h * factor, w * factor].
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::adjoint");
    return detail::apply_separable(matrix(Matrix::down_transposed, y.size(2) * factor_, y),
                                   matrix(Matrix::down_transposed, y.size(3) * factor_, y), y);
  }

  /// Moore-Penrose pseudo-inverse D^+ y = R_h^+ y (R_w^+)^T (the pseudo-inverse of a Kronecker product is the
  /// Kronecker product of the pseudo-inverses). For AveragePool this is nearest upsampling.
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::pseudo_inverse");
    return detail::apply_separable(matrix(Matrix::pseudo_inverse, y.size(2) * factor_, y),
                                   matrix(Matrix::pseudo_inverse, y.size(3) * factor_, y), y);
  }

  /// Bicubic upsampling by the factor (imresize(y, factor), no antialiasing when enlarging): what a user gets
  /// without a prior.
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::naive_inverse");
    return detail::apply_separable(matrix(Matrix::upsample, y.size(2) * factor_, y),
                                   matrix(Matrix::upsample, y.size(3) * factor_, y), y);
  }

  /// The SVD of D = R_h (x) R_w for image batches of `image_shape` [B, C, H, W], in `options`' dtype and
  /// device, from the SVDs of the two 1-D downsampling matrices (DecomposableOperator).
  [[nodiscard]] SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const {
    detail::check_image_shape(image_shape, "SuperResolutionOperator::svd");
    check_divisible(image_shape[2], image_shape[3]);
    return svds_->get(detail::svd_key(image_shape, options), [&] {
      return SeparableSVD::from_factors(
          {torch::Tensor{}, downsampling_matrix(image_shape[2]), downsampling_matrix(image_shape[3])},
          image_shape, options);
    });
  }

  /// [B, C, H, W] -> [B, C, H / factor, W / factor].
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "SuperResolutionOperator::measurement_shape");
    check_divisible(image_shape[2], image_shape[3]);
    return {image_shape[0], image_shape[1], image_shape[2] / factor_, image_shape[3] / factor_};
  }

  /// The 1-D [length / factor, length] float64 matrix applied along an axis of `length` pixels; the 2-D
  /// operator is its Kronecker product over rows and columns. Exposed for tests and for building solvers.
  [[nodiscard]] torch::Tensor downsampling_matrix(int64_t length) const {
    if (mode_ == DownsamplingMode::AveragePool) return detail::block_average_matrix(length, factor_);
    return detail::resize_matrix(length, length / factor_, 1.0 / static_cast<double>(factor_),
                                 detail::ResampleKernel::Cubic, /*antialias=*/true);
  }

  [[nodiscard]] int64_t factor() const { return factor_; }
  [[nodiscard]] DownsamplingMode mode() const { return mode_; }

  /// Matrices built so far (one per kind, length, device and dtype), shared by the copies of this operator;
  /// for tests and diagnostics.
  [[nodiscard]] int64_t constants_built() const { return constants_->builds(); }

 private:
  /// The 1-D matrices the operator applies along an axis of `length` image pixels.
  enum class Matrix {
    down,             ///< R, [length / factor, length]
    down_transposed,  ///< R^T, for the adjoint
    pseudo_inverse,   ///< R^+ (float64 pinv, rcond 1e-15)
    upsample,         ///< bicubic imresize by the factor, for the naive inverse
  };

  /// Matrix `kind` for axes of `length` image pixels in `like`'s device and dtype, built in float64 on the
  /// CPU the first time and cached.
  [[nodiscard]] torch::Tensor matrix(Matrix kind, int64_t length, const torch::Tensor& like) const {
    const auto options = detail::constant_options(like);
    return constants_->get({"matrix", {static_cast<int64_t>(kind), length}, options}, [&] {
      switch (kind) {
        case Matrix::down:
          return downsampling_matrix(length).to(options);
        case Matrix::down_transposed:
          return downsampling_matrix(length).transpose(0, 1).to(options);
        case Matrix::pseudo_inverse:
          return at::linalg_pinv(downsampling_matrix(length), 1e-15).to(options);
        case Matrix::upsample:
          break;
      }
      const int64_t measured = length / factor_;
      return detail::resize_matrix(measured, length, static_cast<double>(factor_),
                                   detail::ResampleKernel::Cubic)
          .to(options);
    });
  }

  void check_divisible(int64_t height, int64_t width) const {
    TORCH_CHECK(height % factor_ == 0 && width % factor_ == 0,
                "SuperResolutionOperator: image height and width must be multiples of the factor ", factor_,
                ", got ", height, "x", width, " (crop or pad the image to a multiple of ", factor_, ")");
  }
  void check_image(const torch::Tensor& x) const {
    detail::check_image_batch(x, "SuperResolutionOperator::forward");
    check_divisible(x.size(2), x.size(3));
  }

  int64_t factor_;
  DownsamplingMode mode_;
  detail::TensorCache constants_ = detail::make_tensor_cache();
  detail::SVDCache svds_ = detail::make_svd_cache();
};

static_assert(PseudoInvertibleOperator<SuperResolutionOperator> && HasNaiveInverse<SuperResolutionOperator>);
static_assert(DecomposableOperator<SuperResolutionOperator>);

}  // namespace diffpost
