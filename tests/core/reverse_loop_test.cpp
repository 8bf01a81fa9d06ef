// The one reverse loop: what it reports per step, and the network work every method says a run costs, counted
// on the model itself.
#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/linear_problem.hpp"

#include <vector>

using namespace diffpost;
using testing::CountingModel;
using testing::make_problem;
using testing::SubsampleOperator;

TEST_CASE("step reports hold their tensors by value: a callback may keep them") {
  auto problem = make_problem(0.05, 62);
  PosteriorSampler dps(DPS<GaussianLikelihood, SubsampleOperator>(
                           GaussianLikelihood(0.05), SubsampleOperator{},
                           DDPMSampler(DiffusionSchedule::linear().respaced("10")), DPSOptions{}.scale(0.3)),
                       2);
  std::vector<StepInfo> kept;
  auto generator = make_generator(2);
  const auto result = dps.sample(problem.prior, problem.y, {1, 6, 6}, generator,
                                 [&](const StepInfo& info) { kept.push_back(info); });
  REQUIRE(kept.size() == 10);
  CHECK(kept.back().index == 0);
  CHECK(kept.front().num_steps == 10);
  CHECK(torch::equal(kept.back().x, result));
  for (const auto& info : kept) {
    CHECK_FALSE(info.x.requires_grad());
    CHECK_FALSE(info.x0_hat.requires_grad());
    CHECK(info.residual.sizes() == torch::IntArrayRef{2});
  }
  // Each report kept its own step's values.
  CHECK_FALSE(torch::equal(kept[3].x, kept[4].x));
  CHECK_FALSE(torch::equal(kept[3].x0_hat, kept[4].x0_hat));
}

TEST_CASE("every method's network_cost() is the work a run does on the network") {
  auto problem = make_problem(0.05, 61);
  const auto y = problem.y;
  const InpaintingOperator mask(testing::even_column_mask());
  const auto y_image = mask.forward(problem.x_true);
  const auto ddpm = DDPMSampler(DiffusionSchedule::linear().respaced("12"));
  const auto schedule = DiffusionSchedule::linear().respaced("ddim10");
  // Runs `method` with a model that counts its evaluations and the backpropagations through them.
  auto check = [&](const auto& method, const torch::Tensor& measurement, NetworkCost expected) {
    const PosteriorSampler sampler(method);
    CHECK(sampler.network_cost() == expected);
    CountingModel model{&problem.prior};
    auto generator = make_generator(1);
    sampler.sample(model, measurement, {1, 6, 6}, generator);
    CHECK(model.cost().forwards == expected.forwards);
    CHECK(model.cost().backwards == expected.backwards);
  };
  SUBCASE("DPS and MCG: one forward and one backward per step") {
    check(DPS<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{}, ddpm), y,
          {12, 12});
    check(MCG<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{}, ddpm), y,
          {12, 12});
  }
  SUBCASE("projection, ScoreALD and SDEdit: forwards only") {
    check(ScoreSDEProjection<SubsampleOperator>(SubsampleOperator{}, ddpm), y, {12, 0});
    check(
        ScoreALD<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{}, ddpm),
        y, {12, 0});
    const SDEdit<SubsampleOperator> sdedit(SubsampleOperator{}, ddpm, SDEditOptions{}.t_star(500));
    check(sdedit, y, {sdedit.start_index() + 1, 0});
    CHECK((unconditional_network_cost(ddpm) == NetworkCost{12, 0}));
  }
  SUBCASE("DDNM, DiffPIR, DDRM: forwards only; PiGDM: a backward per step") {
    check(
        DDNM<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{}, schedule),
        y, {10, 0});
    check(DiffPIR<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{},
                                                         schedule),
          y, {10, 0});
    check(DDRM<GaussianLikelihood, InpaintingOperator>(GaussianLikelihood(0.05), mask, schedule), y_image,
          {10, 0});
    check(
        PiGDM<GaussianLikelihood, SubsampleOperator>(GaussianLikelihood(0.05), SubsampleOperator{}, schedule),
        y, {10, 10});
  }
  SUBCASE("DAPS: the ODE's evaluations at every level") {
    const DAPS<GaussianLikelihood, SubsampleOperator> daps(
        GaussianLikelihood(0.05), SubsampleOperator{}, DiffusionSchedule::linear(),
        DAPSOptions{}.annealing_steps(8).ode_steps(3).langevin_steps(2));
    int64_t expected = 0;
    for (int64_t i = 0; i < daps.schedule().num_steps(); ++i)
      expected += std::max<int64_t>(1, static_cast<int64_t>(daps.ode_path(i).size()) - 1);
    CHECK(expected > daps.schedule().num_steps());
    check(daps, y, {expected, 0});
  }
}
