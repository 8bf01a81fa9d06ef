// The SVDs the decomposable operators expose, and the closed-form data steps built on them, against the dense
// matrices of the operators.
#include <diffpost/methods/diffpir.hpp>
#include <diffpost/methods/pigdm.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

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

/// DiffPIR's data step for `op` against (A^T A + rho I)^{-1} (A^T y + rho x0) with the dense matrix.
template <class Op>
void check_data_step(const Op& op, const Shape& image_shape, int64_t cg_iterations = 30) {
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const auto schedule = DiffusionSchedule::linear().restricted_to(diffpir_timesteps(100));
  const DiffPIR<GaussianLikelihood, Op> diffpir(GaussianLikelihood(0.05), op, schedule,
                                                DiffPIROptions{}.lambda(7.0).cg_iterations(cg_iterations));
  auto generator = make_generator(4);
  const torch::Tensor x0 = at::randn(image_shape, generator, options);
  const torch::Tensor y = at::randn(op.measurement_shape(image_shape), generator, options);
  const Matrix a = dense([&](const torch::Tensor& x) { return op.forward(x); }, image_shape);
  for (int64_t index : {80, 20}) {
    CAPTURE(index);
    const double rho = diffpir.rho(index);
    const Matrix normal = a.transpose() * a + rho * Matrix::Identity(a.cols(), a.cols());
    const Vector expected = normal.ldlt().solve(a.transpose() * testing::to_eigen(y.reshape({-1})) +
                                                rho * testing::to_eigen(x0.reshape({-1})));
    const Vector got = testing::to_eigen(diffpir.data_step(diffpir.prepare(y, x0), x0, index).reshape({-1}));
    INFO("rho ", rho);
    CHECK((got - expected).cwiseAbs().maxCoeff() < 1e-8 * std::max(1.0, expected.cwiseAbs().maxCoeff()));
  }
}

/// PiGDM's vector h = r^2 A^T (r^2 A A^T + sigma^2 I)^{-1} (y - A x0) against the dense matrix.
template <class Op>
void check_guidance_vector(const Op& op, const Shape& image_shape) {
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const auto schedule = DiffusionSchedule::linear().respaced("ddim100");
  const double sigma = 0.05;
  const PiGDM<GaussianLikelihood, Op> pigdm(GaussianLikelihood(sigma), op, schedule,
                                            PiGDMOptions{}.cg_iterations(200));
  auto generator = make_generator(5);
  const torch::Tensor x0 = at::randn(image_shape, generator, options);
  const torch::Tensor y = at::randn(op.measurement_shape(image_shape), generator, options);
  const Matrix a = dense([&](const torch::Tensor& x) { return op.forward(x); }, image_shape);
  const int64_t index = 30;
  const double r2 = 1.0 - schedule.alphas_cumprod()[index];
  const Matrix inner = r2 * a * a.transpose() + sigma * sigma * Matrix::Identity(a.rows(), a.rows());
  const Vector expected =
      r2 * a.transpose() *
      inner.ldlt().solve(testing::to_eigen(y.reshape({-1})) - a * testing::to_eigen(x0.reshape({-1})));
  const Vector got = testing::to_eigen(pigdm.guidance_vector(pigdm.prepare(y, x0), x0, index).reshape({-1}));
  CHECK((got - expected).cwiseAbs().maxCoeff() < 1e-8 * std::max(1.0, expected.cwiseAbs().maxCoeff()));
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

TEST_CASE("DiffPIR's data step is (A^T A + rho I)^{-1} (A^T y + rho x0) for every linear operator") {
  SUBCASE("closed form through the SVD") {
    check_data_step(InpaintingOperator(torch::eye(6, torch::kFloat64)), {1, 2, 6, 6});
    check_data_step(SuperResolutionOperator(2), {1, 1, 8, 6});
    check_data_step(ColorizationOperator{}, {1, 3, 4, 5});
    check_data_step(BlurOperator<Gaussian>(Gaussian{}.size(7).sigma(1.5)), {1, 1, 8, 7});
  }
  SUBCASE("conjugate gradients for a motion blur") {
    auto generator = make_generator(2);
    check_data_step(BlurOperator<Motion>(Motion{}.size(5).intensity(0.5), generator), {1, 1, 7, 6}, 200);
  }
}

TEST_CASE(
    "PiGDM's guidance vector r^2 A^T (r^2 A A^T + sigma^2 I)^{-1} (y - A x0), with and without an SVD") {
  check_guidance_vector(SuperResolutionOperator(2), {1, 1, 8, 6});
  check_guidance_vector(ColorizationOperator{}, {1, 3, 4, 5});
  auto generator = make_generator(6);
  check_guidance_vector(BlurOperator<Motion>(Motion{}.size(5).intensity(0.5), generator), {1, 1, 7, 6});
}
