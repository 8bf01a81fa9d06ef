#include <diffpost/dps.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/subsample_problem.hpp"

using diffpost::testing::make_problem;
using diffpost::testing::SubsampleOperator;

using namespace diffpost;

TEST_CASE("one DPS step equals the sampler step minus scale times the closed-form residual gradient") {
  auto problem = make_problem(0.05, 11);
  const auto schedule = DiffusionSchedule::linear().respaced("100");
  DDPMSampler sampler(schedule, DDPMOptions{}.clip_denoised(false));
  const double scale = 0.7;
  DPS<GaussianLikelihood, SubsampleOperator> dps(GaussianLikelihood(0.05), SubsampleOperator{}, sampler,
                                                 DPSOptions{}.scale(scale));
  auto generator = make_generator(5);
  auto x_t = diffpost::detail::randn_like(torch::empty({1, 1, 6, 6}, torch::kFloat64), generator);
  auto noise = diffpost::detail::randn_like(x_t, generator);
  const int64_t index = 60;
  auto result = PosteriorSampler(dps).step(problem.prior, x_t, problem.y, index, noise, generator);

  // Closed form: x0_hat = mu + J (x_t - sqrt(abar) mu) with J = sqrt(abar) S M^{-1}, M = abar S + (1 - abar)
  // I, so grad_x ||y - A x0_hat|| = J^T A^T (A x0_hat - y) / ||A x0_hat - y||.
  const double abar = schedule.alphas_cumprod()[index];
  const auto s = testing::to_eigen(problem.covariance);
  const testing::Matrix m = abar * s + (1 - abar) * testing::Matrix::Identity(36, 36);
  const testing::Matrix jacobian = std::sqrt(abar) * s * m.inverse();
  const auto a =
      testing::dense_matrix([](const torch::Tensor& x) { return SubsampleOperator{}.forward(x); }, {1, 6, 6});
  const auto xt = testing::to_eigen(x_t.reshape({-1}));
  const testing::Vector x0_hat = jacobian * xt;  // mu = 0
  const testing::Vector r = a * x0_hat - testing::to_eigen(problem.y.reshape({-1}));
  const testing::Vector gradient = jacobian.transpose() * a.transpose() * r / r.norm();

  auto plain = sampler.step(problem.prior(x_t, diffpost::detail::model_timesteps(schedule, index, x_t)), x_t,
                            index, noise);
  const testing::Vector expected = testing::to_eigen(plain.x_prev.reshape({-1})) - scale * gradient;
  CHECK((testing::to_eigen(result.x_prev.reshape({-1})) - expected).cwiseAbs().maxCoeff() < 1e-9);
  CHECK(result.residual.item<double>() == doctest::Approx(r.norm()).epsilon(1e-9));
  CHECK((testing::to_eigen(result.x0_hat.reshape({-1})) - x0_hat).cwiseAbs().maxCoeff() < 1e-10);
}

TEST_CASE(
    "DPS on a Gaussian prior lands near the exact posterior mean and fits the measurement to the noise") {
  auto problem = make_problem(0.05, 21);
  PosteriorSampler dps(
      DPS<GaussianLikelihood, SubsampleOperator>(
          GaussianLikelihood(problem.sigma), SubsampleOperator{},
          DDPMSampler(DiffusionSchedule::linear().respaced("250"), DDPMOptions{}.clip_denoised(false)),
          DPSOptions{}.scale(0.5)),
      32);
  auto generator = make_generator(7);
  auto samples = dps.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  REQUIRE(samples.sizes() == torch::IntArrayRef{32, 1, 6, 6});

  const auto sample_mean = testing::to_eigen(samples.mean(0).reshape({-1}));
  const double dps_error = (sample_mean - problem.posterior.mean).norm();
  const double prior_error = problem.posterior.mean.norm();  // prior mean is 0
  INFO("||DPS mean - posterior mean|| = ", dps_error, ", ||prior mean - posterior mean|| = ", prior_error);
  CHECK(dps_error < 0.5 * prior_error);

  auto residual = (SubsampleOperator{}.forward(samples) - problem.y).reshape({32, -1});
  const double rms = residual.square().mean().sqrt().item<double>();
  const double prior_rms = problem.y.square().mean().sqrt().item<double>();
  INFO("rms residual ", rms, " (sigma ", problem.sigma, "), rms residual of the prior mean ", prior_rms);
  CHECK(rms < 3 * problem.sigma);
  CHECK(rms < 0.5 * prior_rms);
}

TEST_CASE("DPS on few-step DDIM lands near the exact posterior mean, and its samples keep their spread") {
  // The reference's DDIM path returns black images; here DPS on 25 deterministic DDIM steps must behave like
  // the 250-step DDPM case above: posterior mean, measurement fit, and samples that differ from each other.
  auto problem = make_problem(0.05, 21);
  PosteriorSampler dps(
      DPS<GaussianLikelihood, SubsampleOperator, DDIMSampler>(
          GaussianLikelihood(problem.sigma), SubsampleOperator{},
          DDIMSampler(DiffusionSchedule::linear().respaced("ddim25"), DDIMOptions{}.clip_denoised(false)),
          DPSOptions{}.scale(0.5)),
      32);
  auto generator = make_generator(7);
  auto samples = dps.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  REQUIRE(samples.sizes() == torch::IntArrayRef{32, 1, 6, 6});
  REQUIRE(samples.isfinite().all().item<bool>());

  const auto sample_mean = testing::to_eigen(samples.mean(0).reshape({-1}));
  const double ddim_error = (sample_mean - problem.posterior.mean).norm();
  const double prior_error = problem.posterior.mean.norm();
  INFO("||DPS-DDIM mean - posterior mean|| = ", ddim_error,
       ", ||prior mean - posterior mean|| = ", prior_error);
  CHECK(ddim_error < 0.5 * prior_error);

  auto residual = (SubsampleOperator{}.forward(samples) - problem.y).reshape({32, -1});
  const double rms = residual.square().mean().sqrt().item<double>();
  INFO("rms residual ", rms, " (sigma ", problem.sigma, ")");
  CHECK(rms < 3 * problem.sigma);

  // Spread over the unmeasured pixels (odd flat indices) against the exact posterior's.
  const auto flat = samples.reshape({32, -1});
  const auto unmeasured = torch::arange(1, 36, 2);
  const double spread = flat.index_select(1, unmeasured).std(0).mean().item<double>();
  double posterior_spread = 0.0;
  for (int64_t i = 1; i < 36; i += 2)
    posterior_spread += std::sqrt(problem.posterior.covariance(i, i)) / 18.0;
  INFO("mean std of unmeasured pixels: samples ", spread, ", exact posterior ", posterior_spread);
  CHECK(spread > 0.3 * posterior_spread);
  CHECK(spread < 2.0 * posterior_spread);
}

TEST_CASE("DPS runs are reproducible bit for bit from a seed, and report every step") {
  auto problem = make_problem(0.05, 31);
  PosteriorSampler dps(DPS<GaussianLikelihood, SubsampleOperator>(
                           GaussianLikelihood(0.05), SubsampleOperator{},
                           DDPMSampler(DiffusionSchedule::linear().respaced("20")), DPSOptions{}.scale(0.3)),
                       2);
  auto first_generator = make_generator(99);
  int64_t calls = 0;
  int64_t last_index = -1;
  auto first = dps.sample(problem.prior, problem.y.to(torch::kFloat32), {1, 6, 6}, first_generator,
                          [&](const StepInfo& info) {
                            ++calls;
                            last_index = info.index;
                            CHECK(info.step == calls);
                            CHECK(info.residual.sizes() == torch::IntArrayRef{2});
                          });
  auto second_generator = make_generator(99);
  auto second = dps.sample(problem.prior, problem.y.to(torch::kFloat32), {1, 6, 6}, second_generator);
  CHECK(calls == 20);
  CHECK(last_index == 0);
  CHECK((first.scalar_type() == torch::kFloat32));
  CHECK(torch::equal(first, second));
  auto third_generator = make_generator(100);
  CHECK_FALSE(torch::equal(
      first, dps.sample(problem.prior, problem.y.to(torch::kFloat32), {1, 6, 6}, third_generator)));
}

TEST_CASE("step-size schedules follow their definitions") {
  const auto schedule = DiffusionSchedule::linear().respaced("10");
  auto make = [&](StepSizeSchedule kind) {
    return DPS<GaussianLikelihood, IdentityOperator>(
        GaussianLikelihood(0.1), IdentityOperator{}, DDPMSampler(schedule),
        DPSOptions{}.scale(2.0).step_size_schedule(kind).decay_rate(3.0));
  };
  CHECK(make(StepSizeSchedule::constant).step_size(4) == 2.0);
  CHECK(make(StepSizeSchedule::linear_decay).step_size(9) == doctest::Approx(2.0));
  CHECK(make(StepSizeSchedule::linear_decay).step_size(0) == doctest::Approx(0.2));
  CHECK(make(StepSizeSchedule::exponential_decay).step_size(9) == doctest::Approx(2.0));
  CHECK(make(StepSizeSchedule::exponential_decay).step_size(0) == doctest::Approx(2.0 * std::exp(-3.0)));
}

TEST_CASE("bad DPS input is an error that names the value and what was expected") {
  const auto schedule = DiffusionSchedule::linear().respaced("10");
  CHECK_THROWS_WITH_AS(
      (DPS<GaussianLikelihood, IdentityOperator>(GaussianLikelihood(0.1), IdentityOperator{},
                                                 DDPMSampler(schedule), DPSOptions{}.scale(-1.0))),
      doctest::Contains("scale must be a finite number >= 0, got -1"), c10::Error);
  CHECK_THROWS_WITH_AS(GaussianLikelihood(-0.1), doctest::Contains("sigma must be >= 0"), c10::Error);
  PosteriorSampler dps(DPS<GaussianLikelihood, IdentityOperator>(GaussianLikelihood(0.1), IdentityOperator{},
                                                                 DDPMSampler(schedule)));
  auto prior = GaussianPrior(torch::zeros({1, 4, 4}), torch::ones({1, 4, 4}), DiffusionSchedule::linear());
  auto generator = make_generator(0);
  CHECK_THROWS_WITH_AS(dps.sample(prior, torch::zeros({1, 1, 5, 5}), {1, 4, 4}, generator),
                       doctest::Contains("measurement y has shape [1, 1, 5, 5] but the operator maps images"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(dps.sample(prior, torch::zeros({1, 1, 4, 4}), {4, 4}, generator),
                       doctest::Contains("image_shape must be [C, H, W]"), c10::Error);
  CHECK_THROWS_WITH_AS(dps.sample(prior, torch::zeros({1, 1, 4, 4}, torch::kLong), {1, 4, 4}, generator),
                       doctest::Contains("floating-point"), c10::Error);
  CHECK_THROWS_WITH_AS(dps.step(prior, torch::zeros({1, 1, 4, 4}), torch::zeros({1, 1, 4, 4}), 10,
                                torch::zeros({1, 1, 4, 4}), generator),
                       doctest::Contains("step index 10 is outside"), c10::Error);
}

TEST_CASE("a diverging run is reported with the step where it happened") {
  auto prior = GaussianPrior(torch::zeros({1, 4, 4}), torch::ones({1, 4, 4}), DiffusionSchedule::linear());
  DPS<GaussianLikelihood, IdentityOperator> dps(GaussianLikelihood(0.1), IdentityOperator{},
                                                DDPMSampler(DiffusionSchedule::linear().respaced("10")),
                                                DPSOptions{}.scale(1e300));
  auto generator = make_generator(0);
  CHECK_THROWS_WITH_AS(PosteriorSampler(dps).sample(prior, torch::ones({1, 1, 4, 4}), {1, 4, 4}, generator),
                       doctest::Contains("DPS diverged"), c10::Error);
}
