// Test support: a correlated Gaussian prior on 6x6 images, every other pixel measured with Gaussian noise,
// and the exact posterior of that problem.
#pragma once

#include <diffpost/dps.hpp>

#include "support/gaussian_posterior.hpp"

namespace diffpost::testing {

// Keeps every other pixel of a square one-channel image: a linear operator small enough to write as a matrix.
struct SubsampleOperator {
  torch::Tensor forward(const torch::Tensor& x) const {
    return x.reshape({x.size(0), -1})
        .index({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)});
  }
  torch::Tensor adjoint(const torch::Tensor& y) const {
    auto x = torch::zeros({y.size(0), 2 * y.size(1)}, y.options());
    x.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)}, y);
    const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(x.size(1)))));
    return x.view({y.size(0), 1, side, side});  // square single-channel images
  }
  torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return adjoint(y); }  // A A^T = I
  torch::Tensor naive_inverse(const torch::Tensor& y) const { return adjoint(y); }
  Shape measurement_shape(const Shape& s) const { return {s[0], s[1] * s[2] * s[3] / 2}; }
};
static_assert(LinearOperator<SubsampleOperator>);

struct Problem {
  torch::Tensor mean, covariance;
  GaussianPrior prior;
  torch::Tensor x_true, y;
  testing::Posterior posterior;
  double sigma;
};

inline Problem make_problem(double sigma, uint64_t seed) {
  auto mean = torch::zeros({1, 6, 6}, torch::kFloat64);
  auto covariance = testing::smooth_covariance(6, 6, 0.35, 1.5);
  auto prior = GaussianPrior::with_covariance(mean, covariance, DiffusionSchedule::linear());
  auto generator = make_generator(seed);
  auto x_true = prior.sample(1, generator);
  SubsampleOperator op;
  auto y = GaussianLikelihood(sigma).sample(op.forward(x_true), generator);
  auto a = testing::dense_matrix([&](const torch::Tensor& x) { return op.forward(x); }, {1, 6, 6});
  auto posterior =
      testing::gaussian_posterior(testing::to_eigen(mean.reshape({-1})), testing::to_eigen(covariance), a,
                                  testing::to_eigen(y.reshape({-1})), sigma);
  return {mean, covariance, prior, x_true, y, posterior, sigma};
}

/// The root mean square of a tensor's entries.
inline double rms(const torch::Tensor& t) {
  return t.square().mean().sqrt().item<double>();
}

/// The Euclidean distance between the mean of `samples` [N, ...] and the exact posterior mean.
inline double distance_to_posterior_mean(const torch::Tensor& samples, const Problem& problem) {
  return (to_eigen(samples.mean(0).reshape({-1})) - problem.posterior.mean).norm();
}

}  // namespace diffpost::testing
