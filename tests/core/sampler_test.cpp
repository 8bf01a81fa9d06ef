#include <diffpost/dps.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/gaussian_posterior.hpp"

using namespace diffpost;

namespace {

// A prior with distinct per-pixel means and spreads, inside [-1, 1].
GaussianPrior diagonal_prior(double min_stddev = 0.1, double max_stddev = 0.3) {
  auto mean = torch::linspace(-0.5, 0.5, 8, torch::kFloat64).view({2, 2, 2});
  auto stddev = torch::linspace(min_stddev, max_stddev, 8, torch::kFloat64).view({2, 2, 2});
  return GaussianPrior(mean, stddev, DiffusionSchedule::linear());
}

void check_moments(const torch::Tensor& samples, const GaussianPrior& prior, double mean_tol,
                   double var_rel_tol) {
  auto flat = samples.reshape({samples.size(0), -1});
  auto mean_error = (flat.mean(0) - prior.mean().reshape({-1})).abs().max().item<double>();
  auto variance = flat.var(0);
  auto expected_variance = torch::diagonal(prior.covariance());
  auto var_error = ((variance - expected_variance).abs() / expected_variance).max().item<double>();
  INFO("max mean error ", mean_error, ", max relative variance error ", var_error);
  CHECK(mean_error < mean_tol);
  CHECK(var_error < var_rel_tol);
}

}  // namespace

TEST_CASE("DDPM sampling from the exact Gaussian score reproduces the prior's mean and variance") {
  auto prior = diagonal_prior();
  auto generator = make_generator(1);
  const int64_t n = 4000;  // standard error of a variance estimate: sqrt(2 / n) = 2.2 %
  SUBCASE("fixed large variance, 1000 steps") {
    DDPMSampler sampler(DiffusionSchedule::linear(), DDPMOptions{}.clip_denoised(false));
    check_moments(sample_unconditional(prior, sampler, {n, 2, 2, 2}, generator, torch::kFloat64), prior, 0.02,
                  0.1);
  }
  SUBCASE("fixed small variance, 1000 steps") {
    DDPMSampler sampler(DiffusionSchedule::linear(),
                        DDPMOptions{}.clip_denoised(false).variance(VarianceType::fixed_small));
    check_moments(sample_unconditional(prior, sampler, {n, 2, 2, 2}, generator, torch::kFloat64), prior, 0.02,
                  0.1);
  }
}

TEST_CASE("DDIM sampling from the exact Gaussian score reproduces the prior's moments") {
  // Few-step DDIM under-disperses narrow distributions (a numpy re-derivation gives variance ratios 0.77 for
  // stddev 0.1 and 0.95 for 0.5 at 100 steps, eta = 0), so this prior is wider than the DDPM test's.
  auto prior = diagonal_prior(0.5, 0.8);
  auto generator = make_generator(2);
  for (auto [eta, spacing] : {std::pair{0.0, "ddim100"}, std::pair{1.0, "ddim250"}}) {
    CAPTURE(eta);
    DDIMSampler sampler(DiffusionSchedule::linear().respaced(spacing),
                        DDIMOptions{}.eta(eta).clip_denoised(false));
    check_moments(sample_unconditional(prior, sampler, {4000, 2, 2, 2}, generator, torch::kFloat64), prior,
                  0.02, 0.1);
  }
}

TEST_CASE("the sampler's Tweedie x0_hat equals the closed-form posterior mean E[x0 | x_t]") {
  const auto schedule = DiffusionSchedule::linear();
  auto covariance = testing::smooth_covariance(4, 4, 0.4, 1.5);
  auto mean = torch::linspace(-0.3, 0.3, 16, torch::kFloat64).view({1, 4, 4});
  auto prior = GaussianPrior::with_covariance(mean, covariance, schedule);
  auto generator = make_generator(3);
  for (int64_t index : {10, 300, 900}) {
    CAPTURE(index);
    auto x_t = diffpost::detail::randn_like(torch::empty({3, 1, 4, 4}, torch::kFloat64), generator);
    auto x0_hat = tweedie_denoise(prior, schedule, x_t, index, /*clip=*/false);
    // Independent closed form with Eigen: mu + sqrt(abar) S (abar S + (1 - abar) I)^{-1} (x_t - sqrt(abar)
    // mu).
    const double abar = schedule.alphas_cumprod()[index];
    const auto s = testing::to_eigen(covariance);
    const auto mu = testing::to_eigen(mean.reshape({-1}));
    const testing::Matrix m = abar * s + (1 - abar) * testing::Matrix::Identity(16, 16);
    for (int64_t b = 0; b < 3; ++b) {
      const auto xt = testing::to_eigen(x_t[b].reshape({-1}));
      const testing::Vector expected = mu + std::sqrt(abar) * s * m.ldlt().solve(xt - std::sqrt(abar) * mu);
      const auto got = testing::to_eigen(x0_hat[b].reshape({-1}));
      CHECK((got - expected).cwiseAbs().maxCoeff() < 1e-10);
    }
    auto direct = prior.posterior_mean_x0(x_t, diffpost::detail::model_timesteps(schedule, index, x_t));
    CHECK(torch::allclose(direct, x0_hat, 1e-10, 1e-10));
  }
}

TEST_CASE("learned_range interpolates between log beta and the clipped posterior log variance") {
  const auto schedule = DiffusionSchedule::linear().respaced("50");
  DDPMSampler sampler(schedule, DDPMOptions{}.clip_denoised(false));
  auto x_t = torch::randn({1, 3, 2, 2}, torch::kFloat64);
  auto eps = torch::randn_like(x_t);
  auto noise = torch::randn_like(x_t);
  const int64_t index = 20;
  auto mean = posterior_mean(schedule, predict_x0_from_eps(schedule, x_t, eps, index, false), x_t, index);
  auto upper = sampler.step(torch::cat({eps, torch::ones_like(eps)}, 1), x_t, index, noise).x_prev;
  auto lower = sampler.step(torch::cat({eps, -torch::ones_like(eps)}, 1), x_t, index, noise).x_prev;
  CHECK(torch::allclose(upper, mean + std::sqrt(schedule.betas()[index]) * noise, 1e-12, 1e-12));
  CHECK(torch::allclose(lower, mean + std::sqrt(schedule.posterior_variance()[index]) * noise, 1e-12, 1e-12));
  // The last step adds no noise.
  CHECK(torch::allclose(sampler.step(torch::cat({eps, eps}, 1), x_t, 0, noise).x_prev,
                        posterior_mean(schedule, predict_x0_from_eps(schedule, x_t, eps, 0, false), x_t, 0)));
}

TEST_CASE(
    "one step for the batch and one step per sample give the same x0_hat, posterior mean and variance") {
  const auto schedule = DiffusionSchedule::linear().respaced("50");
  auto x_t = torch::randn({3, 2, 4, 4}, torch::kFloat64);
  auto eps = torch::randn_like(x_t);
  auto v = torch::rand_like(x_t) * 2.0 - 1.0;
  const std::vector<int64_t> steps{0, 17, 49};
  const auto indices = torch::tensor(steps, torch::kLong);
  const auto x0_hat = predict_x0_from_eps(schedule, x_t, eps, indices, true);
  const auto mean = posterior_mean(schedule, x0_hat, x_t, indices);
  const auto log_variance = learned_range_log_variance(schedule, v, indices);
  for (int64_t b = 0; b < 3; ++b) {
    const auto index = steps[static_cast<size_t>(b)];
    const auto one = [&](const torch::Tensor& x) { return x.narrow(0, b, 1); };
    const auto x0_one = predict_x0_from_eps(schedule, one(x_t), one(eps), index, true);
    CHECK(torch::allclose(x0_hat.narrow(0, b, 1), x0_one, 1e-14, 1e-14));
    CHECK(torch::allclose(mean.narrow(0, b, 1), posterior_mean(schedule, x0_one, one(x_t), index), 1e-14,
                          1e-14));
    // Improved DDPM eq. 15 written out: frac log beta + (1 - frac) log beta~, frac = (v + 1) / 2.
    const auto frac = (one(v) + 1.0) / 2.0;
    const auto expected =
        frac * std::log(schedule.betas()[static_cast<size_t>(index)]) +
        (1.0 - frac) * schedule.posterior_log_variance_clipped()[static_cast<size_t>(index)];
    CHECK(torch::allclose(log_variance.narrow(0, b, 1), expected, 1e-14, 1e-14));
    CHECK(torch::allclose(learned_range_log_variance(schedule, one(v), index), expected, 1e-14, 1e-14));
  }
}

TEST_CASE("samplers reject outputs and noise that do not fit x_t") {
  DDPMSampler sampler(DiffusionSchedule::linear().respaced("10"));
  auto x_t = torch::zeros({1, 3, 4, 4});
  CHECK_THROWS_WITH_AS(sampler.step(torch::zeros({1, 5, 4, 4}), x_t, 3, torch::zeros_like(x_t)),
                       doctest::Contains("model output has 5 channels but x_t has 3"), c10::Error);
  CHECK_THROWS_WITH_AS(sampler.step(torch::zeros({1, 3, 4, 4}), x_t, 3, torch::zeros({1, 3, 2, 2})),
                       doctest::Contains("noise shape"), c10::Error);
  CHECK_THROWS_WITH_AS(sampler.step(torch::zeros({1, 3, 4, 4}), x_t, 10, torch::zeros_like(x_t)),
                       doctest::Contains("step index 10 is outside"), c10::Error);
  DDPMSampler learned(DiffusionSchedule::linear().respaced("10"),
                      DDPMOptions{}.variance(VarianceType::learned_range));
  CHECK_THROWS_WITH_AS(learned.step(torch::zeros({1, 3, 4, 4}), x_t, 3, torch::zeros_like(x_t)),
                       doctest::Contains("learned_range needs a model output of 6 channels"), c10::Error);
}

TEST_CASE("the two forms of the noise implied by x0 agree, and invert Tweedie's estimate") {
  const auto schedule = DiffusionSchedule::linear().respaced("50");
  const auto x_t = torch::randn({2, 1, 4, 4}, torch::kFloat64);
  const auto eps = torch::randn_like(x_t);
  for (int64_t index : {0, 17, 49}) {
    const auto x0 = predict_x0_from_eps(schedule, x_t, eps, index, false);
    CHECK(torch::allclose(predict_eps_from_x0(schedule, x_t, x0, index, EpsForm::guided_diffusion), eps, 1e-9,
                          1e-9));
    CHECK(torch::allclose(predict_eps_from_x0(schedule, x_t, x0, index, EpsForm::forward_process), eps, 1e-9,
                          1e-9));
    // The forward process from x0 with that noise gives x_t back.
    CHECK(torch::allclose(q_sample(schedule, x0, index, eps), x_t, 1e-9, 1e-9));
  }
}

TEST_CASE("q_sample_previous diffuses to the step before, and is x0 itself at the last step") {
  const auto schedule = DiffusionSchedule::linear().respaced("20");
  const auto x0 = torch::randn({1, 1, 3, 3}, torch::kFloat64);
  const auto noise = torch::randn_like(x0);
  const double abar_prev = schedule.alphas_cumprod_prev()[7];
  CHECK(torch::allclose(q_sample_previous(schedule, x0, 7, noise),
                        std::sqrt(abar_prev) * x0 + std::sqrt(1.0 - abar_prev) * noise, 1e-15, 1e-15));
  CHECK(torch::equal(q_sample_previous(schedule, x0, 0, noise), x0));
}

TEST_CASE("DDIM's coefficients keep x_{t-1}'s variance, and eta = 1 gives DDPM's posterior noise") {
  const auto schedule = DiffusionSchedule::linear().respaced("ddim25");
  for (int64_t index : {1, 12, 24}) {
    const double abar_prev = schedule.alphas_cumprod_prev()[index];
    for (double eta : {0.0, 0.5, 1.0}) {
      const auto c = ddim_coefficients(schedule, index, eta);
      CHECK(c.noise_scale * c.noise_scale + c.eps_scale * c.eps_scale == doctest::Approx(1.0 - abar_prev));
    }
    CHECK(ddim_coefficients(schedule, index, 0.0).noise_scale == 0.0);
    CHECK(ddim_coefficients(schedule, index, 1.0).noise_scale ==
          doctest::Approx(std::sqrt(schedule.posterior_variance()[index])));
    CHECK(DDIMSampler(schedule, DDIMOptions{}.eta(0.5)).sigma(index) ==
          ddim_coefficients(schedule, index, 0.5).noise_scale);
  }
}

TEST_CASE("nearest_step finds the step whose noise-to-signal ratio is closest in log scale") {
  const auto schedule = DiffusionSchedule::linear();
  const auto& ratio = schedule.sqrt_recipm1_alphas_cumprod();
  for (int64_t step : {0, 10, 250, 999}) CHECK(schedule.nearest_step(ratio[step]) == step);
  // Between two steps, the geometric midpoint decides.
  const double low = ratio[100], high = ratio[101];
  CHECK(schedule.nearest_step(std::sqrt(low * high) * 0.999) == 100);
  CHECK(schedule.nearest_step(std::sqrt(low * high) * 1.001) == 101);
  CHECK(schedule.nearest_step(0.0) == 0);
  CHECK(schedule.nearest_step(1e9) == 999);
  CHECK_THROWS_WITH_AS(static_cast<void>(schedule.nearest_step(-1.0)),
                       doctest::Contains("sigma must be >= 0, got -1"), c10::Error);
}
