// Private to diffpost: not part of the public API, may change without notice.
//
// Random camera-shake blur kernels, following the recipe of the generator the DPS reference uses
// (LeviBorodenko/motionblur, itself after Boracchi and Foi's random-trajectory model): a random walk is drawn
// on a canvas twice the kernel size, rasterised as a thin line, smoothed with a small Gaussian, shrunk by two
// with an antialiased Lanczos-3 filter, clipped to non-negative values and normalised to sum one. Every
// random number comes from an explicit at::Generator, so a seed fixes the kernel.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <vector>

#include <diffpost/detail/resampling.hpp>

namespace diffpost::detail {

/// Uniform [0, 1) doubles drawn from a generator in blocks (one tensor draw per block, not per number).
class UniformStream {
 public:
  explicit UniformStream(at::Generator& generator) : generator_(generator) {}

  double next() {
    if (position_ == buffer_.size()) refill();
    return buffer_[position_++];
  }
  double uniform(double low, double high) { return low + (high - low) * next(); }
  /// Beta(1, b) by inversion of its CDF 1 - (1 - x)^b.
  double beta_1_b(double b) { return 1.0 - std::pow(1.0 - next(), 1.0 / b); }
  /// Beta(a, b) for integer a, b as G_a / (G_a + G_b), with G_n = -sum log U a Gamma(n, 1) variate.
  double beta_integer(int a, int b) {
    const double ga = gamma_integer(a);
    const double gb = gamma_integer(b);
    return ga / (ga + gb);
  }
  /// Triangular(low, mode, high) by inversion of its CDF.
  double triangular(double low, double mode, double high) {
    const double u = next();
    const double split = (mode - low) / (high - low);
    if (u < split) return low + std::sqrt(u * (high - low) * (mode - low));
    return high - std::sqrt((1.0 - u) * (high - low) * (high - mode));
  }

 private:
  double gamma_integer(int shape) {
    double sum = 0.0;
    for (int i = 0; i < shape; ++i) sum -= std::log(1.0 - next());  // 1 - U is in (0, 1]
    return sum;
  }
  void refill() {
    auto block =
        at::rand({256}, generator_, torch::TensorOptions().dtype(torch::kFloat64).device(generator_.device()))
            .to(torch::kCPU);
    buffer_.assign(block.data_ptr<double>(), block.data_ptr<double>() + block.numel());
    position_ = 0;
  }

  at::Generator& generator_;
  std::vector<double> buffer_;
  std::size_t position_ = 0;
};

/// Normalised 1-D Gaussian weights exp(-d^2 / (2 sigma^2)) at integer offsets d in [-half, half], truncated
/// at radius int(4 sigma + 0.5) like scipy.ndimage.gaussian_filter, float64.
inline torch::Tensor gaussian_weights_1d(int64_t half, double sigma) {
  // NOLINTNEXTLINE(bugprone-incorrect-roundings): scipy's int(4 sigma + 0.5); std::lround can differ by one
  const auto radius = static_cast<int64_t>(4.0 * sigma + 0.5);
  auto weights = torch::zeros({2 * half + 1}, torch::kFloat64);
  auto w = weights.accessor<double, 1>();
  for (int64_t d = -half; d <= half; ++d) {
    if (std::abs(d) <= radius) w[d + half] = std::exp(-static_cast<double>(d * d) / (2.0 * sigma * sigma));
  }
  return weights / weights.sum();
}

/// Random camera trajectory on a canvas of `canvas` x `canvas` pixels (coordinates in pixel units, pixel i
/// spans [i, i + 1)), centred on the canvas by its centre of mass. `intensity` in [0, 1]: 0 gives a nearly
/// straight short path, 1 a long, curved, jittery one.
inline std::vector<std::complex<double>> random_camera_path(int64_t canvas, double intensity,
                                                            UniformStream& draw) {
  constexpr double kEps = 0.1;  // keeps step lengths and angles away from zero, as the reference generator
  const double diagonal = std::sqrt(2.0) * static_cast<double>(canvas);
  // Path length: 0.75 * diagonal * (U(0,1) + U(0, intensity^2)); steps: Beta(1, 30) * (1 - intensity + eps) *
  // diagonal.
  const double max_length = 0.75 * diagonal * (draw.next() + draw.uniform(0.0, intensity * intensity));
  std::vector<double> steps;
  double travelled = 0.0;
  while (travelled < max_length) {
    const double step = draw.beta_1_b(30.0) * (1.0 - intensity + kEps) * diagonal;
    if (step < max_length) {
      steps.push_back(step);
      travelled += step;
    }
  }
  // Angles: the first U(-a, a) with a ~ U(0, intensity * pi); the others Triangular(0, intensity * a, a +
  // eps) in absolute value, changing sign with a probability ("jitter") drawn from Beta(2, 20).
  const double max_angle = draw.uniform(0.0, intensity * M_PI);
  const double jitter = draw.beta_integer(2, 20);
  std::vector<double> angles{draw.uniform(-max_angle, max_angle)};
  while (angles.size() < steps.size()) {
    double angle = draw.triangular(0.0, intensity * max_angle, max_angle + kEps);
    const double previous_sign = (angles.back() > 0.0) - (angles.back() < 0.0);
    angle *= draw.next() < jitter ? -previous_sign : previous_sign;
    angles.push_back(angle);
  }
  std::vector<std::complex<double>> path;
  std::complex<double> position{0.0, 0.0};
  std::complex<double> centre_of_mass{0.0, 0.0};
  for (std::size_t i = 0; i < steps.size(); ++i) {
    position += std::polar(steps[i], angles[i]);
    path.push_back(position);
    centre_of_mass += position;
  }
  centre_of_mass /= static_cast<double>(path.size());
  const auto rotation = std::polar(1.0, draw.uniform(0.0, M_PI));
  const std::complex<double> canvas_centre{static_cast<double>(canvas) / 2.0,
                                           static_cast<double>(canvas) / 2.0};
  for (auto& point : path) point = (point - centre_of_mass) * rotation + canvas_centre;
  return path;
}

/// Rasterises a polyline on a canvas x canvas float64 image: a pixel is lit when its centre lies within
/// `half_width` of the path (real part = column, imaginary part = row). Each segment only visits the pixels
/// of its bounding box.
inline torch::Tensor rasterise_path(const std::vector<std::complex<double>>& path, int64_t canvas,
                                    double half_width) {
  auto image = torch::zeros({canvas, canvas}, torch::kFloat64);
  auto pixel = image.accessor<double, 2>();
  const auto clamp_index = [&](double v) {
    return std::clamp<int64_t>(static_cast<int64_t>(v), 0, canvas - 1);
  };
  for (std::size_t i = 0; i < path.size(); ++i) {
    const auto a = path[i];
    const auto b = i + 1 < path.size() ? path[i + 1] : path[i];  // a lone point is drawn as a dot
    const auto direction = b - a;
    const double length2 = std::max(std::norm(direction), 1e-12);
    const int64_t col_first = clamp_index(std::floor(std::min(a.real(), b.real()) - half_width - 1.0));
    const int64_t col_last = clamp_index(std::ceil(std::max(a.real(), b.real()) + half_width + 1.0));
    const int64_t row_first = clamp_index(std::floor(std::min(a.imag(), b.imag()) - half_width - 1.0));
    const int64_t row_last = clamp_index(std::ceil(std::max(a.imag(), b.imag()) + half_width + 1.0));
    for (int64_t row = row_first; row <= row_last; ++row) {
      for (int64_t col = col_first; col <= col_last; ++col) {
        const std::complex<double> centre{static_cast<double>(col) + 0.5, static_cast<double>(row) + 0.5};
        const auto relative = centre - a;
        const double t = std::clamp(
            (relative.real() * direction.real() + relative.imag() * direction.imag()) / length2, 0.0, 1.0);
        if (std::abs(relative - t * direction) <= half_width) pixel[row][col] = 1.0;
      }
    }
    if (path.size() > 1 && i + 2 == path.size()) break;  // the last point ends the last segment
  }
  return image;
}

/// A size x size motion-blur kernel (float64, non-negative, sum one) drawn from `generator`.
inline torch::Tensor random_motion_kernel(int64_t size, double intensity, at::Generator& generator) {
  UniformStream draw(generator);
  const int64_t canvas = 2 * size;  // drawn at twice the size, then shrunk, for antialiasing
  const double diagonal = std::sqrt(2.0) * static_cast<double>(canvas);
  const auto path = random_camera_path(canvas, intensity, draw);
  const double line_width = std::max(1.0, std::floor(diagonal / 150.0));
  auto image = rasterise_path(path, canvas, line_width / 2.0);
  // "Gaussian blur for realism" with sigma = int(0.01 * diagonal), as the reference generator.
  const double blur_sigma = std::floor(0.01 * diagonal);
  if (blur_sigma >= 1.0) {
    // NOLINTNEXTLINE(bugprone-incorrect-roundings): int(4 sigma + 0.5), as in gaussian_weights_1d
    const auto radius = static_cast<int64_t>(4.0 * blur_sigma + 0.5);
    const auto g = gaussian_weights_1d(radius, blur_sigma);
    auto batch = image.view({1, 1, canvas, canvas});
    batch = torch::conv2d(batch, g.view({1, 1, -1, 1}), torch::Tensor{}, 1, std::vector<int64_t>{radius, 0});
    batch = torch::conv2d(batch, g.view({1, 1, 1, -1}), torch::Tensor{}, 1, std::vector<int64_t>{0, radius});
    image = batch.view({canvas, canvas});
  }
  const auto shrink = resize_matrix(canvas, size, 0.5, ResampleKernel::Lanczos3, /*antialias=*/true);
  auto kernel = torch::matmul(torch::matmul(shrink, image), shrink.transpose(0, 1)).clamp_min(0.0);
  const auto total = kernel.sum().item<double>();
  if (total <= 0.0) {  // a path that left the canvas entirely: fall back to no blur
    kernel.zero_();
    kernel[size / 2][size / 2] = 1.0;
    return kernel;
  }
  return kernel / total;
}

}  // namespace diffpost::detail
