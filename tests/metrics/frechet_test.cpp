// frechet_distance and GaussianStatistics against closed forms (1-D, diagonal, shifted and scaled sets),
// against an independent computation through the eigenvalues of S_a S_b and a value from scipy, on large
// samples of two known Gaussians, and against pytorch-fid's calculate_frechet_distance on well-conditioned,
// rank-deficient and singular feature sets and on its .npz statistics files (tests/data/metrics/fid).
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/npz.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/random.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <Eigen/Dense>

#include <cmath>
#include <complex>
#include <filesystem>
#include <limits>
#include <string>

namespace {

Eigen::MatrixXd matrix3(std::initializer_list<double> values) {
  Eigen::MatrixXd m(3, 3);
  auto it = values.begin();
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) m(r, c) = *it++;
  return m;
}

diffpost::GaussianStatistics gaussian(Eigen::VectorXd mean, Eigen::MatrixXd covariance) {
  return diffpost::GaussianStatistics{std::move(mean), std::move(covariance)};
}

// Two non-commuting SPD covariances (S_a S_b - S_b S_a has entries up to 0.4) and means, used twice below.
const Eigen::MatrixXd kCovA = matrix3({2.0, 0.5, 0.1, 0.5, 1.0, 0.3, 0.1, 0.3, 0.5});
const Eigen::MatrixXd kCovB = matrix3({1.0, -0.4, 0.2, -0.4, 1.5, 0.0, 0.2, 0.0, 0.8});
const Eigen::Vector3d kMeanA(0.1, -0.2, 0.3);
const Eigen::Vector3d kMeanB(0.0, 0.4, -0.1);
// scipy 1.10.1 (Debian python3-scipy), float64:
//   fd = ((ma - mb)**2).sum() + np.trace(Sa) + np.trace(Sb) - 2 * np.trace(scipy.linalg.sqrtm(Sa @ Sb)).real
// with Sa = kCovA, Sb = kCovB, ma = kMeanA, mb = kMeanB.
constexpr double kScipyDistance = 1.1812922782730153;

// Samples [n, D] of N(mean, covariance): mean + z L^T with L the Cholesky factor of the covariance.
torch::Tensor sample_gaussian(const Eigen::VectorXd& mean, const Eigen::MatrixXd& covariance, int64_t n,
                              at::Generator& generator) {
  const auto d = mean.size();
  const Eigen::MatrixXd lower = covariance.llt().matrixL();
  auto l = torch::empty({d, d}, torch::kFloat64);
  auto mu = torch::empty({d}, torch::kFloat64);
  for (int64_t r = 0; r < d; ++r) {
    mu[r] = mean(r);
    for (int64_t c = 0; c < d; ++c) l[r][c] = lower(r, c);
  }
  const auto z = at::randn({n, d}, generator, torch::kFloat64);
  return z.matmul(l.t()) + mu;
}

}  // namespace

TEST_CASE("GaussianStatistics::of gives the sample mean and the unbiased (N - 1) covariance") {
  auto generator = diffpost::make_generator(1);
  const auto features = at::randn({50, 4}, generator, torch::kFloat64) * 2.0 + 1.0;
  const auto statistics = diffpost::GaussianStatistics::of(features);
  REQUIRE(statistics.dimension() == 4);
  const auto mean = features.mean(0);
  const auto covariance = torch::cov(features.t());  // torch.cov: rows are variables, correction 1
  for (int i = 0; i < 4; ++i) {
    CHECK(statistics.mean(i) == doctest::Approx(mean[i].item<double>()).epsilon(1e-12));
    for (int j = 0; j < 4; ++j)
      CHECK(statistics.covariance(i, j) == doctest::Approx(covariance[i][j].item<double>()).epsilon(1e-12));
  }
  // Two points: variance (x1 - x2)^2 / 2 with N - 1 = 1 in the denominator.
  const auto two = diffpost::GaussianStatistics::of(torch::tensor({{1.0}, {4.0}}));
  CHECK(two.mean(0) == doctest::Approx(2.5));
  CHECK(two.covariance(0, 0) == doctest::Approx(4.5));
}

TEST_CASE("frechet_distance of identical feature sets is ~0, also when N < D (singular covariance)") {
  auto generator = diffpost::make_generator(2);
  const auto features = at::randn({200, 16}, generator, torch::kFloat64)
                            .matmul(at::randn({16, 16}, generator, torch::kFloat64));
  const double trace = diffpost::GaussianStatistics::of(features).covariance.trace();
  CHECK(diffpost::frechet_distance(features, features) <= 1e-9 * trace);
  const auto few = at::randn({10, 64}, generator, torch::kFloat64);  // rank 9 covariance of size 64
  const double few_trace = diffpost::GaussianStatistics::of(few).covariance.trace();
  const double few_distance = diffpost::frechet_distance(few, few);
  CHECK(few_distance >= 0.0);
  CHECK(few_distance <= 1e-6 * few_trace);
}

TEST_CASE("frechet_distance of 1-D Gaussians is (m1 - m2)^2 + (s1 - s2)^2") {
  for (const auto& [m1, s1, m2, s2] : {std::tuple{0.0, 1.0, 0.0, 1.0}, std::tuple{1.5, 0.5, -0.5, 2.0},
                                       std::tuple{-3.0, 4.0, 2.0, 0.1}, std::tuple{0.2, 0.0, 0.0, 3.0}}) {
    const auto a = gaussian(Eigen::VectorXd::Constant(1, m1), Eigen::MatrixXd::Constant(1, 1, s1 * s1));
    const auto b = gaussian(Eigen::VectorXd::Constant(1, m2), Eigen::MatrixXd::Constant(1, 1, s2 * s2));
    const double expected = (m1 - m2) * (m1 - m2) + (s1 - s2) * (s1 - s2);
    CHECK(diffpost::frechet_distance(a, b) == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("frechet_distance of diagonal covariances is |mu_a - mu_b|^2 + sum (sqrt a_i - sqrt b_i)^2") {
  Eigen::VectorXd variance_a(5), variance_b(5), mean_a(5), mean_b(5);
  variance_a << 0.5, 1.0, 2.0, 4.0, 0.0;
  variance_b << 2.0, 1.0, 0.25, 9.0, 1.0;
  mean_a << 0.0, 1.0, -1.0, 0.5, 2.0;
  mean_b << 1.0, 1.0, 0.0, 0.0, -2.0;
  const auto a = gaussian(mean_a, variance_a.asDiagonal());
  const auto b = gaussian(mean_b, variance_b.asDiagonal());
  const double expected =
      (mean_a - mean_b).squaredNorm() + (variance_a.cwiseSqrt() - variance_b.cwiseSqrt()).squaredNorm();
  CHECK(diffpost::frechet_distance(a, b) == doctest::Approx(expected).epsilon(1e-12));
}

TEST_CASE("frechet_distance of non-commuting covariances matches scipy and the eigenvalues of S_a S_b") {
  const auto a = gaussian(kMeanA, kCovA);
  const auto b = gaussian(kMeanB, kCovB);
  CHECK(diffpost::frechet_distance(a, b) == doctest::Approx(kScipyDistance).epsilon(1e-10));

  // Independent route: tr (S_a^{1/2} S_b S_a^{1/2})^{1/2} = sum sqrt(lambda_i(S_a S_b)), the eigenvalues of
  // the non-symmetric product (similar to the symmetric one, hence real and >= 0), from Eigen's general
  // EigenSolver. Random SPD pairs of size 6.
  auto generator = diffpost::make_generator(3);
  for (int trial = 0; trial < 5; ++trial) {
    auto random_spd = [&generator] {
      const auto g = at::randn({6, 6}, generator, torch::kFloat64);
      const auto s = (g.matmul(g.t()) / 6.0 + 0.05 * torch::eye(6, torch::kFloat64)).contiguous();
      Eigen::MatrixXd m(6, 6);
      for (int r = 0; r < 6; ++r)
        for (int c = 0; c < 6; ++c) m(r, c) = s[r][c].item<double>();
      return m;
    };
    const Eigen::MatrixXd cov_a = random_spd(), cov_b = random_spd();
    const Eigen::VectorXd mean_a = Eigen::VectorXd::Random(6), mean_b = Eigen::VectorXd::Random(6);
    Eigen::EigenSolver<Eigen::MatrixXd> product(cov_a * cov_b);
    double trace_sqrt = 0.0;
    for (int i = 0; i < 6; ++i) trace_sqrt += std::sqrt(product.eigenvalues()(i)).real();
    const double expected =
        (mean_a - mean_b).squaredNorm() + cov_a.trace() + cov_b.trace() - 2.0 * trace_sqrt;
    CHECK(diffpost::frechet_distance(gaussian(mean_a, cov_a), gaussian(mean_b, cov_b)) ==
          doctest::Approx(expected).epsilon(1e-9));
  }
}

TEST_CASE("frechet_distance is symmetric and exact for shifted and scaled copies of one set") {
  auto generator = diffpost::make_generator(4);
  const auto x =
      at::randn({300, 8}, generator, torch::kFloat64).matmul(at::randn({8, 8}, generator, torch::kFloat64)) +
      0.7;
  const auto y = at::randn({150, 8}, generator, torch::kFloat64) * 1.3 - 0.2;
  CHECK(diffpost::frechet_distance(x, y) == doctest::Approx(diffpost::frechet_distance(y, x)).epsilon(1e-10));

  // x + c has the covariance of x: d^2 = |c|^2.
  const auto shift = torch::arange(8, torch::kFloat64) * 0.25 - 1.0;
  CHECK(diffpost::frechet_distance(x, x + shift) ==
        doctest::Approx(shift.square().sum().item<double>()).epsilon(1e-9));
  // k x has mean k mu and covariance k^2 S: d^2 = (k - 1)^2 (|mu|^2 + tr S).
  const auto statistics = diffpost::GaussianStatistics::of(x);
  const double k = 1.8;
  const double expected = (k - 1) * (k - 1) * (statistics.mean.squaredNorm() + statistics.covariance.trace());
  CHECK(diffpost::frechet_distance(x, k * x) == doctest::Approx(expected).epsilon(1e-9));
}

TEST_CASE("frechet_distance of large samples of two Gaussians converges to the closed form") {
  auto generator = diffpost::make_generator(5);
  const auto a = sample_gaussian(kMeanA, kCovA, 200000, generator);
  const auto b = sample_gaussian(kMeanB, kCovB, 200000, generator);
  const double estimate = diffpost::frechet_distance(a, b);
  MESSAGE("sample estimate ", estimate, " vs closed form ", kScipyDistance);
  CHECK(estimate == doctest::Approx(kScipyDistance).epsilon(0.02));
  // Any real dtype: float32 features give the float64 value up to float32 rounding of the inputs.
  CHECK(diffpost::frechet_distance(a.to(torch::kFloat32), b.to(torch::kFloat32)) ==
        doctest::Approx(estimate).epsilon(1e-5));
}

TEST_CASE("frechet_distance rejects shapes and values it cannot score, naming the shapes") {
  const auto good = torch::randn({10, 4});
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(good, torch::randn({10, 5})),
                       doctest::Contains("feature dimensions differ: shapes [10, 4] and [10, 5]"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(good, torch::randn({1, 4})),
                       doctest::Contains("at least 2 samples"), c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(torch::randn({10, 4, 2}), good),
                       doctest::Contains("got shapes [10, 4, 2] and [10, 4]"), c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(torch::randn({10}), good),
                       doctest::Contains("x.flatten(1)"), c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(good, torch::Tensor()), doctest::Contains("undefined"),
                       c10::Error);
  auto bad = good.clone();
  bad[3][1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(good, bad), doctest::Contains("NaN or infinite"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::GaussianStatistics::of(torch::randn({1, 3})), doctest::Contains("N >= 2"),
                       c10::Error);
  const auto three = diffpost::GaussianStatistics::of(torch::randn({5, 3}));
  CHECK_THROWS_WITH_AS(diffpost::frechet_distance(three, diffpost::GaussianStatistics::of(good)),
                       doctest::Contains("feature dimensions differ (3 vs 4)"), c10::Error);
  CHECK_THROWS_AS(diffpost::frechet_distance(three, diffpost::GaussianStatistics{}), c10::Error);
}

TEST_CASE("frechet_distance equals pytorch-fid's calculate_frechet_distance, also on singular covariances") {
  const auto fid = std::filesystem::path(DIFFPOST_TEST_DATA_DIR) / "metrics" / "fid";
  const auto cases = diffpost::read_state_dict(fid / "frechet_cases.pt");
  // well: N = 400, D = 32; deficient: N = 60 < D = 512 (float32 ReLU features, covariances of rank 59);
  // dead: N = 50, D = 64 with 8 features constant 0 in both sets (exactly singular covariances).
  for (const std::string pair : {"well", "deficient", "dead"}) {
    CAPTURE(pair);
    const double expected = cases.at(pair + "_fid").item<double>();
    const double value = diffpost::frechet_distance(cases.at(pair + "_a"), cases.at(pair + "_b"));
    CHECK(std::abs(value - expected) / expected < 1e-6);
  }
  // From pytorch-fid's own statistics files (np.savez_compressed as --save-stats writes, and np.savez).
  const auto a = diffpost::read_fid_statistics(fid / "stats_well_a.npz");
  const auto b = diffpost::read_fid_statistics(fid / "stats_well_b.npz");
  const auto from_files =
      diffpost::frechet_distance(diffpost::GaussianStatistics::from_tensors(a.mu, a.sigma),
                                 diffpost::GaussianStatistics::from_tensors(b.mu, b.sigma));
  CHECK(std::abs(from_files - cases.at("well_fid").item<double>()) / cases.at("well_fid").item<double>() <
        1e-6);
}

TEST_CASE("GaussianStatistics converts to and from pytorch-fid's mu and sigma tensors") {
  auto generator = diffpost::make_generator(4);
  const auto statistics = diffpost::GaussianStatistics::of(at::randn({20, 3}, generator, torch::kFloat64));
  const auto mu = statistics.mean_tensor(), sigma = statistics.covariance_tensor();
  CHECK(mu.sizes() == torch::IntArrayRef({3}));
  CHECK(sigma.sizes() == torch::IntArrayRef({3, 3}));
  for (int r = 0; r < 3; ++r) {
    CHECK(mu[r].item<double>() == statistics.mean(r));
    for (int c = 0; c < 3; ++c) CHECK(sigma[r][c].item<double>() == statistics.covariance(r, c));
  }
  const auto back = diffpost::GaussianStatistics::from_tensors(mu.to(torch::kFloat32), sigma);
  CHECK(back.covariance == statistics.covariance);
  CHECK((back.mean - statistics.mean).cwiseAbs().maxCoeff() < 1e-6);
  CHECK_THROWS_WITH_AS(
      diffpost::GaussianStatistics::from_tensors(mu, sigma.narrow(0, 0, 2)),
      doctest::Contains("expected mean [D] and covariance [D, D], got shapes [3] and [2, 3]"), c10::Error);
  auto bad = sigma.clone();
  bad[0][0] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(diffpost::GaussianStatistics::from_tensors(mu, bad),
                       doctest::Contains("NaN or infinite"), c10::Error);
}
