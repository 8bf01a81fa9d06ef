#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/subsample_problem.hpp"

using namespace diffpost;
using testing::distance_to_posterior_mean;
using testing::make_problem;
using testing::rms;
using testing::SubsampleOperator;

namespace {

struct NonlinearOperator {
  torch::Tensor forward(const torch::Tensor& x) const { return x.abs(); }
  Shape measurement_shape(const Shape& s) const { return s; }
};

template <class Op>
concept McgAccepts = requires {
  typename MCG<GaussianLikelihood, Op>;
};
template <class Op>
concept ProjectionAccepts = requires {
  typename ScoreSDEProjection<Op>;
};
template <class Op>
concept SDEditAccepts = requires {
  typename SDEdit<Op>;
};

}  // namespace

// Projection methods need an adjoint; SDEdit needs a naive inverse.
static_assert(McgAccepts<SubsampleOperator> && !McgAccepts<NonlinearOperator>);
static_assert(ProjectionAccepts<SubsampleOperator> && !ProjectionAccepts<NonlinearOperator>);
static_assert(SDEditAccepts<SubsampleOperator> && !SDEditAccepts<NonlinearOperator>);

TEST_CASE("projection onto the measurement set satisfies A x = y exactly") {
  auto x = torch::randn({2, 1, 6, 6}, torch::kFloat64);
  auto y = torch::randn({2, 18}, torch::kFloat64);
  auto projected = project_onto_measurements(SubsampleOperator{}, x, y);
  CHECK(torch::allclose(SubsampleOperator{}.forward(projected), y, 1e-12, 1e-12));
  // Unmeasured pixels are untouched.
  CHECK(
      torch::allclose(projected.reshape({2, -1}).slice(1, 1, 36, 2), x.reshape({2, -1}).slice(1, 1, 36, 2)));
}

TEST_CASE("MCG's output satisfies the measurement within the noise, and lands near the posterior mean") {
  auto problem = make_problem(0.05, 41);
  PosteriorSampler mcg(
      MCG<GaussianLikelihood, SubsampleOperator>(
          GaussianLikelihood(problem.sigma), SubsampleOperator{},
          DDPMSampler(DiffusionSchedule::linear().respaced("100"), DDPMOptions{}.clip_denoised(false)),
          DPSOptions{}.scale(0.5)),
      16);
  auto generator = make_generator(3);
  auto samples = mcg.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  REQUIRE(samples.sizes() == torch::IntArrayRef{16, 1, 6, 6});
  // The last projection uses sqrt(abar_0) y + sqrt(1 - abar_0) n with abar_0 = 0.9999: within 0.011 of y.
  const double misfit = rms(SubsampleOperator{}.forward(samples) - problem.y);
  INFO("rms misfit ", misfit);
  CHECK(misfit < 0.02);
  CHECK(distance_to_posterior_mean(samples, problem) < 0.5 * problem.posterior.mean.norm());
}

TEST_CASE("Score-SDE projection fits the measurement exactly up to the diffused noise") {
  auto problem = make_problem(0.05, 42);
  PosteriorSampler projection(
      ScoreSDEProjection<SubsampleOperator>(SubsampleOperator{},
                                            DDPMSampler(DiffusionSchedule::linear().respaced("100"))),
      8);
  auto generator = make_generator(4);
  auto samples = projection.sample(problem.prior, problem.y, {1, 6, 6}, generator);
  CHECK(rms(SubsampleOperator{}.forward(samples) - problem.y) < 0.02);
  // It treats y as noise-free, so unlike DPS it reproduces the measurement noise instead of averaging it out.
  CHECK(distance_to_posterior_mean(samples, problem) < problem.posterior.mean.norm());
}

TEST_CASE("ScoreALD pulls samples to the measurement and toward the posterior") {
  auto problem = make_problem(0.05, 43);
  PosteriorSampler ald(
      ScoreALD<GaussianLikelihood, SubsampleOperator>(
          GaussianLikelihood(problem.sigma), SubsampleOperator{},
          DDPMSampler(DiffusionSchedule::linear().respaced("250"), DDPMOptions{}.clip_denoised(false)),
          ScoreALDOptions{}.sigma(problem.sigma)),
      16);
  for (int64_t i : {0, 100, 249}) {
    const auto& schedule = ald.method().sampler().schedule();
    const double gamma_squared = 1.0 - schedule.alphas_cumprod()[i];
    CHECK(ald.method().step_size(i) == doctest::Approx(schedule.betas()[i] / (0.05 * 0.05 + gamma_squared)));
  }
  auto generator = make_generator(5);
  int64_t calls = 0;
  auto samples =
      ald.sample(problem.prior, problem.y, {1, 6, 6}, generator, [&](const StepInfo&) { ++calls; });
  CHECK(calls == 250);
  const double misfit = rms(SubsampleOperator{}.forward(samples) - problem.y);
  INFO("rms misfit ", misfit, ", prior rms ", rms(problem.y));
  CHECK(misfit < 3 * problem.sigma);
  CHECK(distance_to_posterior_mean(samples, problem) < 0.5 * problem.posterior.mean.norm());
}

TEST_CASE("SDEdit with t* = 0 returns its input; with t* = T it forgets it") {
  auto problem = make_problem(0.05, 44);
  const auto sampler = DDPMSampler(DiffusionSchedule::linear().respaced("50"));
  auto generator = make_generator(6);
  SDEdit<SubsampleOperator> identity(SubsampleOperator{}, sampler, SDEditOptions{}.t_star(0));
  CHECK(identity.start_index() == -1);
  CHECK(torch::equal(PosteriorSampler(identity).sample(problem.prior, problem.y, {1, 6, 6}, generator),
                     SubsampleOperator{}.naive_inverse(problem.y)));

  SDEdit<SubsampleOperator> full(SubsampleOperator{}, sampler, SDEditOptions{}.t_star(1000));
  CHECK(full.start_index() == 49);
  auto first_generator = make_generator(7);
  auto second_generator = make_generator(7);
  auto from_y = PosteriorSampler(full).sample(problem.prior, problem.y, {1, 6, 6}, first_generator);
  auto from_other = PosteriorSampler(full).sample(problem.prior, -problem.y, {1, 6, 6}, second_generator);
  // abar at t = 999 is 4e-5: the input survives with weight sqrt(abar) = 0.006 and is then mixed by the
  // prior.
  CHECK(rms(from_y - from_other) < 0.05);

  SDEdit<SubsampleOperator> partial(SubsampleOperator{}, sampler, SDEditOptions{}.t_star(250));
  CHECK(sampler.schedule().model_timestep(partial.start_index()) < 250);
  CHECK(sampler.schedule().model_timestep(partial.start_index() + 1) >= 250);
}
