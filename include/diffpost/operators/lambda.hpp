// Operators from plain functions: bring your own physics without writing a class.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <utility>

#include <diffpost/concepts.hpp>

namespace diffpost {

/// A ForwardOperator made of two functions: `forward`, any differentiable LibTorch computation of y = A(x)
/// (DPS backpropagates through it), and `measurement_shape`, which maps an image shape to the measurement
/// shape. It has no adjoint, so it satisfies ForwardOperator but not LinearOperator, whatever the function
/// does: use LinearLambdaOperator when you can supply A^T. Input checks are the function's own business.
class LambdaOperator {
 public:
  using Function = std::function<torch::Tensor(const torch::Tensor&)>;
  using ShapeFunction = std::function<Shape(const Shape&)>;

  LambdaOperator(Function forward, ShapeFunction measurement_shape)
      : forward_(std::move(forward)), measurement_shape_(std::move(measurement_shape)) {
    TORCH_CHECK(forward_ && measurement_shape_, "LambdaOperator: both functions must be set");
  }

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return forward_(x); }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return measurement_shape_(image_shape);
  }

 private:
  Function forward_;
  ShapeFunction measurement_shape_;
};

/// A LinearOperator made of three functions: a linear `forward` A, its `adjoint` A^T and `measurement_shape`.
/// diffpost cannot check that the functions really are a linear map and its adjoint; run the dot-product test
/// <A x, y> = <x, A^T y> on random x and y (as tests/operators do) before trusting projection methods with
/// it.
class LinearLambdaOperator {
 public:
  using Function = LambdaOperator::Function;
  using ShapeFunction = LambdaOperator::ShapeFunction;

  LinearLambdaOperator(Function forward, Function adjoint, ShapeFunction measurement_shape)
      : forward_(std::move(forward)),
        adjoint_(std::move(adjoint)),
        measurement_shape_(std::move(measurement_shape)) {
    TORCH_CHECK(forward_ && adjoint_ && measurement_shape_,
                "LinearLambdaOperator: all three functions must be set");
  }

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return forward_(x); }
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const { return adjoint_(y); }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return measurement_shape_(image_shape);
  }

 private:
  Function forward_;
  Function adjoint_;
  ShapeFunction measurement_shape_;
};

static_assert(ForwardOperator<LambdaOperator> && !LinearOperator<LambdaOperator>);
static_assert(LinearOperator<LinearLambdaOperator>);

}  // namespace diffpost
