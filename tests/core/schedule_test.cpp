#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

using diffpost::DiffusionSchedule;

TEST_CASE("linear betas follow numpy.linspace(1e-4, 0.02, 1000) and derived coefficients their definitions") {
  const auto schedule = DiffusionSchedule::linear();
  REQUIRE(schedule.num_steps() == 1000);
  CHECK(schedule.betas().front() == 1e-4);
  CHECK(schedule.betas().back() == 0.02);
  CHECK(schedule.betas()[1] == doctest::Approx(1e-4 + (0.02 - 1e-4) / 999.0).epsilon(1e-15));
  // Values printed by numpy.cumprod(1 - numpy.linspace(1e-4, 0.02, 1000)) in float64.
  CHECK(schedule.alphas_cumprod()[0] == doctest::Approx(0.9999).epsilon(1e-15));
  CHECK(schedule.alphas_cumprod()[1] == doctest::Approx(0.9997800920720721).epsilon(1e-14));
  CHECK(schedule.alphas_cumprod()[499] == doctest::Approx(0.07858724288177824).epsilon(1e-12));
  CHECK(schedule.alphas_cumprod()[999] == doctest::Approx(4.035829765375676e-05).epsilon(1e-10));

  const int i = 500;
  const double beta = schedule.betas()[i];
  const double abar = schedule.alphas_cumprod()[i];
  const double abar_prev = schedule.alphas_cumprod()[i - 1];
  CHECK(schedule.alphas_cumprod_prev()[i] == abar_prev);
  CHECK(schedule.alphas_cumprod_prev()[0] == 1.0);
  CHECK(schedule.posterior_variance()[i] == doctest::Approx(beta * (1 - abar_prev) / (1 - abar)));
  CHECK(schedule.posterior_mean_coef1()[i] == doctest::Approx(beta * std::sqrt(abar_prev) / (1 - abar)));
  CHECK(schedule.posterior_mean_coef2()[i] ==
        doctest::Approx((1 - abar_prev) * std::sqrt(1 - beta) / (1 - abar)));
  CHECK(schedule.sqrt_recip_alphas_cumprod()[i] == doctest::Approx(1 / std::sqrt(abar)));
  CHECK(schedule.sqrt_recipm1_alphas_cumprod()[i] == doctest::Approx(std::sqrt(1 / abar - 1)));
  // The clipped log variance replaces the zero at t = 0 by the value at t = 1.
  CHECK(schedule.posterior_variance()[0] == 0.0);
  CHECK(schedule.posterior_log_variance_clipped()[0] ==
        doctest::Approx(std::log(schedule.posterior_variance()[1])));
  // The two posterior-mean coefficients reproduce x exactly when x_0 = x_t = x and the process is noise-free
  // at the first step: c1 + c2 = 1 at t = 0.
  CHECK(schedule.posterior_mean_coef1()[0] + schedule.posterior_mean_coef2()[0] == doctest::Approx(1.0));
}

TEST_CASE("cosine schedule reproduces abar(t) = cos^2((t/N + s)/(1 + s) pi/2) / abar(0)") {
  const auto schedule = DiffusionSchedule::cosine(1000);
  auto f = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  for (int i : {0, 10, 500, 900}) {
    CHECK(schedule.alphas_cumprod()[i] == doctest::Approx(f((i + 1) / 1000.0) / f(0.0)).epsilon(1e-10));
  }
  CHECK(schedule.betas().back() == 0.999);  // clipped as in improved DDPM
}

TEST_CASE("respacing keeps the steps the reference's space_timesteps keeps") {
  // Expected lists computed with Python's round (half to even) following the reference's rule.
  using V = std::vector<int64_t>;
  CHECK(DiffusionSchedule::spaced_timesteps(1000, "10") == V{0, 111, 222, 333, 444, 555, 666, 777, 888, 999});
  CHECK(DiffusionSchedule::spaced_timesteps(1000, "10,20") ==
        V{0,   55,  111, 166, 222, 277, 333, 388, 444, 499, 500, 526, 553, 579, 605,
          631, 658, 684, 710, 736, 763, 789, 815, 841, 868, 894, 920, 946, 973, 999});
  CHECK(DiffusionSchedule::spaced_timesteps(6, "3") == V{0, 2, 5});  // round(2.5) == 2
  CHECK(DiffusionSchedule::spaced_timesteps(100, "7,3,5") ==
        V{0, 6, 11, 16, 22, 28, 33, 34, 50, 66, 67, 75, 83, 91, 99});
  const auto ddim = DiffusionSchedule::spaced_timesteps(1000, "ddim50");
  REQUIRE(ddim.size() == 50);
  CHECK(ddim[1] == 20);
  CHECK(ddim.back() == 980);
  CHECK(DiffusionSchedule::spaced_timesteps(1000, "").size() == 1000);
}

TEST_CASE("a respaced schedule keeps abar at the kept steps and maps steps to original timesteps") {
  const auto base = DiffusionSchedule::linear();
  const auto spaced = base.respaced("100");
  REQUIRE(spaced.num_steps() == 100);
  for (int64_t i = 0; i < spaced.num_steps(); ++i) {
    const int64_t t = spaced.model_timestep(i);
    CHECK(spaced.alphas_cumprod()[i] == doctest::Approx(base.alphas_cumprod()[t]).epsilon(1e-12));
  }
  CHECK(spaced.model_timestep(99) == 999);
  CHECK(spaced.betas()[0] == doctest::Approx(1e-4));
  // Respacing composes: 1000 -> 100 -> 10 maps to original timesteps.
  const auto twice = spaced.respaced("10");
  CHECK(twice.model_timestep(9) == 999);
  CHECK(twice.alphas_cumprod()[5] ==
        doctest::Approx(base.alphas_cumprod()[twice.model_timestep(5)]).epsilon(1e-12));
}

TEST_CASE("bad respacing specs and step indices are errors that name the problem") {
  const auto base = DiffusionSchedule::linear();
  CHECK_THROWS_WITH_AS(base.respaced("2000"), doctest::Contains("asks for 2000 steps"), c10::Error);
  CHECK_THROWS_WITH_AS(base.respaced("ddim49"), doctest::Contains("no integer stride"), c10::Error);
  CHECK_THROWS_WITH_AS(base.respaced("ten"), doctest::Contains("'ten' is not a positive integer"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(base.respaced("10,,5"), doctest::Contains("not a positive integer"), c10::Error);
  CHECK_THROWS_WITH_AS(static_cast<void>(base.model_timestep(1000)),
                       doctest::Contains("step index 1000 is outside"), c10::Error);
  CHECK_THROWS_WITH_AS(DiffusionSchedule({0.1, 1.5}), doctest::Contains("beta[1] = 1.5"), c10::Error);
}

TEST_CASE("gather and q_sample broadcast per-sample coefficients") {
  const auto schedule = DiffusionSchedule::linear();
  auto x0 = torch::ones({2, 1, 2, 2});
  auto noise = torch::zeros_like(x0);
  auto t = torch::tensor({0, 999}, torch::kLong);
  auto x_t = q_sample(schedule, x0, t, noise);
  CHECK(x_t[0].mean().item<double>() == doctest::Approx(std::sqrt(0.9999)).epsilon(1e-6));
  CHECK(x_t[1].mean().item<double>() == doctest::Approx(std::sqrt(4.035829765375676e-05)).epsilon(1e-5));
}

TEST_CASE("split_commas keeps every piece, empty ones included; trim_blanks drops spaces and tabs") {
  using diffpost::detail::split_commas;
  using Pieces = std::vector<std::string_view>;
  CHECK(split_commas("") == Pieces{""});
  CHECK(split_commas("25") == Pieces{"25"});
  CHECK(split_commas("1, 2,") == Pieces{"1", " 2", ""});
  CHECK(split_commas(",,") == Pieces{"", "", ""});
  CHECK(diffpost::detail::trim_blanks(" \t32 ") == "32");
  CHECK(diffpost::detail::trim_blanks(" \t ").empty());
  // The respacing spec refuses the empty section a trailing comma makes.
  CHECK_THROWS_WITH_AS(diffpost::DiffusionSchedule::linear().respaced("10,"),
                       doctest::Contains("'' is not a positive integer"), c10::Error);
}
