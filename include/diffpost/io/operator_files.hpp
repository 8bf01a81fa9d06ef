// Operators whose parts come from image files: inpainting masks and blur kernels. The file reading lives
// here, in io/, so that the operator headers need only LibTorch.
#pragma once

#include <diffpost/io/image.hpp>
#include <diffpost/operators/blur.hpp>
#include <diffpost/operators/inpainting.hpp>

#include <torch/torch.h>

#include <string>

namespace diffpost {

/// The inpainting operator of a mask image: gray level > 0.5 (white) = observed, otherwise (black) = missing.
inline InpaintingOperator inpainting_operator_from_file(const std::string& path) {
  const auto gray = load_image(path, 1).squeeze(0).squeeze(0);
  return InpaintingOperator((gray > 0.0).to(torch::kFloat64));
}

/// The kernel policy of a kernel image (PNG, JPEG, ... as load_image reads them), converted to gray and
/// normalised to sum one, since pixel values are intensities.
inline Custom blur_kernel_from_file(const std::string& path) {
  const auto pixels = (load_image(path, 1).squeeze(0).squeeze(0).to(torch::kFloat64) + 1.0) / 2.0;
  const auto total = pixels.sum().item<double>();
  TORCH_CHECK(total > 0.0, "blur_kernel_from_file: kernel image '", path, "' is entirely black");
  return Custom(pixels / total);
}

}  // namespace diffpost
