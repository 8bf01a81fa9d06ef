// DAPS: its annealing levels and ODE paths on the model's discrete timesteps, its samples against the exact
// Gaussian posterior, and phase retrieval.
#include <diffpost/dps.hpp>
#include <diffpost/methods/daps.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/linear_problem.hpp"

#include <cmath>

using namespace diffpost;
using testing::make_problem;
using testing::SubsampleOperator;

namespace {

template <class Op>
concept DAPSAccepts = requires {
  typename DAPS<PoissonLikelihood, Op>;
};

}  // namespace

// DAPS differentiates the operator only: any ForwardOperator and any NoiseModel.
static_assert(DAPSAccepts<PhaseRetrievalOperator> && DAPSAccepts<LambdaOperator> &&
              DAPSAccepts<SubsampleOperator>);

TEST_CASE("DAPS's annealing levels and ODE paths follow EDM's spacing on the model's timesteps") {
  const auto model_schedule = DiffusionSchedule::linear();
  const DAPS<GaussianLikelihood, SubsampleOperator> daps(GaussianLikelihood(0.05), SubsampleOperator{},
                                                         model_schedule);
  const auto& levels = daps.schedule();
  const auto sigma_of = [&](int64_t model_step) {
    return model_schedule.sqrt_recipm1_alphas_cumprod()[model_step];
  };
  INFO("levels ", levels.num_steps(), ", network evaluations ",
       PosteriorSampler(daps).network_cost().forwards);
  // 200 levels from sigma 100 to just above 0.1, on distinct timesteps of the linear schedule (none merge).
  CHECK(levels.num_steps() == 200);
  const auto top = daps.ode_path(levels.num_steps() - 1).front();
  const auto bottom = daps.ode_path(0).front();
  CHECK(std::abs(std::log(sigma_of(top) / 100.0)) < 0.02);
  // The last level is EDM's second-to-last point, (100^(1/7) + 199/200 (0.1^(1/7) - 100^(1/7)))^7 = 0.1036.
  CHECK(std::abs(std::log(sigma_of(bottom) / 0.1036)) < 0.05);
  int64_t evaluations = 0;
  for (int64_t i = 0; i < levels.num_steps(); ++i) {
    const auto& path = daps.ode_path(i);
    CHECK(levels.model_timestep(i) == model_schedule.model_timestep(path.front()));
    for (size_t j = 1; j < path.size(); ++j) CHECK(path[j] < path[j - 1]);
    CHECK(path.back() == 0);  // the ODE ends at sigma 0.01, the first timestep's
    CHECK(path.size() <= 6);
    evaluations += static_cast<int64_t>(path.size()) - 1;
  }
  CHECK((PosteriorSampler(daps).network_cost() == NetworkCost{evaluations, 0}));
  CHECK(evaluations == 1000);  // 5 per level: the official name of these settings is DAPS-1K
  // The Langevin step decays linearly over the levels, from step_size at the first (noisiest).
  const int64_t n = levels.num_steps();
  CHECK(daps.langevin_step_size(n - 1) == doctest::Approx(1e-4));
  CHECK(daps.langevin_step_size(0) ==
        doctest::Approx(1e-4 * (1.0 + static_cast<double>(n - 1) / (n + 1) * (0.01 - 1.0))));
}

TEST_CASE("DAPS samples have the exact posterior's mean and spread when tau matches the noise") {
  // DAPS takes p(x0 | x_t) to be N(x0_hat, sigma^2 I). With x0_hat Tweedie's estimate (one ODE step), tau =
  // sqrt(2) sigma_y (the Langevin target is then the true likelihood) and annealing down to sigma 0.01, where
  // that isotropic covariance is nearly exact, the samples follow the posterior up to the Langevin
  // discretisation. A multi-step ODE's x0_hat is a transported sample rather than the conditional mean and
  // widens the samples; the official settings (tau 0.01) trade the spread for the fit.
  auto problem = make_problem(0.05, 71);
  const int64_t count = 64;
  PosteriorSampler daps(
      DAPS<GaussianLikelihood, SubsampleOperator>(
          GaussianLikelihood(problem.sigma), SubsampleOperator{}, DiffusionSchedule::linear(),
          DAPSOptions{}.sigma_min(0.01).ode_steps(1).step_size(5e-4).tau(std::sqrt(2.0) * problem.sigma)),
      count);
  auto generator = make_generator(8);
  const auto samples = daps.sample(problem.prior, problem.y, {1, 6, 6}, generator).reshape({count, -1});
  const auto mean = testing::to_eigen(samples.mean(0));
  const auto spread = testing::to_eigen(samples.std(0));
  const auto& posterior = problem.posterior;
  double worst_mean = 0.0, spread_ratio = 0.0;
  for (int64_t i = 0; i < 36; ++i) {
    const double stddev = std::sqrt(posterior.covariance(i, i));
    // The mean of `count` posterior samples is off by stddev / sqrt(count) (one standard error) on average.
    worst_mean =
        std::max(worst_mean, std::abs(mean(i) - posterior.mean(i)) / (stddev / std::sqrt(double(count))));
    spread_ratio += spread(i) / stddev / 36.0;
  }
  INFO("largest mean error ", worst_mean, " standard errors; mean spread ratio ", spread_ratio);
  CHECK(worst_mean < 4.0);
  CHECK(spread_ratio > 0.85);
  CHECK(spread_ratio < 1.15);
}

TEST_CASE("DAPS solves phase retrieval on the Gaussian prior to the noise level") {
  auto problem = make_problem(0.05, 72);
  const PhaseRetrievalOperator op(2.0);
  auto generator = make_generator(9);
  const auto y = GaussianLikelihood(problem.sigma).sample(op.forward(problem.x_true), generator);
  PosteriorSampler daps(
      DAPS<GaussianLikelihood, PhaseRetrievalOperator>(
          GaussianLikelihood(problem.sigma), op, DiffusionSchedule::linear(),
          DAPSOptions{}.annealing_steps(50).ode_steps(2).langevin_steps(50).step_size(5e-4).tau(
              std::sqrt(2.0) * problem.sigma)),
      8);
  const auto samples = daps.sample(problem.prior, y, {1, 6, 6}, generator);
  REQUIRE(samples.isfinite().all().item<bool>());
  // A posterior sample misfits y by about sqrt(2) sigma (the noise plus its own spread): every sample must
  // fit that well, far better than prior samples do, whatever the sign or shift ambiguity it resolved.
  const auto per_sample = (op.forward(samples) - y).square().reshape({8, -1}).mean(1).sqrt();
  const double truth_misfit = (op.forward(problem.x_true) - y).square().mean().sqrt().item<double>();
  const double prior_misfit =
      (op.forward(problem.prior.sample(8, generator)) - y).square().mean().sqrt().item<double>();
  INFO("rms misfits ", per_sample, ", truth's ", truth_misfit, ", prior samples' ", prior_misfit);
  CHECK(per_sample.max().item<double>() < 2 * problem.sigma);
  CHECK(per_sample.square().mean().sqrt().item<double>() < 1.5 * truth_misfit);
  CHECK(prior_misfit > 3 * truth_misfit);
}
