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

  /// Statistics given as tensors `mean` [D] and `covariance` [D, D] (any device and floating dtype; copied to
  /// the CPU in float64), e.g. the `mu` and `sigma` of a pytorch-fid .npz file (io/npz.hpp,
  /// read_fid_statistics). The covariance is taken as given (pytorch-fid's np.cov is symmetric only up to
  /// rounding). Throws c10::Error naming the shapes when they do not fit or a value is not finite.
  static GaussianStatistics from_tensors(const torch::Tensor& mean, const torch::Tensor& covariance) {
    TORCH_CHECK(
        mean.defined() && covariance.defined(),
        "GaussianStatistics::from_tensors: got an undefined tensor; pass mean [D] and covariance [D, D]");
    TORCH_CHECK(mean.dim() == 1 && mean.size(0) >= 1 && covariance.dim() == 2 &&
                    covariance.size(0) == mean.size(0) && covariance.size(1) == mean.size(0),
                "GaussianStatistics::from_tensors: expected mean [D] and covariance [D, D], got shapes ",
                mean.sizes(), " and ", covariance.sizes());
    TORCH_CHECK(at::isFloatingType(mean.scalar_type()) && at::isFloatingType(covariance.scalar_type()),
                "GaussianStatistics::from_tensors: expected floating-point tensors, got ", mean.scalar_type(),
                " and ", covariance.scalar_type());
    const auto mu = mean.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    const auto sigma = covariance.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    TORCH_CHECK(torch::isfinite(mu).all().item<bool>() && torch::isfinite(sigma).all().item<bool>(),
                "GaussianStatistics::from_tensors: mean or covariance holds NaN or infinite values");
    const auto d = mu.size(0);
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    GaussianStatistics statistics;
    statistics.mean = Eigen::Map<const Eigen::VectorXd>(mu.data_ptr<double>(), d);
    statistics.covariance = Eigen::Map<const RowMajor>(sigma.data_ptr<double>(), d, d);
    return statistics;
  }

  /// The mean as a float64 CPU tensor [D] (pytorch-fid's `mu`).
  [[nodiscard]] torch::Tensor mean_tensor() const {
    auto tensor = torch::empty({dimension()}, torch::kFloat64);
    Eigen::Map<Eigen::VectorXd>(tensor.data_ptr<double>(), dimension()) = mean;
    return tensor;
  }

  /// The covariance as a float64 CPU tensor [D, D] (pytorch-fid's `sigma`).
  [[nodiscard]] torch::Tensor covariance_tensor() const {
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    auto tensor = torch::empty({dimension(), dimension()}, torch::kFloat64);
    Eigen::Map<RowMajor>(tensor.data_ptr<double>(), dimension(), dimension()) = covariance;
    return tensor;
  }

  /// The feature dimension D.
  [[nodiscard]] int64_t dimension() const { return static_cast<int64_t>(mean.size()); }
};

namespace detail {

/// The eigen-decomposition of the symmetric part of `matrix` (eigenvalues only, or with the eigenvectors);
/// callers clamp the eigenvalues at 0: rounding makes the smallest eigenvalues of a rank-deficient covariance
/// (N <= D, or constant features) slightly negative, and a covariance has none.
inline Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> psd_eigen(const Eigen::MatrixXd& matrix,
                                                                int options = Eigen::ComputeEigenvectors) {
  const Eigen::MatrixXd symmetric = 0.5 * (matrix + matrix.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(symmetric, options);
  // Only NaN or infinite entries keep the symmetric QR iteration from converging; the inputs were checked.
  TORCH_CHECK(solver.info() == Eigen::Success, "frechet_distance: the eigen-decomposition of a ",
              matrix.rows(), "x", matrix.cols(),
              " covariance product did not converge (are the statistics finite and of a sensible scale?)");
  return solver;
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
/// SelfAdjointEigenSolver with tiny negative eigenvalues (rounding) clamped to 0, which stays exact for
/// rank-deficient covariances (N <= D). This is the value of pytorch-fid's `calculate_frechet_distance`
/// (scipy's `sqrtm` of the non-symmetric S_a S_b, real part of its trace) without its fallback: pytorch-fid
/// adds 1e-6 to both diagonals when that `sqrtm` comes out non-finite, which symmetric square roots of
/// finite statistics never do (docs/metrics.md compares the two on rank-deficient and singular sets). A
/// result below 0 can only be rounding and is returned as 0. Symmetric in a and b. Throws c10::Error when
/// the dimensions differ.
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
  const auto eigen_middle = detail::psd_eigen(sqrt_a * b.covariance * sqrt_a, Eigen::EigenvaluesOnly);
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
