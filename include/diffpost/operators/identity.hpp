// The identity measurement: pure denoising.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/operators/svd.hpp>

namespace diffpost {

/// A(x) = x. Linear, self-adjoint and its own pseudo-inverse; with GaussianLikelihood it poses denoising.
struct IdentityOperator {
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return x; }
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const { return y; }
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return y; }
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const { return y; }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const { return image_shape; }
  /// U = V = I, every singular value 1.
  [[nodiscard]] SeparableSVD svd(const Shape& image_shape, const torch::TensorOptions& options) const {
    return SeparableSVD::from_factors({}, image_shape, options);
  }
};

static_assert(PseudoInvertibleOperator<IdentityOperator> && DecomposableOperator<IdentityOperator>);

}  // namespace diffpost
