// Noise models: sample moments against the closed forms, data-fidelity residuals against hand computations.
#include <diffpost/noise.hpp>
#include <diffpost/operators/identity.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

#include <cmath>

using namespace diffpost;
using torch::Tensor;

static_assert(NoiseModel<GaussianLikelihood> && NoiseModel<PoissonLikelihood> && NoiseModel<NoNoise>);
static_assert(!NoiseModel<IdentityOperator> && !ForwardOperator<PoissonLikelihood>);

TEST_CASE("Poisson noise has the reference's mean and variance: E y = A x, Var y = 4 p / (255 rate)") {
  const int64_t n = 200000;
  for (auto [rate, clean_value] : {std::pair{1.0, 0.2}, {0.1, -0.5}}) {
    CAPTURE(rate);
    auto generator = make_generator(21);
    const auto clean = torch::full({4, 1, 250, n / 1000}, clean_value, torch::kFloat64);
    const auto y = PoissonLikelihood(rate).sample(clean, generator);
    REQUIRE(y.sizes() == clean.sizes());
    const double p = (clean_value + 1.0) / 2.0;
    const double variance = 4.0 * p / (255.0 * rate);
    const double standard_error = std::sqrt(variance / static_cast<double>(n));
    CHECK(std::abs(y.mean().item<double>() - clean_value) < 5.0 * standard_error);
    CHECK(y.var().item<double>() == doctest::Approx(variance).epsilon(0.03));
    // y lives on the 8-bit photon grid: (y + 1) / 2 * 255 rate is an integer count
    const auto counts = (y + 1.0) / 2.0 * 255.0 * rate;
    CHECK((counts - counts.round()).abs().max().item<double>() < 1e-9);
    CHECK(y.min().item<double>() >= -1.0);
    CHECK(y.max().item<double>() <= 1.0);
  }
  auto a = make_generator(3), b = make_generator(3);
  const auto clean = torch::zeros({1, 3, 8, 8});
  CHECK(torch::equal(PoissonLikelihood(1.0).sample(clean, a), PoissonLikelihood(1.0).sample(clean, b)));
  CHECK(PoissonLikelihood(1.0).sample(clean, a).dtype() == torch::kFloat32);
}

TEST_CASE("Gaussian noise has mean A x and variance sigma^2") {
  auto generator = make_generator(22);
  const auto clean = torch::full({2, 3, 200, 200}, 0.3, torch::kFloat64);
  const auto y = GaussianLikelihood(0.05).sample(clean, generator);
  const double n = static_cast<double>(clean.numel());
  CHECK(std::abs(y.mean().item<double>() - 0.3) < 5.0 * 0.05 / std::sqrt(n));
  CHECK(y.var().item<double>() == doctest::Approx(0.0025).epsilon(0.03));
  auto a = make_generator(4), b = make_generator(4);
  CHECK(torch::equal(GaussianLikelihood(0.05).sample(clean, a), GaussianLikelihood(0.05).sample(clean, b)));
}

TEST_CASE("Poisson residual is the reference's mean(||y - A x||_2 / |y|), per batch element") {
  const PoissonLikelihood poisson(1.0);
  const auto y = torch::tensor({0.5, -0.25, 1.0, 0.2, 0.1, -0.8}, torch::kFloat64).view({2, 1, 1, 3});
  const auto predicted = torch::tensor({0.3, 0.0, 0.5, 0.2, 0.4, -0.4}, torch::kFloat64).view({2, 1, 1, 3});
  const auto r = poisson.data_fidelity(y, predicted);
  REQUIRE(r.sizes() == torch::IntArrayRef({2}));
  const double norm0 = std::sqrt(0.2 * 0.2 + 0.25 * 0.25 + 0.5 * 0.5);
  const double norm1 = std::sqrt(0.0 + 0.3 * 0.3 + 0.4 * 0.4);
  CHECK(r[0].item<double>() == doctest::Approx(norm0 * (1 / 0.5 + 1 / 0.25 + 1 / 1.0) / 3).epsilon(1e-12));
  CHECK(r[1].item<double>() == doctest::Approx(norm1 * (1 / 0.2 + 1 / 0.1 + 1 / 0.8) / 3).epsilon(1e-12));
  SUBCASE("a zero measurement is floored at 1 / (255 rate) instead of dividing by zero") {
    const PoissonLikelihood rate2(2.0);
    const auto y0 = torch::tensor({0.0, 0.5}, torch::kFloat64).view({1, 1, 1, 2});
    const auto x = torch::tensor({0.1, 0.5}, torch::kFloat64).view({1, 1, 1, 2}).requires_grad_(true);
    const auto r0 = rate2.data_fidelity(y0, x);
    CHECK(r0.item<double>() == doctest::Approx(0.1 * (510.0 + 2.0) / 2).epsilon(1e-12));
    r0.sum().backward();
    CHECK(torch::isfinite(x.grad()).all().item<bool>());
  }
}

TEST_CASE("NoNoise returns the clean measurement and the plain L2 residual") {
  auto generator = make_generator(5);
  const auto clean = torch::randn({2, 3, 4, 4});
  CHECK(torch::equal(NoNoise{}.sample(clean, generator), clean));
  const auto predicted = torch::zeros_like(clean);
  const auto r = NoNoise{}.data_fidelity(clean, predicted);
  CHECK(torch::allclose(r, clean.flatten(1).pow(2).sum(1).sqrt()));
}
