// The SVDs the decomposable operators expose, against the dense matrices of the operators.
#include <doctest/doctest.h>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>

#include "support/gaussian_posterior.hpp"

#include <algorithm>
#include <vector>

using namespace diffpost;
using testing::Matrix;
using testing::Vector;

namespace {

/// The dense matrix of a map on images of `image_shape` [1, C, H, W].
Matrix dense(const std::function<torch::Tensor(const torch::Tensor&)>& apply, const Shape& image_shape) {
  return testing::dense_matrix(apply, {image_shape[1], image_shape[2], image_shape[3]});
}

/// Checks `op.svd` against the dense matrix A of `op`: A = U diag(s) V^T, V and U orthogonal, A^T = V diag(s)
/// U^T, and the singular values those of A.
template <DecomposableOperator Op>
void check_svd(const Op& op, const Shape& image_shape) {
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const auto svd = op.svd(image_shape, options);
  const torch::Tensor s = svd.singular_values();
  const Matrix a = dense([&](const torch::Tensor& x) { return op.forward(x); }, image_shape);
  const Matrix rebuilt =
      dense([&](const torch::Tensor& x) { return svd.u(s * svd.v_transpose(x)); }, image_shape);
  CHECK((rebuilt - a).cwiseAbs().maxCoeff() < 1e-10);
  const Matrix v_transpose = dense([&](const torch::Tensor& x) { return svd.v_transpose(x); }, image_shape);
  const auto d = v_transpose.rows();
  CHECK((v_transpose.transpose() * v_transpose - Matrix::Identity(d, d)).cwiseAbs().maxCoeff() < 1e-10);
  const Matrix v = dense([&](const torch::Tensor& c) { return svd.v(c); }, image_shape);
  CHECK((v - v_transpose.transpose()).cwiseAbs().maxCoeff() < 1e-12);

  // U^T on measurements: orthogonal from the measurement space into the spectral coordinates, and u undoes
  // it.
  auto generator = make_generator(3);
  const torch::Tensor y = at::randn(op.measurement_shape(image_shape), generator, options);
  const torch::Tensor c = svd.u_transpose(y);
  REQUIRE(c.sizes() == torch::IntArrayRef(image_shape));
  CHECK(torch::allclose(svd.u(c), y, 1e-12, 1e-12));
  CHECK(c.square().sum().item<double>() == doctest::Approx(y.square().sum().item<double>()).epsilon(1e-12));
  CHECK(torch::allclose(svd.v(s * svd.u_transpose(y)), op.adjoint(y), 1e-10, 1e-10));

  // The singular values are those of A (Eigen's SVD of the dense matrix), zeros included.
  std::vector<double> ours(static_cast<size_t>(d));
  const torch::Tensor expanded = s.expand(image_shape).reshape({-1}).contiguous();
  for (int64_t i = 0; i < d; ++i) ours[i] = expanded[i].item<double>();
  Eigen::JacobiSVD<Matrix> reference(a);
  std::vector<double> theirs(reference.singularValues().data(),
                             reference.singularValues().data() + reference.singularValues().size());
  theirs.resize(static_cast<size_t>(d), 0.0);
  std::sort(ours.rbegin(), ours.rend());
  std::sort(theirs.rbegin(), theirs.rend());
  double worst = 0.0;
  for (size_t i = 0; i < ours.size(); ++i) worst = std::max(worst, std::abs(ours[i] - theirs[i]));
  CHECK(worst < 1e-10);
}

}  // namespace

static_assert(DecomposableOperator<InpaintingOperator> && DecomposableOperator<SuperResolutionOperator> &&
              DecomposableOperator<ColorizationOperator> && DecomposableOperator<IdentityOperator> &&
              DecomposableOperator<BlurOperator<Gaussian>>);
// A motion or user kernel is not separable (or not known to be): no SVD. Phase retrieval is not linear.
static_assert(!HasSingularValueDecomposition<BlurOperator<Motion>> &&
              !HasSingularValueDecomposition<BlurOperator<Custom>> &&
              !HasSingularValueDecomposition<PhaseRetrievalOperator> &&
              !HasSingularValueDecomposition<LinearLambdaOperator>);
static_assert(SeparableBlurKernel<Gaussian> && !SeparableBlurKernel<Custom> && !SeparableBlurKernel<Motion>);

TEST_CASE("operator SVDs reproduce the dense matrices") {
  SUBCASE("inpainting, 0/1 mask and signed weights") {
    auto generator = make_generator(1);
    const auto mask = (at::rand({5, 6}, generator, torch::kFloat64) > 0.4).to(torch::kFloat64);
    check_svd(InpaintingOperator(mask), {1, 2, 5, 6});
    check_svd(InpaintingOperator(at::randn({5, 6}, generator, torch::kFloat64)), {1, 1, 5, 6});
  }
  SUBCASE("super-resolution, bicubic and average pooling") {
    check_svd(SuperResolutionOperator(2), {1, 2, 8, 6});
    check_svd(SuperResolutionOperator(3, DownsamplingMode::AveragePool), {1, 1, 6, 9});
  }
  SUBCASE("colorization") {
    check_svd(ColorizationOperator{}, {1, 3, 4, 5});
  }
  SUBCASE("Gaussian blur, kernel smaller and larger than the image") {
    check_svd(BlurOperator<Gaussian>(Gaussian{}.size(5).sigma(1.0)), {1, 1, 7, 9});
    check_svd(BlurOperator<Gaussian>(Gaussian{}.size(13).sigma(2.0)), {1, 2, 6, 5});
  }
  SUBCASE("identity") {
    check_svd(IdentityOperator{}, {1, 2, 3, 4});
  }
}
