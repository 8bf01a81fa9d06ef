// Private to diffpost: not part of the public API, may change without notice.
//
// 1-D resampling matrices in the convention of MATLAB `imresize` (and of the reference's resizer by A.
// Shocher): pixel centres sit at half-integer positions, the kernel is widened by 1/scale when antialiasing a
// downscale, each output row of weights is normalised to sum to one, and taps that fall outside the signal
// are mirrored with edge repetition ("symmetric" boundary). Separable image resizing is then R_h X R_w^T, and
// its exact adjoint is R_h^T Y R_w.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

namespace diffpost::detail {

/// Interpolation kernels understood by `resize_matrix`.
enum class ResampleKernel {
  Cubic,     ///< Keys cubic convolution with a = -0.5, support [-2, 2] (MATLAB "bicubic")
  Lanczos3,  ///< sinc(x) sinc(x/3), support [-3, 3] (what PIL's LANCZOS filter uses)
};

/// Keys' cubic convolution kernel with a = -0.5 (Keys 1981, eq. 15), as in MATLAB imresize.
inline double cubic_kernel(double x) {
  const double ax = std::abs(x);
  const double ax2 = ax * ax;
  const double ax3 = ax2 * ax;
  if (ax <= 1.0) return 1.5 * ax3 - 2.5 * ax2 + 1.0;
  if (ax <= 2.0) return -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0;
  return 0.0;
}

/// Lanczos kernel with three lobes, sinc(x) sinc(x / 3) on |x| < 3.
inline double lanczos3_kernel(double x) {
  const double ax = std::abs(x);
  if (ax >= 3.0) return 0.0;
  if (ax < 1e-12) return 1.0;
  const double pi_x = M_PI * x;
  return 3.0 * std::sin(pi_x) * std::sin(pi_x / 3.0) / (pi_x * pi_x);
}

/// Support width (in output-sampling units) of a kernel: 4 for cubic, 6 for Lanczos-3.
inline double kernel_width(ResampleKernel kernel) {
  return kernel == ResampleKernel::Cubic ? 4.0 : 6.0;
}

inline double evaluate_kernel(ResampleKernel kernel, double x) {
  return kernel == ResampleKernel::Cubic ? cubic_kernel(x) : lanczos3_kernel(x);
}

/// Index of the sample that position `index` (possibly outside [0, length)) reads under the symmetric
/// boundary of imresize: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
inline int64_t symmetric_index(int64_t index, int64_t length) {
  const int64_t period = 2 * length;
  int64_t m = index % period;
  if (m < 0) m += period;
  return m < length ? m : period - 1 - m;
}

/// Dense [out_length, in_length] float64 CPU matrix that resamples a 1-D signal of `in_length` samples to
/// `out_length` samples with scale factor `scale` (= out / in, < 1 to shrink). Output sample k (1-based)
/// is centred at input position k / scale + (1 - 1 / scale) / 2 (1-based), shifted so the image centre is
/// kept when out_length != in_length * scale. With `antialias` and scale < 1 the kernel is stretched to scale
/// * h(scale * x), width kernel_width / scale, which is what makes imresize low-pass before decimating.
inline torch::Tensor resize_matrix(int64_t in_length, int64_t out_length, double scale, ResampleKernel kernel,
                                   bool antialias = true) {
  TORCH_CHECK(in_length > 0 && out_length > 0, "resize_matrix: lengths must be positive, got in ", in_length,
              " and out ", out_length);
  TORCH_CHECK(scale > 0.0, "resize_matrix: scale must be positive, got ", scale);
  const bool stretch = antialias && scale < 1.0;
  const double width = stretch ? kernel_width(kernel) / scale : kernel_width(kernel);
  auto matrix = torch::zeros({out_length, in_length}, torch::kFloat64);
  auto m = matrix.accessor<double, 2>();
  const double centre_shift =
      (static_cast<double>(out_length) - static_cast<double>(in_length) * scale) / 2.0;
  for (int64_t k = 1; k <= out_length; ++k) {
    const double match = (static_cast<double>(k) - centre_shift) / scale + 0.5 * (1.0 - 1.0 / scale);
    const auto first = static_cast<int64_t>(std::floor(match - width / 2.0)) - 1;
    const auto last = static_cast<int64_t>(std::ceil(match + width / 2.0)) + 1;
    double total = 0.0;
    for (int64_t p = first; p <= last; ++p) {  // p: 1-based input position
      const double distance = match - static_cast<double>(p);
      total +=
          stretch ? scale * evaluate_kernel(kernel, scale * distance) : evaluate_kernel(kernel, distance);
    }
    if (total == 0.0) total = 1.0;
    for (int64_t p = first; p <= last; ++p) {
      const double distance = match - static_cast<double>(p);
      const double weight =
          stretch ? scale * evaluate_kernel(kernel, scale * distance) : evaluate_kernel(kernel, distance);
      if (weight != 0.0) m[k - 1][symmetric_index(p - 1, in_length)] += weight / total;
    }
  }
  return matrix;
}

/// Dense [in_length / factor, in_length] float64 CPU matrix averaging consecutive blocks of `factor` samples.
inline torch::Tensor block_average_matrix(int64_t in_length, int64_t factor) {
  TORCH_CHECK(factor > 0 && in_length % factor == 0, "block_average_matrix: length ", in_length,
              " is not a multiple of the factor ", factor);
  const int64_t out_length = in_length / factor;
  auto matrix = torch::zeros({out_length, in_length}, torch::kFloat64);
  auto m = matrix.accessor<double, 2>();
  for (int64_t k = 0; k < out_length; ++k) {
    for (int64_t j = 0; j < factor; ++j) m[k][k * factor + j] = 1.0 / static_cast<double>(factor);
  }
  return matrix;
}

/// Applies the separable map X -> R_h X R_w^T to the last two dimensions of a batch, with the matrices cast
/// to the batch's dtype and device.
inline torch::Tensor apply_separable(const torch::Tensor& rows, const torch::Tensor& cols,
                                     const torch::Tensor& x) {
  const auto r = rows.to(x.options());
  const auto c = cols.to(x.options());
  return torch::matmul(torch::matmul(r, x), c.transpose(0, 1));
}

}  // namespace diffpost::detail
