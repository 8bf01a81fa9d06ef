// DDNM, DiffPIR, PiGDM and DDRM on a correlated Gaussian prior with linear operators, against closed forms
// (Eigen) and the exact posterior.
#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/linear_problem.hpp"

using namespace diffpost;
using testing::distance_to_posterior_mean;
using testing::make_linear_problem;
using testing::make_problem;
using testing::Matrix;
using testing::rms;
using testing::SubsampleOperator;
using testing::Vector;

namespace {

/// SubsampleOperator without its pseudo-inverse: linear, nothing more.
struct AdjointOnlySubsample {
  torch::Tensor forward(const torch::Tensor& x) const { return SubsampleOperator{}.forward(x); }
  torch::Tensor adjoint(const torch::Tensor& y) const { return SubsampleOperator{}.adjoint(y); }
  Shape measurement_shape(const Shape& s) const { return SubsampleOperator{}.measurement_shape(s); }
};

/// An inpainting operator that hides its SVD, to run DDNM+'s simplified form on it.
struct InpaintingWithoutSvd {
  InpaintingOperator op;
  torch::Tensor forward(const torch::Tensor& x) const { return op.forward(x); }
  torch::Tensor adjoint(const torch::Tensor& y) const { return op.adjoint(y); }
  torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return op.pseudo_inverse(y); }
  Shape measurement_shape(const Shape& s) const { return op.measurement_shape(s); }
};

template <class Op>
concept DDNMAccepts = requires {
  typename DDNM<GaussianLikelihood, Op>;
};
template <class Op>
concept DDRMAccepts = requires {
  typename DDRM<GaussianLikelihood, Op>;
};
template <class Op>
concept PiGDMAccepts = requires {
  typename PiGDM<GaussianLikelihood, Op>;
};
template <class Op>
concept DiffPIRAccepts = requires {
  typename DiffPIR<GaussianLikelihood, Op>;
};
template <class L>
concept NoiseAcceptedByAll = requires {
  typename DDNM<L, SubsampleOperator>;
  typename DiffPIR<L, SubsampleOperator>;
  typename PiGDM<L, SubsampleOperator>;
  typename DDRM<L, InpaintingOperator>;
};

/// (A^T A + rho I)^{-1} (A^T y + rho x0) for each batch element, with the dense matrix of `op`.
template <class Op>
torch::Tensor dense_data_step(const Op& op, const torch::Tensor& x0, const torch::Tensor& y, double rho) {
  const Matrix a = testing::dense_matrix([&](const torch::Tensor& x) { return op.forward(x); }, {1, 6, 6});
  const Matrix normal = a.transpose() * a + rho * Matrix::Identity(36, 36);
  auto result = torch::empty_like(x0);
  for (int64_t b = 0; b < x0.size(0); ++b) {
    const Vector rhs =
        a.transpose() * testing::to_eigen(y[b].reshape({-1})) + rho * testing::to_eigen(x0[b].reshape({-1}));
    result[b] = testing::to_torch(normal.ldlt().solve(rhs)).view({1, 6, 6});
  }
  return result;
}

double max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

/// Checks that `samples` fit y to within `misfit_bound` times sigma (rms) and that their mean lies within
/// `mean_bound` times the prior mean's distance of the exact posterior mean.
void check_posterior_fit(const torch::Tensor& samples, const torch::Tensor& predicted,
                         const testing::Problem& problem, double misfit_bound, double mean_bound) {
  const double misfit = rms(predicted - problem.y);
  const double error = distance_to_posterior_mean(samples, problem);
  INFO("rms misfit ", misfit, ", distance to the posterior mean ", error, " (prior mean's ",
       problem.posterior.mean.norm(), ")");
  CHECK(misfit < misfit_bound * problem.sigma);
  CHECK(error < mean_bound * problem.posterior.mean.norm());
}

}  // namespace

// DDNM needs a pseudo-inverse, DDRM an SVD, PiGDM linearity; DiffPIR takes any operator.
static_assert(DDNMAccepts<SubsampleOperator> && DDNMAccepts<InpaintingOperator> &&
              DDNMAccepts<SuperResolutionOperator> && DDNMAccepts<ColorizationOperator>);
static_assert(!DDNMAccepts<AdjointOnlySubsample> && !DDNMAccepts<BlurOperator<Gaussian>> &&
              !DDNMAccepts<PhaseRetrievalOperator>);
static_assert(DDRMAccepts<InpaintingOperator> && DDRMAccepts<SuperResolutionOperator> &&
              DDRMAccepts<ColorizationOperator> && DDRMAccepts<BlurOperator<Gaussian>> &&
              DDRMAccepts<IdentityOperator>);
static_assert(!DDRMAccepts<SubsampleOperator> && !DDRMAccepts<BlurOperator<Motion>> &&
              !DDRMAccepts<PhaseRetrievalOperator>);
static_assert(PiGDMAccepts<AdjointOnlySubsample> && PiGDMAccepts<BlurOperator<Motion>> &&
              !PiGDMAccepts<PhaseRetrievalOperator> && !PiGDMAccepts<LambdaOperator>);
static_assert(DiffPIRAccepts<PhaseRetrievalOperator> && DiffPIRAccepts<BlurOperator<Motion>> &&
              DiffPIRAccepts<LambdaOperator>);
// Their closed forms need the Gaussian noise level: Poisson noise is refused.
static_assert(NoiseAcceptedByAll<GaussianLikelihood> && NoiseAcceptedByAll<NoNoise> &&
              !NoiseAcceptedByAll<PoissonLikelihood>);

TEST_CASE("restricted schedules and DiffPIR's quadratic steps") {
  const auto base = DiffusionSchedule::linear();
  const auto steps = diffpir_timesteps(100);
  REQUIRE(steps.size() == 100);
  CHECK(steps.front() == 0);
  CHECK(steps.back() == 999);
  // t_k = 999 - floor(1000 sqrt(k / 99)): k = 1 gives 999 - 100, k = 98 gives 999 - 994.
  CHECK(steps[98] == 899);
  CHECK(steps[1] == 5);
  for (size_t k = 1; k < steps.size(); ++k) CHECK(steps[k] > steps[k - 1]);
  const auto restricted = base.restricted_to(steps);
  REQUIRE(restricted.num_steps() == 100);
  for (int64_t i : {0, 1, 50, 99}) {
    CHECK(restricted.model_timestep(i) == steps[i]);
    CHECK(restricted.alphas_cumprod()[i] == doctest::Approx(base.alphas_cumprod()[steps[i]]).epsilon(1e-12));
  }
  CHECK(restricted.alphas_cumprod_prev()[0] == 1.0);
  CHECK_THROWS_WITH_AS(base.restricted_to({5, 3}), doctest::Contains("strictly increasing, got 5 then 3"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(base.restricted_to({1000}), doctest::Contains("step index 1000 is outside"),
                       c10::Error);
}

TEST_CASE("DDNM's output satisfies A x = y exactly for noise-free measurements") {
  auto problem = make_problem(0.05, 51);
  const auto schedule = DiffusionSchedule::linear().respaced("ddim50");
  SUBCASE("pseudo-inverse only") {
    const auto y = SubsampleOperator{}.forward(problem.x_true);
    PosteriorSampler ddnm(DDNM<NoNoise, SubsampleOperator>(NoNoise{}, SubsampleOperator{}, schedule), 4);
    auto generator = make_generator(1);
    const auto samples = ddnm.sample(problem.prior, y, {1, 6, 6}, generator);
    REQUIRE(samples.sizes() == torch::IntArrayRef{4, 1, 6, 6});
    CHECK(max_difference(SubsampleOperator{}.forward(samples), y.expand({4, -1})) < 1e-10);
  }
  SUBCASE("with the operator's SVD") {
    const InpaintingOperator op(testing::even_column_mask());
    const auto y = op.forward(problem.x_true);
    PosteriorSampler ddnm(DDNM<NoNoise, InpaintingOperator>(NoNoise{}, op, schedule), 4);
    auto generator = make_generator(2);
    const auto samples = ddnm.sample(problem.prior, y, {1, 6, 6}, generator);
    CHECK(max_difference(op.forward(samples), y.expand({4, -1, -1, -1})) < 1e-10);
    // The unmeasured pixels still vary between samples.
    CHECK(samples.std(0).mean().item<double>() > 0.01);
  }
}

TEST_CASE("DDNM+ fits noisy measurements to the noise and lands near the exact posterior mean") {
  auto problem = make_problem(0.05, 52);
  PosteriorSampler ddnm(
      DDNM<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(problem.sigma), SubsampleOperator{},
                                                  DiffusionSchedule::linear().respaced("ddim100")),
      32);
  auto generator = make_generator(3);
  const auto samples = ddnm.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  check_posterior_fit(samples, SubsampleOperator{}.forward(samples), problem, 2.0, 0.5);
}

TEST_CASE("DDNM+ per singular value equals its simplified form when A A^T = I") {
  auto problem = make_problem(0.05, 53);
  const InpaintingOperator op(testing::even_column_mask());
  auto generator = make_generator(4);
  const auto y = GaussianLikelihood(problem.sigma).sample(op.forward(problem.x_true), generator);
  const auto schedule = DiffusionSchedule::linear().respaced("ddim50");
  PosteriorSampler spectral(
      DDNM<GaussianLikelihood, InpaintingOperator>(GaussianLikelihood(problem.sigma), op, schedule), 3);
  PosteriorSampler simplified(DDNM<GaussianLikelihood, InpaintingWithoutSvd>(
                                  GaussianLikelihood(problem.sigma), InpaintingWithoutSvd{op}, schedule),
                              3);
  auto first = make_generator(5);
  auto second = make_generator(5);
  const auto a = spectral.sample(problem.prior, y, {1, 6, 6}, first);
  const auto b = simplified.sample(problem.prior, y, {1, 6, 6}, second);
  CHECK(max_difference(a, b) < 1e-10);
}

TEST_CASE("DiffPIR's data step equals its closed form (A^T A + rho I)^{-1} (A^T y + rho x0)") {
  const auto schedule = DiffusionSchedule::linear().restricted_to(diffpir_timesteps(100));
  const double sigma = 0.05;
  const auto options = DiffPIROptions{}.lambda(7.0);
  auto generator = make_generator(6);
  const auto x0 = diffpost::detail::randn_like(torch::empty({2, 1, 6, 6}, torch::kFloat64), generator);
  for (int64_t index : {90, 40, 5}) {
    CAPTURE(index);
    const double sigmabar = schedule.sqrt_recipm1_alphas_cumprod()[index];
    const double rho = 7.0 * (sigma / 2) * (sigma / 2) / (sigmabar * sigmabar);
    SUBCASE("linear operator without SVD: conjugate gradients") {
      DiffPIR<GaussianLikelihood, AdjointOnlySubsample> diffpir(GaussianLikelihood(sigma),
                                                                AdjointOnlySubsample{}, schedule, options);
      CHECK(diffpir.rho(index) == doctest::Approx(rho).epsilon(1e-12));
      const auto y = diffpost::detail::randn_like(torch::empty({2, 18}, torch::kFloat64), generator);
      CHECK(max_difference(diffpir.data_step(diffpir.prepare(y, x0), x0, index),
                           dense_data_step(AdjointOnlySubsample{}, x0, y, rho)) < 1e-9);
    }
    SUBCASE("operator with an SVD: closed form in its coordinates") {
      const InpaintingOperator op(testing::even_column_mask());
      DiffPIR<GaussianLikelihood, InpaintingOperator> diffpir(GaussianLikelihood(sigma), op, schedule,
                                                              options);
      const auto y = diffpost::detail::randn_like(x0, generator);
      CHECK(max_difference(diffpir.data_step(diffpir.prepare(y, x0), x0, index),
                           dense_data_step(op, x0, y, rho)) < 1e-12);
    }
    SUBCASE("operator with a forward map only: one gradient step, exact when A^T A is a projection") {
      const LambdaOperator op([](const torch::Tensor& x) { return SubsampleOperator{}.forward(x); },
                              [](const Shape& s) { return SubsampleOperator{}.measurement_shape(s); });
      DiffPIR<GaussianLikelihood, LambdaOperator> diffpir(GaussianLikelihood(sigma), op, schedule, options);
      const auto y = diffpost::detail::randn_like(torch::empty({2, 18}, torch::kFloat64), generator);
      CHECK(max_difference(diffpir.data_step(diffpir.prepare(y, x0), x0, index),
                           dense_data_step(SubsampleOperator{}, x0, y, rho)) < 1e-12);
    }
  }
}

TEST_CASE("DiffPIR lands near the exact posterior mean and fits the measurement") {
  auto problem = make_problem(0.05, 54);
  PosteriorSampler diffpir(DiffPIR<GaussianLikelihood, SubsampleOperator>(
                               GaussianLikelihood(problem.sigma), SubsampleOperator{},
                               DiffusionSchedule::linear().restricted_to(diffpir_timesteps(100)),
                               DiffPIROptions{}.clip_denoised(false)),
                           32);
  auto generator = make_generator(7);
  const auto samples = diffpir.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  check_posterior_fit(samples, SubsampleOperator{}.forward(samples), problem, 2.0, 0.5);
}

TEST_CASE("one PiGDM step equals its formula, with and without the operator's SVD") {
  const auto schedule = DiffusionSchedule::linear().respaced("ddim100");
  const double eta = 0.7, scale = 0.8, sigma = 0.05;
  const auto options = PiGDMOptions{}.eta(eta).guidance_scale(scale);
  auto problem = make_problem(sigma, 55);
  auto generator = make_generator(8);
  const auto x_t = diffpost::detail::randn_like(torch::empty({1, 1, 6, 6}, torch::kFloat64), generator);
  const auto noise = diffpost::detail::randn_like(x_t, generator);
  const int64_t index = 60;

  // Closed form: x0 = J x_t (mu = 0), J = sqrt(abar) S (abar S + (1 - abar) I)^{-1}; eps = (x_t - sqrt(abar)
  // x0) / sqrt(1 - abar); h = r^2 A^T (r^2 A A^T + sigma^2 I)^{-1} (y - A x0); g = J^T h.
  const double abar = schedule.alphas_cumprod()[index];
  const double abar_prev = schedule.alphas_cumprod_prev()[index];
  const Matrix s = testing::to_eigen(problem.covariance);
  const Matrix jacobian = std::sqrt(abar) * s * (abar * s + (1 - abar) * Matrix::Identity(36, 36)).inverse();
  const Vector xt = testing::to_eigen(x_t.reshape({-1}));
  const Vector x0 = jacobian * xt;
  const Vector eps = (xt - std::sqrt(abar) * x0) / std::sqrt(1 - abar);
  const double r2 = 1 - abar;
  const double c1 = eta * std::sqrt((1 - abar / abar_prev) * (1 - abar_prev) / (1 - abar));
  const double c2 = std::sqrt(1 - abar_prev - c1 * c1);
  auto expected_step = [&](const Matrix& a, const Vector& y) -> Vector {
    const Matrix inner = r2 * a * a.transpose() + sigma * sigma * Matrix::Identity(a.rows(), a.rows());
    const Vector h = r2 * a.transpose() * inner.ldlt().solve(y - a * x0);
    return std::sqrt(abar_prev) * x0 + c1 * testing::to_eigen(noise.reshape({-1})) + c2 * eps +
           scale * std::sqrt(abar_prev) * std::sqrt(abar) * jacobian.transpose() * h;
  };

  SUBCASE("conjugate gradients in measurement space") {
    PiGDM<GaussianLikelihood, AdjointOnlySubsample> pigdm(GaussianLikelihood(sigma), AdjointOnlySubsample{},
                                                          schedule, options);
    const auto result = PosteriorSampler(pigdm).step(problem.prior, x_t, problem.y, index, noise, generator);
    const Matrix a = testing::dense_matrix(
        [](const torch::Tensor& x) { return SubsampleOperator{}.forward(x); }, {1, 6, 6});
    const Vector expected = expected_step(a, testing::to_eigen(problem.y.reshape({-1})));
    CHECK((testing::to_eigen(result.x_prev.reshape({-1})) - expected).cwiseAbs().maxCoeff() < 1e-9);
    CHECK((testing::to_eigen(result.x0_hat.reshape({-1})) - x0).cwiseAbs().maxCoeff() < 1e-10);
  }
  SUBCASE("per singular value") {
    const InpaintingOperator op(testing::even_column_mask());
    const auto y = diffpost::detail::randn_like(x_t, generator) * 0.3;
    PiGDM<GaussianLikelihood, InpaintingOperator> pigdm(GaussianLikelihood(sigma), op, schedule, options);
    const auto result = PosteriorSampler(pigdm).step(problem.prior, x_t, y, index, noise, generator);
    const Matrix a = testing::dense_matrix([&](const torch::Tensor& x) { return op.forward(x); }, {1, 6, 6});
    const Vector expected = expected_step(a, testing::to_eigen(y.reshape({-1})));
    CHECK((testing::to_eigen(result.x_prev.reshape({-1})) - expected).cwiseAbs().maxCoeff() < 1e-10);
  }
}

TEST_CASE("PiGDM lands near the exact posterior mean and fits the measurement") {
  auto problem = make_problem(0.05, 56);
  PosteriorSampler pigdm(
      PiGDM<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(problem.sigma), SubsampleOperator{},
                                                   DiffusionSchedule::linear().respaced("ddim100")),
      32);
  auto generator = make_generator(9);
  const auto samples = pigdm.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  check_posterior_fit(samples, SubsampleOperator{}.forward(samples), problem, 2.0, 0.5);
}

TEST_CASE("DDRM on a Gaussian prior lands near the exact posterior mean, for a mask and for SR x2") {
  // The official 20 steps end with one jump from t = 50 (noise level 0.18) to 0, too coarse for this 6 x 6
  // prior to shed the noise it adds at t = 50; 100 steps here.
  const auto schedule = DiffusionSchedule::linear().respaced("ddim100");
  auto check = [&](const auto& op, uint64_t seed) {
    using Op = std::decay_t<decltype(op)>;
    auto problem = make_linear_problem(op, 0.05, seed);
    PosteriorSampler ddrm(DDRM<GaussianLikelihood, Op>(GaussianLikelihood(problem.sigma), op, schedule), 32);
    auto generator = make_generator(seed);
    const auto samples = ddrm.sample(problem.prior, problem.y, {1, 6, 6}, generator);
    const double misfit = rms(op.forward(samples) - problem.y);
    const double noise = rms(op.forward(problem.x_true) - problem.y);
    const double error = distance_to_posterior_mean(samples, problem);
    const double prior_error = problem.posterior.mean.norm();
    INFO("rms misfit ", misfit, " (the noise's ", noise, "), distance to the posterior mean ", error,
         " (prior mean's ", prior_error, ")");
    CHECK(misfit < 1.5 * noise);
    CHECK(error < 0.25 * prior_error);
  };
  SUBCASE("mask") {
    check(InpaintingOperator(testing::even_column_mask()), 57);
  }
  SUBCASE("bicubic SR x2") {
    check(SuperResolutionOperator(2), 58);
  }
}

TEST_CASE("bad options of the new methods are errors that name the value") {
  const auto schedule = DiffusionSchedule::linear().respaced("10");
  CHECK_THROWS_WITH_AS((DDNM<GaussianLikelihood, SubsampleOperator>(
                           GaussianLikelihood(0.1), SubsampleOperator{}, schedule, DDNMOptions{}.eta(1.5))),
                       doctest::Contains("DDNMOptions::eta must lie in [0, 1], got 1.5"), c10::Error);
  CHECK_THROWS_WITH_AS(
      (DiffPIR<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.1), SubsampleOperator{}, schedule,
                                                      DiffPIROptions{}.lambda(0.0))),
      doctest::Contains("DiffPIROptions::lambda must be a finite number > 0, got 0"), c10::Error);
  CHECK_THROWS_WITH_AS(
      (PiGDM<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.1), SubsampleOperator{}, schedule,
                                                    PiGDMOptions{}.guidance_scale(-1))),
      doctest::Contains("guidance_scale must be a finite number >= 0, got -1"), c10::Error);
  CHECK_THROWS_WITH_AS((DDRM<GaussianLikelihood, InpaintingOperator>(
                           GaussianLikelihood(0.1), InpaintingOperator(testing::even_column_mask()), schedule,
                           DDRMOptions{}.eta_b(2.0))),
                       doctest::Contains("DDRMOptions::eta_b must lie in [0, 1], got 2"), c10::Error);
}
