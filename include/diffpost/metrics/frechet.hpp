// Frechet distance between two sets of feature vectors, each summarised by a Gaussian: the quantity behind
// FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
// NeurIPS 2017), computed here on whatever features the caller supplies (diffpost's evaluation uses the
// penultimate layer of the small Fashion-MNIST classifier in models/classifier.hpp instead of Inception).
#pragma once

#include <torch/torch.h>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace diffpost {

/// The mean and the covariance of a set of feature vectors, in float64: the Gaussian that the Frechet
/// distance compares. Build it with `GaussianStatistics::of(features)`; a caller that scores many sets
/// against one reference set can compute the reference statistics once and keep them.
struct GaussianStatistics {
  Eigen::VectorXd mean;        ///< [D] sample mean
  Eigen::MatrixXd covariance;  ///< [D, D] unbiased sample covariance (divided by N - 1)

  /// The statistics of `features` [N, D] (N >= 2 samples of dimension D >= 1, finite values, any device and
  /// real dtype; copied to the CPU in float64): mean mu = (1/N) sum_i f_i and unbiased covariance
  /// S = (1/(N-1)) sum_i (f_i - mu)(f_i - mu)^T, the convention of numpy's `np.cov(f, rowvar=False)` that FID
  /// implementations use. Throws c10::Error naming the shape when it is not [N >= 2, D >= 1] or a value is
  /// not finite.
  static GaussianStatistics of(const torch::Tensor& features) {
    TORCH_CHECK(features.defined(), "GaussianStatistics::of: got an undefined tensor; pass features [N, D]");
    TORCH_CHECK(features.dim() == 2,
                "GaussianStatistics::of: expected features [N, D] (one row per sample), got ", "shape ",
                features.sizes(), "; flatten each sample's features into one row, e.g. x.flatten(1)");
    TORCH_CHECK(features.size(0) >= 2, "GaussianStatistics::of: features of shape ", features.sizes(),
                " hold ", features.size(0), " sample(s); a covariance needs N >= 2 rows");
    TORCH_CHECK(features.size(1) >= 1, "GaussianStatistics::of: features of shape ", features.sizes(),
                " have no columns; expected D >= 1");
    TORCH_CHECK(!at::isComplexType(features.scalar_type()) && features.scalar_type() != torch::kBool,
                "GaussianStatistics::of: expected real-valued features, got ", features.scalar_type());
    const auto values = features.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    TORCH_CHECK(torch::isfinite(values).all().item<bool>(), "GaussianStatistics::of: features of shape ",
                features.sizes(), " contain NaN or infinite values");
    const auto n = values.size(0), d = values.size(1);
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const RowMajor> rows(values.data_ptr<double>(), n, d);
    GaussianStatistics statistics;
    statistics.mean = rows.colwise().mean().transpose();
    const Eigen::MatrixXd centered = rows.rowwise() - statistics.mean.transpose();
    statistics.covariance = centered.transpose() * centered / static_cast<double>(n - 1);
    return statistics;
  }

  /// The feature dimension D.
  [[nodiscard]] int64_t dimension() const { return static_cast<int64_t>(mean.size()); }
};

namespace detail {

/// The eigen-decomposition of the symmetric part of `matrix` with eigenvalues clamped at 0: rounding makes
/// the smallest eigenvalues of a rank-deficient covariance (N <= D, or constant features) slightly negative,
/// and a covariance has none.
inline Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> psd_eigen(const Eigen::MatrixXd& matrix) {
  const Eigen::MatrixXd symmetric = 0.5 * (matrix + matrix.transpose());
  return Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(symmetric);
}

/// Checks that `statistics` (argument `name` of frechet_distance) hold a mean of size D >= 1 and a D x D
/// covariance.
inline void check_statistics(const GaussianStatistics& statistics, const char* name) {
  const auto d = statistics.mean.size();
  TORCH_CHECK(d >= 1 && statistics.covariance.rows() == d && statistics.covariance.cols() == d,
              "frechet_distance: statistics ", name, " have a mean of size ", d, " and a covariance of ",
              statistics.covariance.rows(), "x", statistics.covariance.cols(),
              "; build them with GaussianStatistics::of");
}

}  // namespace detail

/// The Frechet (2-Wasserstein) distance squared between the Gaussians N(mu_a, S_a) and N(mu_b, S_b)
/// (Dowson & Landau 1982; FID, Heusel et al. 2017, eq. 6):
///   d^2 = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}).
/// The cross term is the trace of the square root of the symmetric positive semi-definite matrix
/// S_a^{1/2} S_b S_a^{1/2}, whose eigenvalues equal those of S_a S_b; both square roots come from
/// SelfAdjointEigenSolver with tiny negative eigenvalues (rounding) clamped to 0, which is exact for
/// rank-deficient covariances where scipy's `sqrtm` of the non-symmetric S_a S_b needs an epsilon. A result
/// below 0 can only be rounding and is returned as 0. Symmetric in a and b. Throws c10::Error when the
/// dimensions differ.
inline double frechet_distance(const GaussianStatistics& a, const GaussianStatistics& b) {
  detail::check_statistics(a, "a");
  detail::check_statistics(b, "b");
  TORCH_CHECK(a.mean.size() == b.mean.size(), "frechet_distance: feature dimensions differ (", a.mean.size(),
              " vs ", b.mean.size(), "); compare features taken from the same layer");
  const double mean_term = (a.mean - b.mean).squaredNorm();

  // S_a^{1/2} = V diag(sqrt(max(lambda, 0))) V^T.
  const auto eigen_a = detail::psd_eigen(a.covariance);
  const Eigen::VectorXd sqrt_lambda_a = eigen_a.eigenvalues().cwiseMax(0.0).cwiseSqrt();
  const Eigen::MatrixXd sqrt_a =
      eigen_a.eigenvectors() * sqrt_lambda_a.asDiagonal() * eigen_a.eigenvectors().transpose();
  // tr (S_a^{1/2} S_b S_a^{1/2})^{1/2} = sum of the square roots of its (non-negative) eigenvalues.
  const auto eigen_middle = detail::psd_eigen(sqrt_a * b.covariance * sqrt_a);
  const double trace_sqrt = eigen_middle.eigenvalues().cwiseMax(0.0).cwiseSqrt().sum();

  const double distance = mean_term + a.covariance.trace() + b.covariance.trace() - 2.0 * trace_sqrt;
  return std::max(distance, 0.0);
}

/// The Frechet distance between the Gaussians fitted to two feature sets `features_a` [N, D] and `features_b`
/// [M, D] (N, M >= 2, same D, finite; any device and real dtype, computed on the CPU in float64):
/// `frechet_distance(GaussianStatistics::of(features_a), GaussianStatistics::of(features_b))`. The value is
/// biased upwards for small N and M (sampling noise in the covariances adds to the trace term), so compare
/// distances computed on the same number of samples only. Throws c10::Error naming the shapes when they do
/// not fit.
inline double frechet_distance(const torch::Tensor& features_a, const torch::Tensor& features_b) {
  TORCH_CHECK(features_a.defined() && features_b.defined(),
              "frechet_distance: got an undefined tensor; pass two feature sets [N, D] and [M, D]");
  TORCH_CHECK(features_a.dim() == 2 && features_b.dim() == 2,
              "frechet_distance: expected two feature sets [N, D] and [M, D], got shapes ",
              features_a.sizes(), " and ", features_b.sizes(),
              "; flatten each sample's features into one row, e.g. x.flatten(1)");
  TORCH_CHECK(features_a.size(1) == features_b.size(1),
              "frechet_distance: feature dimensions differ: shapes ", features_a.sizes(), " and ",
              features_b.sizes(), "; both sets must come from the same feature extractor");
  TORCH_CHECK(features_a.size(0) >= 2 && features_b.size(0) >= 2, "frechet_distance: shapes ",
              features_a.sizes(), " and ", features_b.sizes(),
              "; each set needs at least 2 samples (rows) for a covariance");
  return frechet_distance(GaussianStatistics::of(features_a), GaussianStatistics::of(features_b));
}

}  // namespace diffpost
