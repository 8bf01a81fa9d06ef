// Fourier phase retrieval: the measurement is the magnitude of the oversampled Fourier transform.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/operator_checks.hpp>

namespace diffpost {

/// Fourier phase retrieval, y = |F pad(x)| per channel, as the reference: the image is zero-padded by
/// int(oversample / 8 * H) rows above and below and int(oversample / 8 * W) columns left and right (64 for a
/// 256 x 256 image and oversample 2.0), then y = |fftshift(fft2(ifftshift(x_pad), norm = "ortho"))|. The
/// orthonormal transform keeps energy (Parseval: |y|^2 = |x|^2). Not linear, so no adjoint: it satisfies
/// ForwardOperator only. The magnitude cannot tell x from -x or from its flipped, shifted copies, which is
/// what makes the problem hard. The output is real with the input's dtype.
class PhaseRetrievalOperator {
 public:
  /// `oversample` >= 0 (the reference uses 2.0).
  explicit PhaseRetrievalOperator(double oversample = 2.0) : oversample_(oversample) {
    TORCH_CHECK(oversample >= 0.0, "PhaseRetrievalOperator: oversample must be >= 0, got ", oversample);
  }

  /// |F pad(x)|: [B, C, H, W] -> [B, C, H + 2 pad_h, W + 2 pad_w].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    detail::check_image_batch(x, "PhaseRetrievalOperator::forward");
    const auto ph = padding(x.size(2)), pw = padding(x.size(3));
    const auto padded = torch::constant_pad_nd(x, {pw, pw, ph, ph}, 0.0);
    const auto centred = torch::fft::ifftshift(padded, std::vector<int64_t>{-2, -1});
    const auto spectrum = torch::fft::fft2(centred, c10::nullopt, {-2, -1}, "ortho");
    return torch::fft::fftshift(spectrum, std::vector<int64_t>{-2, -1}).abs();
  }

  /// [B, C, H, W] -> [B, C, H + 2 pad_h, W + 2 pad_w].
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "PhaseRetrievalOperator::measurement_shape");
    return {image_shape[0], image_shape[1], image_shape[2] + 2 * padding(image_shape[2]),
            image_shape[3] + 2 * padding(image_shape[3])};
  }

  /// Zero padding added on each side of an axis of `length` pixels: int(oversample / 8 * length).
  [[nodiscard]] int64_t padding(int64_t length) const {
    return static_cast<int64_t>(oversample_ / 8.0 * static_cast<double>(length));
  }

  [[nodiscard]] double oversample() const { return oversample_; }

 private:
  double oversample_;
};

static_assert(ForwardOperator<PhaseRetrievalOperator> && !LinearOperator<PhaseRetrievalOperator>);

}  // namespace diffpost
