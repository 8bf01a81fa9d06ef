// Inpainting: the measurement is the image with some pixels removed, y = m . x.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/operator_checks.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/operators/svd.hpp>

namespace diffpost {

/// Mask policy: one square box of missing pixels. Without a position, the box's top and left corners are
/// drawn uniformly from the integers in [margin, H - size - margin) and [margin, W - size - margin), as the
/// reference (128 x 128 box, margin 16 on 256 x 256 images: top and left in [16, 112)); with `top` and `left`
/// set, the box is placed there.
struct BoxMask {
  TORCH_ARG(int64_t, size) = 128;
  TORCH_ARG(int64_t, margin) = 16;
  TORCH_ARG(std::optional<int64_t>, top) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, left) = std::nullopt;

 public:
  /// The [height, width] float64 mask: 1 = observed, 0 = missing. Draws top then left when they are not
  /// given.
  torch::Tensor make_mask(int64_t height, int64_t width, at::Generator& generator) const {
    TORCH_CHECK(size_ >= 1 && size_ <= height && size_ <= width, "BoxMask: box size ", size_,
                " does not fit an image of ", height, "x", width);
    const auto place = [&](const std::optional<int64_t>& given, int64_t length, const char* name) -> int64_t {
      if (given) {
        TORCH_CHECK(*given >= 0 && *given + size_ <= length, "BoxMask: ", name, " = ", *given,
                    " puts a box of size ", size_, " outside an image of ", height, "x", width);
        return *given;
      }
      const int64_t low = margin_;
      const int64_t high = length - size_ - margin_;  // exclusive, as numpy.random.randint
      TORCH_CHECK(high > low, "BoxMask: no room for a box of size ", size_, " with margin ", margin_,
                  " in an image of ", height, "x", width,
                  " (reduce the size or the margin, or give top and left)");
      return at::randint(low, high, {1}, generator, torch::TensorOptions().dtype(torch::kLong))
          .item<int64_t>();
    };
    const int64_t box_top = place(top_, height, "top");
    const int64_t box_left = place(left_, width, "left");
    auto mask = torch::ones({height, width}, torch::kFloat64);
    mask.slice(0, box_top, box_top + size_).slice(1, box_left, box_left + size_).zero_();
    return mask;
  }
};

/// Mask policy: a random set of missing pixels. The fraction of missing pixels is drawn uniformly from
/// [fraction_low, fraction_high] (the reference: [0.3, 0.7]; the paper's figures: 0.92 fixed), then exactly
/// int(H W fraction) distinct pixels are removed, the same ones in every channel.
struct RandomPixelMask {
  TORCH_ARG(double, fraction_low) = 0.3;
  TORCH_ARG(double, fraction_high) = 0.7;

 public:
  /// A fixed fraction of missing pixels.
  RandomPixelMask& fraction(double missing) {
    fraction_low_ = fraction_high_ = missing;
    return *this;
  }
  /// A fraction of missing pixels drawn uniformly from [low, high] for each mask.
  RandomPixelMask& fraction_range(double low, double high) {
    fraction_low_ = low;
    fraction_high_ = high;
    return *this;
  }

  /// The [height, width] float64 mask: 1 = observed, 0 = missing. Draws the fraction, then a permutation.
  torch::Tensor make_mask(int64_t height, int64_t width, at::Generator& generator) const {
    TORCH_CHECK(0.0 <= fraction_low_ && fraction_low_ <= fraction_high_ && fraction_high_ <= 1.0,
                "RandomPixelMask: need 0 <= fraction_low <= fraction_high <= 1, got [", fraction_low_, ", ",
                fraction_high_, "]");
    const auto draw_options = torch::TensorOptions().dtype(torch::kFloat64);
    const auto u = at::rand({1}, generator, draw_options).item<double>();
    const double missing = fraction_low_ + (fraction_high_ - fraction_low_) * u;
    const int64_t total = height * width;
    const auto count = static_cast<int64_t>(static_cast<double>(total) * missing);
    auto mask = torch::ones({total}, torch::kFloat64);
    const auto dropped =
        at::randperm(total, generator, torch::TensorOptions().dtype(torch::kLong)).slice(0, 0, count);
    mask.index_fill_(0, dropped, 0.0);
    return mask.view({height, width});
  }
};

/// Inpainting with a fixed mask m [H, W] shared by all channels and batch elements: y = m . x (element-wise).
/// Like the reference, the measurement keeps the image shape, with zeros where pixels are missing; a noise
/// model then adds noise to every entry, and in the data-fidelity residual ||y - m . x|| the noise sitting on
/// missing pixels is a constant that does not change the gradient. Masks are usually 0/1 but any real weights
/// work. Linear and self-adjoint (A^T = A); pseudo-inverse y / m where m != 0 (0 elsewhere); naive inverse =
/// zero-filled image m . y. Construct from a policy (BoxMask, RandomPixelMask) or a tensor;
/// inpainting_operator_from_file (diffpost/io/operator_files.hpp) reads the mask from an image file. The mask
/// is converted to each device and dtype it is applied in once, and its SVD once per image size; copies of
/// the operator share these constants (thread-safe).
class InpaintingOperator {
 public:
  /// Uses `mask` ([H, W], [1, H, W] or [1, 1, H, W]; 1 = observed, 0 = missing).
  explicit InpaintingOperator(const torch::Tensor& mask)
      : mask_(mask.detach().to(torch::kCPU, torch::kFloat64)) {
    while (mask_.dim() > 2 && mask_.size(0) == 1) mask_ = mask_.squeeze(0);
    TORCH_CHECK(mask_.dim() == 2,
                "InpaintingOperator: expected a mask [H, W] (or [1, H, W], [1, 1, H, W]), got shape ",
                mask.sizes(), "; the mask is shared by all channels");
    TORCH_CHECK(torch::isfinite(mask_).all().item<bool>(),
                "InpaintingOperator: the mask contains NaN or infinity");
  }

  /// Box mask of a height x width image, drawn from `generator` unless the policy fixes the position.
  InpaintingOperator(const BoxMask& policy, int64_t height, int64_t width, at::Generator& generator)
      : InpaintingOperator(policy.make_mask(height, width, generator)) {}

  /// Random-pixel mask of a height x width image drawn from `generator`.
  InpaintingOperator(const RandomPixelMask& policy, int64_t height, int64_t width, at::Generator& generator)
      : InpaintingOperator(policy.make_mask(height, width, generator)) {}

  /// y = m . x: [B, C, H, W] -> [B, C, H, W], zeros at missing pixels.
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    return x * mask_for(x, "InpaintingOperator::forward");
  }

  /// A^T y = m . y (a diagonal operator is self-adjoint).
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const {
    return y * mask_for(y, "InpaintingOperator::adjoint");
  }

  /// A^+ y = y / m on observed pixels, 0 on missing ones (equal to m . y for a 0/1 mask).
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const {
    const auto m = mask_for(y, "InpaintingOperator::pseudo_inverse");
    const auto observed = m != 0;
    return torch::where(observed, y / torch::where(observed, m, torch::ones_like(m)), torch::zeros_like(y));
  }

  /// The zero-filled image m . y.
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const {
    return y * mask_for(y, "InpaintingOperator::naive_inverse");
  }

  /// The SVD of the diagonal operator for image batches of `image_shape` [B, C, H, W], in `options`' dtype
  /// and device: V = I, singular values |m|, U = diag(+-1) with the signs of m
  /// (DecomposableOperator).
  [[nodiscard]] SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const {
    detail::check_image_shape(image_shape, "InpaintingOperator::svd");
    check_size(image_shape[2], image_shape[3], "InpaintingOperator::svd");
    return svds_->get(detail::svd_key(image_shape, options),
                      [&] { return SeparableSVD::diagonal(mask_, image_shape, options); });
  }

  /// The measurement keeps the image shape.
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "InpaintingOperator::measurement_shape");
    check_size(image_shape[2], image_shape[3], "InpaintingOperator::measurement_shape");
    return image_shape;
  }

  /// The [H, W] float64 CPU mask (1 = observed).
  [[nodiscard]] const torch::Tensor& mask() const { return mask_; }

  /// Device and dtype conversions of the mask made so far, shared by the copies of this operator: one per
  /// device and dtype it was applied in (for tests and diagnostics).
  [[nodiscard]] int64_t constants_built() const { return constants_->builds(); }

 private:
  void check_size(int64_t height, int64_t width, const char* caller) const {
    TORCH_CHECK(height == mask_.size(0) && width == mask_.size(1), caller, ": the image is ", height, "x",
                width, " but the mask is ", mask_.size(0), "x", mask_.size(1),
                " (build the operator for this image size)");
  }
  torch::Tensor mask_for(const torch::Tensor& x, const char* caller) const {
    detail::check_image_batch(x, caller);
    check_size(x.size(2), x.size(3), caller);
    const auto options = detail::constant_options(x);
    return constants_->get({"mask", {}, options}, [&] {
      return mask_.to(options).view({1, 1, mask_.size(0), mask_.size(1)});
    });
  }

  torch::Tensor mask_;
  detail::TensorCache constants_ = detail::make_tensor_cache();
  detail::SVDCache svds_ = detail::make_svd_cache();
};

static_assert(PseudoInvertibleOperator<InpaintingOperator> && HasNaiveInverse<InpaintingOperator>);
static_assert(DecomposableOperator<InpaintingOperator>);

}  // namespace diffpost
