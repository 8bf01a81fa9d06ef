// Colorization: the measurement is the gray-level image, y = 0.299 R + 0.587 G + 0.114 B.
#pragma once

#include <torch/torch.h>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/operator_checks.hpp>
#include <diffpost/operators/svd.hpp>

namespace diffpost {

/// Gray-level conversion of an RGB batch with the ITU-R BT.601 luma weights w = (0.299, 0.587, 0.114):
/// y = sum_c w_c x_c, [B, 3, H, W] -> [B, 1, H, W]. Since the weights sum to one, gray images stay in [-1,
/// 1]. Linear with adjoint A^T y = w y (one weighted copy per channel) and pseudo-inverse A^+ = A^T / |w|^2
/// (A A^T = |w|^2 I); the naive inverse repeats the gray image in the three channels. The weights are
/// converted to each device and dtype once; copies of the operator share them (thread-safe).
class ColorizationOperator {
 public:
  /// y = w . x over the channels.
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    check(x, 3, "ColorizationOperator::forward", "an RGB image batch [B, 3, H, W]");
    return (x * weights_like(x)).sum(1, /*keepdim=*/true);
  }

  /// A^T y = w y: [B, 1, H, W] -> [B, 3, H, W].
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const {
    check(y, 1, "ColorizationOperator::adjoint", "a gray measurement batch [B, 1, H, W]");
    return y * weights_like(y);
  }

  /// A^+ y = w y / |w|^2, the minimum-norm colour image with gray level y.
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const {
    check(y, 1, "ColorizationOperator::pseudo_inverse", "a gray measurement batch [B, 1, H, W]");
    const auto w = weights_like(y);
    return y * w / (w * w).sum();
  }

  /// The gray image in all three channels.
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const {
    check(y, 1, "ColorizationOperator::naive_inverse", "a gray measurement batch [B, 1, H, W]");
    return y.repeat({1, 3, 1, 1});
  }

  /// The SVD of the 1 x 3 channel map w^T for image batches of `image_shape` [B, 3, H, W], in `options`'
  /// dtype and device: one singular value |w| per pixel, V's first channel along w (DecomposableOperator).
  [[nodiscard]] SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const {
    static_cast<void>(measurement_shape(image_shape));  // checks the shape
    return svds_->get(detail::svd_key(image_shape, options), [&] {
      const auto w = luma_weights().view({1, 3});
      return SeparableSVD::from_factors({w, torch::Tensor{}, torch::Tensor{}}, image_shape, options);
    });
  }

  /// [B, 3, H, W] -> [B, 1, H, W].
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "ColorizationOperator::measurement_shape");
    TORCH_CHECK(image_shape[1] == 3,
                "ColorizationOperator::measurement_shape: expected 3 channels, got shape ",
                c10::IntArrayRef(image_shape));
    return {image_shape[0], 1, image_shape[2], image_shape[3]};
  }

  /// Conversions of the weights made so far (one per device and dtype), shared by the copies of this
  /// operator; for tests and diagnostics.
  [[nodiscard]] int64_t constants_built() const { return constants_->builds(); }

 private:
  /// w = (0.299, 0.587, 0.114), float64 on the CPU.
  static torch::Tensor luma_weights() { return torch::tensor({0.299, 0.587, 0.114}, torch::kFloat64); }

  static void check(const torch::Tensor& t, int64_t channels, const char* caller, const char* expected) {
    detail::check_image_batch(t, caller);
    TORCH_CHECK(t.size(1) == channels, caller, ": expected ", expected, ", got shape ", t.sizes());
  }
  /// w as [1, 3, 1, 1] in `t`'s device and dtype.
  [[nodiscard]] torch::Tensor weights_like(const torch::Tensor& t) const {
    const auto options = detail::constant_options(t);
    return constants_->get({"weights", {}, options}, [&] {
      return luma_weights().to(options).view({1, 3, 1, 1});
    });
  }

  detail::TensorCache constants_ = detail::make_tensor_cache();
  detail::SVDCache svds_ = detail::make_svd_cache();
};

static_assert(PseudoInvertibleOperator<ColorizationOperator> && HasNaiveInverse<ColorizationOperator>);
static_assert(DecomposableOperator<ColorizationOperator>);

}  // namespace diffpost
