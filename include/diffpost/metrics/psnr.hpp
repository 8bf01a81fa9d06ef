// Peak signal-to-noise ratio between an image and its reference, per image.
#pragma once

#include <torch/torch.h>

#include <diffpost/detail/metric_checks.hpp>

namespace diffpost {

/// PSNR in dB of each image of `image` against `reference`, both [B, C, H, W] (or one image [C, H, W]) in
/// the [-1, 1] convention of diffpost. Computed on the [0, 1] scale with data range 1, the convention of
/// published PSNR figures and of skimage's `peak_signal_noise_ratio(ref, img, data_range=1)`:
///   PSNR = 10 log10(1 / MSE),  MSE = mean over C, H, W of ((image - reference) / 2)^2,
/// since u = (x + 1) / 2 maps [-1, 1] onto [0, 1] and halves every difference. Values are not clamped: clamp
/// reconstructions to [-1, 1] first if they should be scored as they are saved. Identical images give +inf.
/// Returns float64 [B] on the inputs' device; computed in float64.
inline torch::Tensor psnr(const torch::Tensor& image, const torch::Tensor& reference) {
  const auto [x, y] = detail::metric_inputs(image, reference, "psnr");
  const auto squared_error = ((x - y) / 2.0).square();
  const auto mse = squared_error.reshape({x.size(0), -1}).mean(1);
  return -10.0 * torch::log10(mse);
}

}  // namespace diffpost
