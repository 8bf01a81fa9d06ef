// Blur: the measurement is the image correlated with a point-spread function, y = k * x.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/motion_kernel.hpp>
#include <diffpost/detail/operator_checks.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/operators/svd.hpp>

namespace diffpost {

/// Kernel policy: an isotropic Gaussian point-spread function, size x size, standard deviation `sigma`
/// pixels. The reference's Gaussian deblurring task uses 61 x 61 with sigma 3.0 (built there with
/// scipy.ndimage.gaussian_filter on a delta). Closed form: K[i][j] = g(i) g(j), g(d) proportional to
/// exp(-d^2 / (2 sigma^2)) for |d| <= min(size / 2, int(4 sigma + 0.5)) and 0 beyond, each g summing to one.
struct Gaussian {
  TORCH_ARG(int64_t, size) = 61;
  TORCH_ARG(double, sigma) = 3.0;

 public:
  /// The size x size float64 kernel.
  [[nodiscard]] torch::Tensor make_kernel() const {
    const auto [rows, cols] = make_factors();
    return torch::outer(rows, cols);
  }

  /// The 1-D float64 factors g of the separable kernel g g^T, for rows and for columns.
  [[nodiscard]] std::pair<torch::Tensor, torch::Tensor> make_factors() const {
    TORCH_CHECK(size_ >= 1 && size_ % 2 == 1, "Gaussian: kernel size must be a positive odd number, got ",
                size_);
    TORCH_CHECK(sigma_ > 0.0, "Gaussian: sigma must be positive, got ", sigma_);
    auto g = detail::gaussian_weights_1d(size_ / 2, sigma_);
    return {g, g};
  }
};

/// Kernel policy: a random camera-shake point-spread function, size x size, drawn from a seeded generator.
/// `intensity` in [0, 1] sets how long and curved the camera path is (the reference uses 61 x 61 and 0.5).
/// The recipe is that of the generator the reference uses (LeviBorodenko/motionblur): a random walk on a
/// canvas twice the size, drawn as a thin line, smoothed, shrunk by two, normalised. The kernel is
/// non-negative and sums to one; the same generator state gives the same kernel.
struct Motion {
  TORCH_ARG(int64_t, size) = 61;
  TORCH_ARG(double, intensity) = 0.5;

 public:
  /// The size x size float64 kernel, drawn from `generator`.
  torch::Tensor make_kernel(at::Generator& generator) const {
    TORCH_CHECK(size_ >= 3 && size_ % 2 == 1, "Motion: kernel size must be an odd number >= 3, got ", size_);
    TORCH_CHECK(intensity_ >= 0.0 && intensity_ <= 1.0, "Motion: intensity must lie in [0, 1], got ",
                intensity_);
    return detail::random_motion_kernel(size_, intensity_, generator);
  }
};

/// Kernel policy: a kernel given by the user as a tensor ([kh, kw] or [1, 1, kh, kw], odd sizes, used as
/// given); blur_kernel_from_file (diffpost/io/operator_files.hpp) reads one from an image file.
class Custom {
 public:
  /// Uses `kernel` as is (it is not normalised): [kh, kw] or [1, 1, kh, kw], odd kh and kw.
  explicit Custom(const torch::Tensor& kernel) : kernel_(kernel.detach().to(torch::kCPU, torch::kFloat64)) {
    if (kernel_.dim() == 4 && kernel_.size(0) == 1 && kernel_.size(1) == 1)
      kernel_ = kernel_.squeeze(0).squeeze(0);
    TORCH_CHECK(kernel_.dim() == 2, "Custom: expected a kernel of shape [kh, kw] or [1, 1, kh, kw], got ",
                kernel.sizes());
    TORCH_CHECK(kernel_.size(0) % 2 == 1 && kernel_.size(1) % 2 == 1,
                "Custom: kernel sizes must be odd so that the blur keeps the image centred, got ",
                kernel_.sizes());
    TORCH_CHECK(torch::isfinite(kernel_).all().item<bool>(),
                "Custom: the kernel contains NaN or infinite values");
  }

  [[nodiscard]] torch::Tensor make_kernel() const { return kernel_; }

 private:
  torch::Tensor kernel_;
};

/// A kernel policy whose kernel is fixed by its parameters (Gaussian, Custom).
template <class K>
concept DeterministicBlurKernel = requires(const K& policy) {
  { policy.make_kernel() } -> std::same_as<torch::Tensor>;
};

/// A kernel policy whose kernel is separable, the outer product of the two 1-D factors `make_factors()`
/// returns (Gaussian); the blur then has an SVD built from two 1-D ones.
template <class K>
concept SeparableBlurKernel = DeterministicBlurKernel<K> && requires(const K& policy) {
  { policy.make_factors() } -> std::same_as<std::pair<torch::Tensor, torch::Tensor>>;
};

/// A kernel policy whose kernel is drawn from a generator (Motion).
template <class K>
concept RandomBlurKernel = requires(const K& policy, at::Generator& generator) {
  { policy.make_kernel(generator) } -> std::same_as<torch::Tensor>;
};

/// Blurring with a fixed point-spread function chosen by the `Kernel` policy (Gaussian, Motion, Custom or
/// your own type with `make_kernel()` or `make_kernel(generator)`). As in the reference, every channel is
/// reflect-padded by half the kernel size ("reflect": d c b | a b c d | c b a, extended periodically when the
/// pad exceeds the image) and cross-correlated with the same kernel, so y has the image's shape. Linear, with
/// the exact adjoint: the transposed correlation followed by the adjoint of the padding, which folds the
/// padded border back onto the pixels it copied. The naive inverse is the blurred image itself. The kernel's
/// spectrum and the padding indices are built once per image size, device and dtype and then reused; copies
/// of the operator share them (thread-safe).
template <class Kernel>
class BlurOperator {
 public:
  /// Builds the kernel of a deterministic policy (Gaussian{}.size(61).sigma(3.0), Custom(tensor)).
  explicit BlurOperator(Kernel policy = Kernel{}) requires DeterministicBlurKernel<Kernel>
      : policy_(std::move(policy)), kernel_(policy_.make_kernel()) {}

  /// Draws the kernel of a random policy (Motion{}.size(61).intensity(0.5)) from `generator`.
  BlurOperator(Kernel policy, at::Generator& generator) requires RandomBlurKernel<Kernel>
      : policy_(std::move(policy)), kernel_(policy_.make_kernel(generator)) {}

  /// y = k (*) pad(x): [B, C, H, W] -> [B, C, H, W].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    detail::check_image_batch(x, "BlurOperator::forward");
    const auto h = x.size(2), w = x.size(3);
    const auto padded =
        x.index_select(2, padding_indices(h, pad_h(), x)).index_select(3, padding_indices(w, pad_w(), x));
    // Valid cross-correlation through the FFT: on the padded grid, circular correlation (X conj(K) in the
    // Fourier domain) equals the linear one at the H x W valid positions, since they never wrap around.
    const auto spectrum = torch::fft::rfft2(padded) * kernel_spectrum(padded).conj();
    const auto correlated = torch::fft::irfft2(spectrum, padded_size(h, w));
    return correlated.slice(2, 0, h).slice(3, 0, w);
  }

  /// Exact adjoint: the transposed correlation (a full convolution onto the padded grid), then the border of
  /// the padded result added back onto the pixels the reflect padding read it from (index_add, the adjoint of
  /// index_select).
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const {
    detail::check_image_batch(y, "BlurOperator::adjoint");
    const auto h = y.size(2), w = y.size(3);
    const auto size = padded_size(h, w);
    // Full convolution via the FFT: y zero-padded to the padded grid cannot wrap around either.
    const auto y_padded = torch::constant_pad_nd(y, {0, 2 * pad_w(), 0, 2 * pad_h()}, 0.0);
    const auto spread = torch::fft::irfft2(torch::fft::rfft2(y_padded) * kernel_spectrum(y_padded), size);
    const auto rows = torch::zeros({y.size(0), y.size(1), h, w + 2 * pad_w()}, y.options())
                          .index_add(2, padding_indices(h, pad_h(), y), spread);
    return torch::zeros_like(y).index_add(3, padding_indices(w, pad_w(), y), rows);
  }

  /// The blurred measurement itself: the image a user has without deblurring.
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "BlurOperator::naive_inverse");
    return y;
  }

  /// The SVD of the blur for image batches of `image_shape` [B, C, H, W], in `options`' dtype and device,
  /// when the kernel is separable (SeparableBlurKernel: Gaussian): reflect padding and correlation then act
  /// on rows and columns separately, A x = B_h x B_w^T, and the SVD is built from those of the two 1-D
  /// matrices (DecomposableOperator).
  [[nodiscard]] SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const requires
      SeparableBlurKernel<Kernel> {
    detail::check_image_shape(image_shape, "BlurOperator::svd");
    return svds_->get(detail::svd_key(image_shape, options), [&] {
      const auto [rows, cols] = policy_.make_factors();
      return SeparableSVD::from_factors(
          {torch::Tensor{}, blur_matrix(rows, image_shape[2]), blur_matrix(cols, image_shape[3])},
          image_shape, options);
    });
  }

  /// The [length, length] float64 matrix of one axis of a separable blur: reflect padding by half the taps,
  /// then valid correlation with the 1-D `taps` (odd length).
  static torch::Tensor blur_matrix(const torch::Tensor& taps, int64_t length) {
    const auto weights = taps.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    const int64_t count = weights.size(0);
    const auto sources = pad_indices(length, count / 2, torch::kCPU);
    auto matrix = torch::zeros({length, length}, torch::kFloat64);
    auto m = matrix.accessor<double, 2>();
    const auto w = weights.accessor<double, 1>();
    const auto source = sources.accessor<int64_t, 1>();
    for (int64_t i = 0; i < length; ++i)
      for (int64_t k = 0; k < count; ++k) m[i][source[i + k]] += w[k];
    return matrix;
  }

  /// Blurring keeps the shape.
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "BlurOperator::measurement_shape");
    return image_shape;
  }

  /// The [kh, kw] float64 CPU kernel, e.g. to save it or to reuse a drawn motion kernel with Custom.
  [[nodiscard]] const torch::Tensor& kernel() const { return kernel_; }
  [[nodiscard]] const Kernel& policy() const { return policy_; }

  /// Spectra and index tables built so far (one per size, device and dtype), shared by the copies of this
  /// operator; for tests and diagnostics.
  [[nodiscard]] int64_t constants_built() const { return constants_->builds(); }

 private:
  [[nodiscard]] std::vector<int64_t> padded_size(int64_t h, int64_t w) const {
    return {h + 2 * pad_h(), w + 2 * pad_w()};
  }

  /// rfft2 of the kernel zero-padded to the size of `grid`'s last two dimensions, in `grid`'s dtype and
  /// device; computed there (so that it is the spectrum a per-call transform would give) once per size.
  [[nodiscard]] torch::Tensor kernel_spectrum(const torch::Tensor& grid) const {
    const auto options = detail::constant_options(grid);
    return constants_->get({"spectrum", {grid.size(2), grid.size(3)}, options}, [&] {
      return torch::fft::rfft2(kernel_.to(options), std::vector<int64_t>{grid.size(2), grid.size(3)});
    });
  }

  /// `pad_indices(length, pad)` on `like`'s device, cached.
  [[nodiscard]] torch::Tensor padding_indices(int64_t length, int64_t pad, const torch::Tensor& like) const {
    const auto options = torch::TensorOptions().device(like.device()).dtype(torch::kLong);
    return constants_->get({"pad", {length, pad}, options},
                           [&] { return pad_indices(length, pad, like.device()); });
  }

  [[nodiscard]] int64_t pad_h() const { return kernel_.size(0) / 2; }
  [[nodiscard]] int64_t pad_w() const { return kernel_.size(1) / 2; }

  /// Source index of every position of a reflect-padded axis (length + 2 pad entries).
  static torch::Tensor pad_indices(int64_t length, int64_t pad, const torch::Device& device) {
    auto indices = torch::empty({length + 2 * pad}, torch::kLong);
    auto idx = indices.accessor<int64_t, 1>();
    const int64_t period = 2 * (length - 1);
    for (int64_t i = -pad; i < length + pad; ++i) {
      int64_t source = 0;
      if (period > 0) {
        source = i % period;
        if (source < 0) source += period;
        if (source >= length) source = period - source;
      }
      idx[i + pad] = source;
    }
    return indices.to(device);
  }

  Kernel policy_;
  torch::Tensor kernel_;
  detail::TensorCache constants_ = detail::make_tensor_cache();
  detail::SVDCache svds_ = detail::make_svd_cache();
};

static_assert(LinearOperator<BlurOperator<Gaussian>> && HasNaiveInverse<BlurOperator<Gaussian>>);
static_assert(LinearOperator<BlurOperator<Motion>> && LinearOperator<BlurOperator<Custom>>);
static_assert(DecomposableOperator<BlurOperator<Gaussian>> && !DecomposableOperator<BlurOperator<Motion>>);

}  // namespace diffpost
