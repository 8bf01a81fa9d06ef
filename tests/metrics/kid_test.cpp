// KID: the unbiased MMD^2 against a brute-force double loop, the subset average against the full-set value
// and against the closed form of two 1-D Gaussians under the cubic kernel, seeding, and the errors.
#include <diffpost/metrics/kid.hpp>
#include <diffpost/random.hpp>

#include "support/error_of.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <array>
#include <cmath>
#include <string>

using diffpost::KidOptions;
using diffpost::testing::error_of;

namespace {

// sum over i != j of k(a_i, a_j) / (m(m-1)) + the same for b - 2 sum over all i, j of k(a_i, b_j) / (mn),
// with k(x, y) = (x.y / D + 1)^3, by plain loops over the rows.
double brute_force_mmd2(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = a.to(torch::kFloat64).contiguous(), y = b.to(torch::kFloat64).contiguous();
  const int64_t m = x.size(0), n = y.size(0), d = x.size(1);
  const auto kernel = [d](const torch::Tensor& u, int64_t i, const torch::Tensor& v, int64_t j) {
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) dot += u[i][c].item<double>() * v[j][c].item<double>();
    return std::pow(dot / static_cast<double>(d) + 1.0, 3);
  };
  double within_a = 0.0, within_b = 0.0, across = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j)
      if (i != j) within_a += kernel(x, i, x, j);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (i != j) within_b += kernel(y, i, y, j);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) across += kernel(x, i, y, j);
  const double dm = static_cast<double>(m), dn = static_cast<double>(n);
  return within_a / (dm * (dm - 1)) + within_b / (dn * (dn - 1)) - 2.0 * across / (dm * dn);
}

// E (x x' + 1)^3 for independent 1-D x ~ N(mu_1, s_1^2), x' ~ N(mu_2, s_2^2):
//   E x^3 E x'^3 + 3 E x^2 E x'^2 + 3 E x E x' + 1.
double expected_cubic_kernel(double mu_1, double s_1, double mu_2, double s_2) {
  const auto moments = [](double mu, double s) {
    return std::array<double, 3>{mu, mu * mu + s * s, mu * mu * mu + 3.0 * mu * s * s};
  };
  const auto p = moments(mu_1, s_1), q = moments(mu_2, s_2);
  return p[2] * q[2] + 3.0 * p[1] * q[1] + 3.0 * p[0] * q[0] + 1.0;
}

}  // namespace

TEST_CASE("polynomial_mmd2_unbiased equals the double loop over pairs") {
  auto generator = diffpost::make_generator(5);
  const auto a = at::randn({6, 3}, generator, torch::kFloat64);
  const auto b = at::randn({8, 3}, generator, torch::kFloat64) * 1.5 + 0.3;
  const double expected = brute_force_mmd2(a, b);
  CHECK(diffpost::polynomial_mmd2_unbiased(a, b) == doctest::Approx(expected).epsilon(1e-12));
  CHECK(diffpost::polynomial_mmd2_unbiased(a.to(torch::kFloat32), b) ==
        doctest::Approx(brute_force_mmd2(a.to(torch::kFloat32), b)).epsilon(1e-12));
  // Symmetric, and the explicit kernel parameters are those of the default.
  CHECK(diffpost::polynomial_mmd2_unbiased(b, a) == doctest::Approx(expected).epsilon(1e-12));
  CHECK(diffpost::polynomial_mmd2_unbiased(a, b, 3, 1.0 / 3.0, 1.0) ==
        doctest::Approx(expected).epsilon(1e-12));
}

TEST_CASE("KID over subsets as large as the sets is the full-set estimate, with no spread") {
  auto generator = diffpost::make_generator(6);
  const auto a = at::randn({12, 4}, generator, torch::kFloat64);
  const auto b = at::randn({12, 4}, generator, torch::kFloat64) + 0.5;
  const auto kid = diffpost::kernel_inception_distance(a, b, KidOptions{}.subsets(7));
  CHECK(kid.subset_size == 12);  // the default 1000 is capped at the set size
  CHECK(kid.subsets == 7);
  CHECK(kid.mean == doctest::Approx(brute_force_mmd2(a, b)).epsilon(1e-12));
  CHECK(kid.std < 1e-12 * std::abs(kid.mean));  // every subset is a permutation of the sets
  // Sets of different sizes: subsets of the smaller size, drawn from both.
  const auto longer = torch::cat({b, b + 0.1});
  const auto mixed = diffpost::kernel_inception_distance(a, longer, KidOptions{}.subsets(5).seed(3));
  CHECK(mixed.subset_size == 12);
  CHECK(mixed.std > 0.0);
}

TEST_CASE("KID is reproducible from its seed, and its subsets are drawn without replacement") {
  auto generator = diffpost::make_generator(7);
  const auto a = at::randn({60, 5}, generator, torch::kFloat64);
  const auto b = at::randn({50, 5}, generator, torch::kFloat64) * 1.2;
  const auto options = KidOptions{}.subsets(20).subset_size(10);
  const auto first = diffpost::kernel_inception_distance(a, b, options);
  const auto again = diffpost::kernel_inception_distance(a, b, options);
  CHECK(first.mean == again.mean);
  CHECK(first.std == again.std);
  const auto other = diffpost::kernel_inception_distance(a, b, KidOptions(options).seed(99));
  CHECK(other.mean != first.mean);
  // The first subset of seed 2020 by hand: randperm(60)[:10], then randperm(50)[:10], on one CPU generator.
  auto draw = diffpost::make_generator(2020);
  const auto ia = torch::randperm(60, draw, torch::kLong).narrow(0, 0, 10);
  const auto ib = torch::randperm(50, draw, torch::kLong).narrow(0, 0, 10);
  const auto one = diffpost::kernel_inception_distance(a, b, KidOptions{}.subsets(1).subset_size(10));
  CHECK(one.mean ==
        doctest::Approx(brute_force_mmd2(a.index_select(0, ia), b.index_select(0, ib))).epsilon(1e-12));
}

TEST_CASE("KID converges to the closed-form MMD^2 of two Gaussians, and to 0 for one distribution") {
  // 1-D sets (D = 1, so k(x, y) = (x y + 1)^3) of 20,000 samples: beyond 4096 per side each subset computes
  // its own kernels. The unbiased estimate's expectation is the population MMD^2 for any subset size.
  auto generator = diffpost::make_generator(8);
  const double mu_a = 0.0, s_a = 1.0, mu_b = 0.5, s_b = 1.2;
  const auto a = at::randn({20000, 1}, generator, torch::kFloat64) * s_a + mu_a;
  const auto b = at::randn({20000, 1}, generator, torch::kFloat64) * s_b + mu_b;
  const double closed_form = expected_cubic_kernel(mu_a, s_a, mu_a, s_a) +
                             expected_cubic_kernel(mu_b, s_b, mu_b, s_b) -
                             2.0 * expected_cubic_kernel(mu_a, s_a, mu_b, s_b);
  CHECK(closed_form == doctest::Approx(7.3998).epsilon(1e-4));  // 4 + 15.5398 - 2 * 6.07, by hand
  const auto kid = diffpost::kernel_inception_distance(a, b);
  CHECK(kid.subset_size == 1000);
  // 100 nearly independent subsets: the mean's standard error is about std / 10.
  CHECK(std::abs(kid.mean - closed_form) < 3.0 * kid.std / std::sqrt(100.0));
  const auto same = diffpost::kernel_inception_distance(a, at::randn({20000, 1}, generator, torch::kFloat64));
  CHECK(std::abs(same.mean) < 3.0 * same.std / std::sqrt(100.0));
  CHECK(same.mean < 0.05 * kid.mean);
}

TEST_CASE("KID refuses feature sets it cannot compare") {
  const auto a = torch::zeros({4, 3}), b = torch::zeros({4, 2});
  CHECK(error_of([&] { diffpost::kernel_inception_distance(a, b); }).find("feature dimensions differ") !=
        std::string::npos);
  CHECK(error_of([&] {
          diffpost::kernel_inception_distance(torch::zeros({1, 3}), a);
        }).find("need at least 2 samples") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::kernel_inception_distance(torch::zeros({3}), a);
        }).find("expected features_a [N, D]") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::kernel_inception_distance(a, a, KidOptions{}.subsets(0));
        }).find("subsets must be >= 1") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::kernel_inception_distance(a, a, KidOptions{}.subset_size(1));
        }).find("subset_size must be >= 2") != std::string::npos);
  auto nan = torch::zeros({4, 3});
  nan[0][0] = std::nan("");
  CHECK(error_of([&] {
          diffpost::kernel_inception_distance(nan, a);
        }).find("contain NaN or infinite values") != std::string::npos);
}
