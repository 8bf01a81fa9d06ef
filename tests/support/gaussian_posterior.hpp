// Test support: closed-form Gaussian posteriors (Eigen), independent of the library's samplers.
#pragma once

#include <torch/torch.h>
#include <Eigen/Dense>
#include <diffpost/models/gaussian_prior.hpp>

#include <cmath>
#include <functional>

namespace diffpost::testing {

using Matrix = Eigen::MatrixXd;
using Vector = Eigen::VectorXd;

inline Matrix to_eigen(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).cpu().contiguous();
  const int64_t rows = c.dim() == 2 ? c.size(0) : c.numel();
  const int64_t cols = c.dim() == 2 ? c.size(1) : 1;
  Matrix m(rows, cols);
  auto a = c.reshape({rows, cols});
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m(i, j) = a[i][j].item<double>();
  return m;
}

inline torch::Tensor to_torch(const Matrix& m) {
  auto t = torch::empty({m.rows(), m.cols()}, torch::kFloat64);
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < m.cols(); ++j) t[i][j] = m(i, j);
  return t;
}

/// Squared-exponential covariance over the pixels of a [1, H, W] image: s^2 exp(-d^2 / (2 l^2)) + jitter.
inline torch::Tensor smooth_covariance(int64_t h, int64_t w, double stddev, double length) {
  const int64_t d = h * w;
  auto cov = torch::empty({d, d}, torch::kFloat64);
  auto acc = cov.accessor<double, 2>();
  for (int64_t p = 0; p < d; ++p)
    for (int64_t q = 0; q < d; ++q) {
      const double dy = static_cast<double>(p / w - q / w), dx = static_cast<double>(p % w - q % w);
      acc[p][q] =
          stddev * stddev * std::exp(-(dx * dx + dy * dy) / (2 * length * length)) + (p == q ? 1e-4 : 0.0);
    }
  return cov;
}

/// Dense matrix of a linear map given as a function on [1, C, H, W] images (columns = images of unit
/// vectors).
inline Matrix dense_matrix(const std::function<torch::Tensor(const torch::Tensor&)>& apply,
                           const Shape& image_shape) {
  const int64_t d = image_shape[0] * image_shape[1] * image_shape[2];
  auto basis = torch::eye(d, torch::kFloat64).view({d, image_shape[0], image_shape[1], image_shape[2]});
  auto columns = apply(basis).reshape({d, -1});  // [D, M]
  return to_eigen(columns.t().contiguous());     // [M, D]
}

/// Exact posterior of x ~ N(mu, S) given y = A x + sigma n: mean and covariance.
struct Posterior {
  Vector mean;
  Matrix covariance;
};

inline Posterior gaussian_posterior(const Vector& mu, const Matrix& prior_cov, const Matrix& a,
                                    const Vector& y, double sigma) {
  // Kalman form: K = S A^T (A S A^T + sigma^2 I)^{-1}.
  const Matrix innovation =
      a * prior_cov * a.transpose() + sigma * sigma * Matrix::Identity(a.rows(), a.rows());
  const Matrix gain =
      prior_cov * a.transpose() * innovation.ldlt().solve(Matrix::Identity(a.rows(), a.rows()));
  return {mu + gain * (y - a * mu), prior_cov - gain * a * prior_cov};
}

}  // namespace diffpost::testing
