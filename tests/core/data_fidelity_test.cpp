// The data-fidelity gradient the guided methods descend, against its closed form for Gaussian noise.
#include <diffpost/dps.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/subsample_problem.hpp"

using namespace diffpost;
using testing::SubsampleOperator;

TEST_CASE("the fidelity gradient of r = ||y - A x|| is A^T (A x - y) times the penalty's derivative") {
  const auto x = torch::randn({3, 1, 6, 6}, torch::kFloat64);
  const auto y = torch::randn({3, 18}, torch::kFloat64);
  const SubsampleOperator op;
  const GaussianLikelihood likelihood(0.1);
  const auto misfit = op.forward(x) - y;  // [3, 18]
  const auto r = misfit.norm(2, 1);
  const auto direction = op.adjoint(misfit);  // A^T (A x - y), [3, 1, 6, 6]
  const auto per_sample = [](const torch::Tensor& v) { return v.view({3, 1, 1, 1}); };
  const auto check = [&](FidelityPenalty penalty, const torch::Tensor& expected) {
    const auto result = fidelity_gradient(likelihood, op, y, x, penalty);
    CHECK(torch::allclose(result.residual, r, 1e-12, 1e-12));
    CHECK_FALSE(result.residual.requires_grad());
    CHECK(torch::allclose(result.gradient, expected, 1e-10, 1e-12));
  };
  check(FidelityPenalty::norm, direction / per_sample(r));
  check(FidelityPenalty::squared_norm, 2.0 * direction);
  check(FidelityPenalty::half_squared_norm, direction);
}

TEST_CASE("through a function of the variable, the gradient is pulled back by its Jacobian") {
  // estimate = 3 v: the gradient with respect to v is 3 times the gradient with respect to the estimate.
  const auto v = torch::randn({2, 1, 6, 6}, torch::kFloat64).requires_grad_(true);
  const auto y = torch::randn({2, 18}, torch::kFloat64);
  const SubsampleOperator op;
  const GaussianLikelihood likelihood(0.1);
  torch::Tensor estimate;
  {
    torch::AutoGradMode enable_grad(true);
    estimate = 3.0 * v;
  }
  const auto through = fidelity_gradient_through(likelihood, op, y, estimate, v, FidelityPenalty::norm);
  const auto direct = fidelity_gradient(likelihood, op, y, estimate.detach(), FidelityPenalty::norm);
  CHECK(torch::allclose(through.gradient, 3.0 * direct.gradient, 1e-12, 1e-12));
}

TEST_CASE("a likelihood that does not return one residual per sample is an error") {
  struct SummedLikelihood {
    torch::Tensor sample(const torch::Tensor& clean, at::Generator&) const { return clean; }
    torch::Tensor data_fidelity(const torch::Tensor& y, const torch::Tensor& p) const {
      return (y - p).norm();
    }
  };
  CHECK_THROWS_WITH_AS(fidelity_gradient(SummedLikelihood{}, SubsampleOperator{}, torch::zeros({2, 18}),
                                         torch::zeros({2, 1, 6, 6}), FidelityPenalty::norm),
                       doctest::Contains("data_fidelity must return one value per sample, shape [2], got []"),
                       c10::Error);
}
