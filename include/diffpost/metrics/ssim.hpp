// Structural similarity (SSIM) between an image and its reference, per image (Wang, Bovik, Sheikh &
// Simoncelli, "Image quality assessment: from error visibility to structural similarity", IEEE TIP 2004).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

#include <diffpost/detail/metric_checks.hpp>

namespace diffpost {

/// Parameters of `ssim`. The defaults are those of Wang et al. 2004: an 11 x 11 Gaussian window with standard
/// deviation 1.5 pixels, K1 = 0.01, K2 = 0.03.
struct SSIMOptions {
  TORCH_ARG(int64_t, window_size) = 11;  ///< odd side of the Gaussian window
  TORCH_ARG(double, sigma) = 1.5;        ///< standard deviation of the window, pixels
  TORCH_ARG(double, k1) = 0.01;          ///< C1 = (K1 L)^2 with data range L = 1
  TORCH_ARG(double, k2) = 0.03;          ///< C2 = (K2 L)^2
};

/// Mean SSIM of each image of `image` against `reference`, both [B, C, H, W] (or one image [C, H, W]) in
/// [-1, 1], computed on the [0, 1] scale with data range L = 1 (u = (x + 1) / 2). The local statistics mu,
/// sigma^2 and sigma_xy are weighted by a normalised Gaussian window (Wang et al. 2004, eq. 14-16), the SSIM
/// map is
///   SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
/// (eq. 13) with biased (population) moments, evaluated only where the window lies inside the image ("valid",
/// as Wang's MATLAB ssim.m), averaged over those positions and then over the channels. This is exactly
/// skimage's `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
/// data_range=1)`, whose reflect-padded map is cropped by half a window before averaging. Images must be at
/// least window_size pixels high and wide. Returns float64 [B] on the inputs' device; identical images
/// give 1.
inline torch::Tensor ssim(const torch::Tensor& image, const torch::Tensor& reference,
                          const SSIMOptions& options = {}) {
  const auto [x_in, y_in] = detail::metric_inputs(image, reference, "ssim");
  const int64_t window = options.window_size();
  TORCH_CHECK(window >= 1 && window % 2 == 1, "ssim: window_size must be a positive odd number, got ",
              window);
  TORCH_CHECK(options.sigma() > 0.0, "ssim: sigma must be positive, got ", options.sigma());
  const int64_t batch = x_in.size(0), channels = x_in.size(1), height = x_in.size(2), width = x_in.size(3);
  TORCH_CHECK(height >= window && width >= window, "ssim: images of ", height, "x", width,
              " are smaller than the ", window, "x", window,
              " window; use a smaller SSIMOptions::window_size or larger images");
  const auto x = ((x_in + 1.0) / 2.0).reshape({batch * channels, 1, height, width});
  const auto y = ((y_in + 1.0) / 2.0).reshape({batch * channels, 1, height, width});

  // Separable normalised Gaussian g(d) ~ exp(-d^2 / (2 sigma^2)), d = -r ... r.
  const auto offsets = torch::arange(-(window / 2), window / 2 + 1, x.options());
  auto g = torch::exp(-offsets.square() / (2.0 * options.sigma() * options.sigma()));
  g = g / g.sum();
  const auto rows = g.view({1, 1, window, 1});
  const auto cols = g.view({1, 1, 1, window});
  const auto local_mean = [&](const torch::Tensor& t) { return torch::conv2d(torch::conv2d(t, rows), cols); };

  const auto mu_x = local_mean(x), mu_y = local_mean(y);
  const auto var_x = local_mean(x * x) - mu_x * mu_x;
  const auto var_y = local_mean(y * y) - mu_y * mu_y;
  const auto cov_xy = local_mean(x * y) - mu_x * mu_y;
  const double c1 = options.k1() * options.k1();
  const double c2 = options.k2() * options.k2();
  const auto map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)) /
                   ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2));
  // The mean over positions then channels equals the mean over both, since every channel has the same count.
  return map.reshape({batch, -1}).mean(1);
}

}  // namespace diffpost
