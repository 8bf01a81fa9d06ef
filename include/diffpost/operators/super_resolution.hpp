// Super-resolution: the measurement is a downsampled image, y = D x.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include <diffpost/concepts.hpp>
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
/// dtype and device.
class SuperResolutionOperator {
 public:
  /// Downsampling by `factor` (>= 1) in the given mode; the reference task is factor 4, Bicubic.
  explicit SuperResolutionOperator(int64_t factor = 4, DownsamplingMode mode = DownsamplingMode::Bicubic)
      : factor_(factor), mode_(mode) {
    TORCH_CHECK(factor >= 1, "SuperResolutionOperator: factor must be a positive integer, got ", factor);
  }

  /// y = D x: [B, C, H, W] -> [B, C, H / factor, W / factor].
  torch::Tensor forward(const torch::Tensor& x) const {
    check_image(x);
    return detail::apply_separable(downsampling_matrix(x.size(2)), downsampling_matrix(x.size(3)), x);
  }

  /// Exact adjoint D^T y: [B, C, h, w] -> [B, C, h * factor, w * factor].
  torch::Tensor adjoint(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::adjoint");
    return detail::apply_separable(downsampling_matrix(y.size(2) * factor_).transpose(0, 1),
                                   downsampling_matrix(y.size(3) * factor_).transpose(0, 1), y);
  }

  /// Moore-Penrose pseudo-inverse D^+ y = R_h^+ y (R_w^+)^T (the pseudo-inverse of a Kronecker product is the
  /// Kronecker product of the pseudo-inverses). For AveragePool this is nearest upsampling.
  torch::Tensor pseudo_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::pseudo_inverse");
    return detail::apply_separable(at::linalg_pinv(downsampling_matrix(y.size(2) * factor_), 1e-15),
                                   at::linalg_pinv(downsampling_matrix(y.size(3) * factor_), 1e-15), y);
  }

  /// Bicubic upsampling by the factor (imresize(y, factor), no antialiasing when enlarging): what a user gets
  /// without a prior.
  torch::Tensor naive_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "SuperResolutionOperator::naive_inverse");
    const auto scale = static_cast<double>(factor_);
    const auto rows =
        detail::resize_matrix(y.size(2), y.size(2) * factor_, scale, detail::ResampleKernel::Cubic);
    const auto cols =
        detail::resize_matrix(y.size(3), y.size(3) * factor_, scale, detail::ResampleKernel::Cubic);
    return detail::apply_separable(rows, cols, y);
  }

  /// The SVD of D = R_h (x) R_w for image batches of `image_shape` [B, C, H, W], in `options`' dtype and
  /// device, from the SVDs of the two 1-D downsampling matrices (DecomposableOperator).
  SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const {
    detail::check_image_shape(image_shape, "SuperResolutionOperator::svd");
    check_divisible(image_shape[2], image_shape[3]);
    return SeparableSVD::from_factors(
        {torch::Tensor{}, downsampling_matrix(image_shape[2]), downsampling_matrix(image_shape[3])},
        image_shape, options);
  }

  /// [B, C, H, W] -> [B, C, H / factor, W / factor].
  Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "SuperResolutionOperator::measurement_shape");
    check_divisible(image_shape[2], image_shape[3]);
    return {image_shape[0], image_shape[1], image_shape[2] / factor_, image_shape[3] / factor_};
  }

  /// The 1-D [length / factor, length] float64 matrix applied along an axis of `length` pixels; the 2-D
  /// operator is its Kronecker product over rows and columns. Exposed for tests and for building solvers.
  torch::Tensor downsampling_matrix(int64_t length) const {
    if (mode_ == DownsamplingMode::AveragePool) return detail::block_average_matrix(length, factor_);
    return detail::resize_matrix(length, length / factor_, 1.0 / static_cast<double>(factor_),
                                 detail::ResampleKernel::Cubic, /*antialias=*/true);
  }

  int64_t factor() const { return factor_; }
  DownsamplingMode mode() const { return mode_; }

 private:
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
};

static_assert(PseudoInvertibleOperator<SuperResolutionOperator> && HasNaiveInverse<SuperResolutionOperator>);
static_assert(DecomposableOperator<SuperResolutionOperator>);

}  // namespace diffpost
