// The tool's registries take a new method and a new task as one entry each. This test adds a test-only method
// (the prior's own reverse steps, ignoring the measurement) and a test-only task (a sign flip), each as one
// entry appended to the tool's registry, and runs them through the tool's own help, flags, validation and
// dispatch.
#include <diffpost/dps.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include "support/doctest_with_torch.hpp"

#include <string>
#include <variant>
#include <vector>

#include "common.hpp"
#include "methods.hpp"
#include "registry.hpp"
#include "tasks.hpp"

using namespace diffpost;
using namespace diffpost::cli;

namespace {

/// A test-only library method: the sampler's reverse step, the measurement ignored.
template <ForwardOperator Operator, Sampler SamplerType>
class Unguided : public diffpost::detail::MethodParts<diffpost::detail::NoLikelihood, Operator, SamplerType,
                                                      diffpost::detail::NoOptions> {
 public:
  Unguided(Operator op, SamplerType sampler) : Unguided::MethodParts(std::move(op), std::move(sampler), {}) {}
  template <ScoreModel Model>
  MethodStep correct(Model&, const torch::Tensor&, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator&) const {
    return diffpost::detail::plain_reverse_step(this->sampler(), prediction, noise);
  }
  static constexpr bool differentiates_network = false;
  static const char* method_name() { return "Unguided"; }
  static const char* divergence_remedy() { return "Check the model."; }
};

// ---- the one entry that adds a method to the tool ----
struct UnguidedEntry : RunsEveryTask {
  static constexpr const char* name = "unguided";
  static constexpr const char* title = "Unguided";
  static constexpr const char* help =
      "the prior's own reverse steps, the measurement ignored (--unguided-seed)";
  struct Settings {
    int64_t extra_seed = 0;
    static void add_options(CLI::App& app, Settings& s) {
      add_value_option(app, "--unguided-seed", s.extra_seed, "unguided: a setting of the test method", "N",
                       "Method options")
          ->check(CLI::Range(int64_t{0}, int64_t{9}));
    }
  };
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = Unguided<Op, S>;
  template <class Op, class Noise, class S>
  static auto make(const Settings&, const MethodRun&, const Noise&, const Op& op, const S& sampler) {
    return Method<Op, Noise, S>(op, sampler);
  }
};
using TestMethods = Concat<Methods, TypeList<UnguidedEntry>>;
// ---- end of the entry ----

/// A test-only operator: y = -x; linear and its own pseudo-inverse, with no SVD.
struct SignFlip {
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return -x; }
  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const { return -y; }
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return -y; }
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const { return -y; }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const { return image_shape; }
};

// ---- the one entry that adds a task to the tool ----
struct SignFlipTask {
  static constexpr const char* name = "sign-flip";
  static constexpr const char* help = "undo a sign flip (a test task)";
  static constexpr double default_scale = 1.0;
  using Parameters = NoParameters;
  static auto factory(const Parameters&, const Shape&) { return same_for_every_image(SignFlip{}); }
};
using TestTasks = Concat<Tasks, TypeList<SignFlipTask>>;
// ---- end of the entry ----

// The new method's words agree with what its class accepts, on every task of both registries.
static_assert(entries_agree_with_library<TestMethods, TestTasks>);

/// A run on 4 x 4 gray images of 8 steps.
struct Run {
  std::string task;
  RunSchedules schedules{DiffusionSchedule::linear(), DDPMSampler(DiffusionSchedule::linear().respaced("8"))};
  MethodRun method_run{task, 1.0, schedules, 0.05};
};

}  // namespace

TEST_CASE("a method added as one entry is in the help, has its flags, and runs through the dispatch") {
  const auto names = method_names<TestMethods>();
  CHECK(names.back() == "unguided");
  CHECK(names.size() == method_names().size() + 1);
  CHECK(methods_help<TestMethods>("methods:").find("unguided: the prior's own reverse steps") !=
        std::string::npos);
  CHECK(method_title<TestMethods>("unguided") == "Unguided");

  MethodSettingsOf<TestMethods> settings;
  CLI::App app;
  add_method_options<TestMethods>(app, settings);
  app.parse(std::vector<std::string>{"4", "--unguided-seed", "0.5",
                                     "--diffpir-zeta"});  // reversed, as CLI11 takes it
  CHECK(std::get<UnguidedEntry::Settings>(settings).extra_seed == 4);
  CHECK(std::get<DiffPIRSettings>(settings).zeta == 0.5);

  const Run run{"random-inpaint"};
  const TaskPlan plan("random-inpaint", TaskParameters{}, {1, 4, 4}, 0);
  // The batch operator as the one type it holds: with_method then compiles every method for it alone.
  using Inpainting = PerImageOperator<InpaintingOperator>;
  const std::variant<Inpainting> op(std::get<Inpainting>(plan.batch(0, 2, 1)));
  CHECK(missing_capability<TestMethods>("unguided", plan, AnyNoise(PoissonLikelihood(1.0))).empty());
  auto prior = GaussianPrior(torch::zeros({1, 4, 4}), torch::ones({1, 4, 4}), DiffusionSchedule::linear());
  auto generator = make_generator(0);
  torch::Tensor restored;
  int64_t steps = 0;
  with_method<TestMethods>(
      "unguided", settings, run.method_run, 3, op, AnyNoise(GaussianLikelihood(0.05)),
      [&](const auto& sampler) {
        steps = sampler.num_steps();
        restored = sampler.sample(prior, torch::zeros({2, 1, 4, 4}), {1, 4, 4}, generator);
      });
  CHECK(steps == 8);
  CHECK(restored.sizes() == torch::IntArrayRef{6, 1, 4, 4});
  CHECK_THROWS_WITH_AS(
      with_method<TestMethods>("nope", settings, run.method_run, 1, op, AnyNoise(GaussianLikelihood(0.05)),
                               [](const auto&) {}),
      "unknown method 'nope'; methods: dps, mcg, score-sde, score-ald, sdedit, diffpir, ddnm, "
      "pigdm, ddrm, daps, latent-daps, psld, resample, unguided",
      UsageError);
}

TEST_CASE(
    "a task added as one entry is in the help, makes its operators, and the methods run it or say why not") {
  CHECK(task_names<TestTasks>().back() == "sign-flip");
  CHECK(tasks_help<TestTasks>("tasks:").find("sign-flip: undo a sign flip") != std::string::npos);
  CHECK(default_scale<TestTasks>("sign-flip") == 1.0);

  const BasicTaskPlan<TestTasks> plan("sign-flip", TaskParametersOf<TestTasks>{}, {1, 4, 4}, 0);
  CHECK(plan.has_naive_inverse());
  CHECK(plan.default_scale() == 1.0);
  using Flip = PerImageOperator<SignFlip>;
  const std::variant<Flip> op(std::get<Flip>(plan.batch(0, 2, 1)));
  const auto x = torch::randn({2, 1, 4, 4});
  CHECK(torch::equal(std::visit([&](const auto& o) { return o.forward(x); }, op), -x));

  // The library decides, the registry says why: DDRM needs an SVD, which a sign flip does not offer here.
  const AnyNoise noise(GaussianLikelihood(0.05));
  CHECK(missing_capability("dps", plan, noise).empty());
  CHECK(missing_capability("ddnm", plan, noise).empty());
  CHECK(missing_capability("ddrm", plan, noise) == "it needs the operator's singular value decomposition");

  const Run run{"sign-flip"};
  auto prior = GaussianPrior(torch::zeros({1, 4, 4}), torch::ones({1, 4, 4}), DiffusionSchedule::linear());
  auto generator = make_generator(1);
  torch::Tensor restored;
  with_method("dps", MethodSettings{}, run.method_run, 1, op, noise, [&](const auto& sampler) {
    restored = sampler.sample(prior, -x, {1, 4, 4}, generator);
  });
  CHECK(restored.sizes() == torch::IntArrayRef{2, 1, 4, 4});
  CHECK_THROWS_WITH_AS(
      with_method("ddrm", MethodSettings{}, run.method_run, 1, op, noise, [](const auto&) {}),
      "method ddrm cannot run task sign-flip: it needs the operator's singular value "
      "decomposition (drop the task or the method)",
      UsageError);
}

TEST_CASE("the latent methods run only with a latent diffusion model, the pixel methods only without one") {
  CHECK(method_names_in(true) == std::vector<std::string>{"latent-daps", "psld", "resample"});
  CHECK(method_names_in(false).size() == method_names().size() - 3);
  CHECK(runs_on_latents("psld"));
  CHECK_FALSE(runs_on_latents("daps"));
  CHECK_NOTHROW(check_method_space("resample", true, "ldm.ckpt"));
  CHECK_NOTHROW(check_method_space("dps", false, "adm.pt"));
  CHECK_THROWS_WITH_AS(
      check_method_space("dps", true, "ldm.ckpt"),
      "method dps works in pixel space, but the model 'ldm.ckpt' is a latent diffusion model; "
      "choose a latent method: latent-daps, psld, resample",
      UsageError);
  CHECK_THROWS_WITH_AS(
      check_method_space("latent-daps", false, "adm.pt"),
      doctest::Contains("method latent-daps runs on the latents of a latent diffusion model, but "
                        "the model 'adm.pt' works in pixel space"),
      UsageError);
  // PSLD glues with the pseudo-inverse, which a blur lacks; the registry says so before a run.
  const TaskPlan deblur("gaussian-deblur", TaskParameters{}, {1, 28, 28}, 0);
  const AnyNoise noise(GaussianLikelihood(0.05));
  CHECK(missing_capability("psld", deblur, noise) == "it needs the operator's pseudo-inverse");
  CHECK(missing_capability("resample", deblur, noise).empty());
  CHECK(missing_capability("latent-daps", deblur, noise).empty());
}
