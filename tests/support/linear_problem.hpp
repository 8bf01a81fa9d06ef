// Test support: the correlated Gaussian prior of subsample_problem.hpp measured through any linear operator,
// with the exact posterior of that problem, and a score model that counts its network work.
#pragma once

#include <diffpost/dps.hpp>

#include "support/gaussian_posterior.hpp"
#include "support/subsample_problem.hpp"

namespace diffpost::testing {

/// The 6 x 6 prior of make_problem, a draw x from it and y = A x + sigma n, with the exact posterior for the
/// dense matrix of `op`.
template <LinearOperator Op>
Problem make_linear_problem(const Op& op, double sigma, uint64_t seed) {
  auto mean = torch::zeros({1, 6, 6}, torch::kFloat64);
  auto covariance = smooth_covariance(6, 6, 0.35, 1.5);
  auto prior = GaussianPrior::with_covariance(mean, covariance, DiffusionSchedule::linear());
  auto generator = make_generator(seed);
  auto x_true = prior.sample(1, generator);
  auto y = GaussianLikelihood(sigma).sample(op.forward(x_true), generator);
  auto a = dense_matrix([&](const torch::Tensor& x) { return op.forward(x); }, {1, 6, 6});
  auto posterior = gaussian_posterior(to_eigen(mean.reshape({-1})), to_eigen(covariance), a,
                                      to_eigen(y.reshape({-1})), sigma);
  return {mean, covariance, prior, x_true, y, posterior, sigma};
}

/// Keeps the even columns of a 6 x 6 image, as an inpainting mask: the pixels SubsampleOperator measures,
/// with an image-shaped measurement and an SVD.
inline torch::Tensor even_column_mask() {
  return (torch::arange(6) % 2 == 0).to(torch::kFloat64).view({1, 6}).expand({6, 6}).contiguous();
}

/// A ScoreModel that forwards to a GaussianPrior and counts its evaluations and the backpropagations through
/// them (a hook on every output that carries a graph).
struct CountingModel {
  const GaussianPrior* prior;
  int64_t forwards = 0;
  std::shared_ptr<int64_t> backwards = std::make_shared<int64_t>(0);

  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) {
    ++forwards;
    auto output = (*prior)(x_t, t);
    if (output.requires_grad()) {
      output.register_hook([count = backwards](const torch::Tensor& gradient) {
        ++*count;
        return gradient;
      });
    }
    return output;
  }
  [[nodiscard]] bool learns_variance() const noexcept { return false; }
  [[nodiscard]] NetworkCost cost() const { return {forwards, *backwards}; }
};
static_assert(ScoreModel<CountingModel>);

}  // namespace diffpost::testing
