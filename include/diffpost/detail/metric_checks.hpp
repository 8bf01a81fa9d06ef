// Private to diffpost: not part of the public API, may change without notice.
//
// Shape and type checks shared by the image quality metrics.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace diffpost::detail {

/// Checks that `image` and `reference` are two floating-point image batches of the same shape ([B, C, H, W],
/// or one image [C, H, W]) on the same device, and returns both as float64 [B, C, H, W].
inline std::pair<torch::Tensor, torch::Tensor> metric_inputs(const torch::Tensor& image,
                                                             const torch::Tensor& reference,
                                                             const char* caller) {
  TORCH_CHECK(image.defined() && reference.defined(), caller, ": got an undefined tensor");
  TORCH_CHECK(image.dim() == 3 || image.dim() == 4, caller,
              ": expected images [B, C, H, W] or one image [C, H, W], got shape ", image.sizes());
  TORCH_CHECK(image.sizes() == reference.sizes(), caller, ": image shape ", image.sizes(),
              " differs from reference shape ", reference.sizes(), " (compare images of the same size)");
  TORCH_CHECK(at::isFloatingType(image.scalar_type()) && at::isFloatingType(reference.scalar_type()), caller,
              ": expected floating-point images in [-1, 1], got ", image.scalar_type(), " and ",
              reference.scalar_type());
  TORCH_CHECK(image.device() == reference.device(), caller, ": image on ", image.device(),
              " but reference on ", reference.device());
  TORCH_CHECK(image.numel() > 0, caller, ": empty images of shape ", image.sizes());
  auto x = image.detach().to(torch::kFloat64);
  auto y = reference.detach().to(torch::kFloat64);
  if (x.dim() == 3) {
    x = x.unsqueeze(0);
    y = y.unsqueeze(0);
  }
  return {x, y};
}

}  // namespace diffpost::detail
