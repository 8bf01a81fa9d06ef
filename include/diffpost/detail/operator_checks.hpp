// Private to diffpost: not part of the public API, may change without notice.
//
// Input checks shared by the measurement operators, so that every operator rejects a wrong shape with the
// same kind of message: what it got, what it expected, and how to fix the call.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string_view>

#include <diffpost/concepts.hpp>

namespace diffpost::detail {

/// Fails unless `x` is a 4-D image batch [B, C, H, W] of a floating-point type.
inline void check_image_batch(const torch::Tensor& x, std::string_view op_name) {
  TORCH_CHECK(x.defined(), op_name, ": got an undefined tensor, expected an image batch [B, C, H, W]");
  TORCH_CHECK(x.dim() == 4, op_name, ": expected an image batch [B, C, H, W], got shape ", x.sizes(),
              x.dim() == 3 ? " (a single image: add the batch dimension with x.unsqueeze(0))" : "");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op_name, ": expected a floating-point tensor, got dtype ",
              x.scalar_type(), " (convert with x.to(torch::kFloat32))");
}

/// Fails unless `shape` describes a 4-D image batch [B, C, H, W] (for `measurement_shape`).
inline void check_image_shape(const Shape& shape, std::string_view op_name) {
  TORCH_CHECK(shape.size() == 4, op_name, ": expected an image shape [B, C, H, W], got ",
              c10::IntArrayRef(shape));
}

}  // namespace diffpost::detail
