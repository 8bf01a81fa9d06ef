// The identity measurement: pure denoising.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>

namespace diffpost {

/// A(x) = x. Linear, self-adjoint and its own pseudo-inverse; with GaussianLikelihood it poses denoising.
struct IdentityOperator {
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return x; }
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const { return y; }
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return y; }
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const { return y; }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const { return image_shape; }
};

static_assert(PseudoInvertibleOperator<IdentityOperator>);

}  // namespace diffpost
