// Private to diffpost: not part of the public API, may change without notice.
//
// Drawing random numbers from an explicit generator on the generator's device, then moving them to the
// target's device, so that a CPU generator gives the same numbers whatever device the tensors live on.
#pragma once

#include <torch/torch.h>

namespace diffpost::detail {

/// Standard normal tensor shaped, typed and placed like `like`, drawn from `generator`.
inline torch::Tensor randn_like(const torch::Tensor& like, at::Generator& generator) {
  auto draw_options = like.options().device(generator.device()).requires_grad(false);
  return at::randn(like.sizes(), generator, draw_options).to(like.device());
}

}  // namespace diffpost::detail
