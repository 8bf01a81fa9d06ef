// The restoration methods of the diffpost tool, one registry entry each: its name, title and help, its
// settings (a typed struct with its flags, shared by the methods that read it), the library class template it
// runs, what that class needs of an operator and a noise model (the library's own constraints decide; the
// entry says it in words, and a compile-time check keeps the two in agreement), and how it is made for a run.
// Help, validation, `eval --methods`, sweeps, run identity and summaries all read this registry.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "options.hpp"
#include "registry.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

/// The schedules of a run: the model's noise schedule, the sampler of --steps and --sampler, and the step
/// budget (network evaluations per image) the methods with their own spacing run on.
struct RunSchedules {
  DiffusionSchedule base;  ///< the model's 1000-step schedule
  AnySampler sampler;      ///< what DPS, MCG, Score-SDE, ScoreALD and SDEdit step along
  int64_t steps;           ///< network evaluations per image the budget allows

  RunSchedules(DiffusionSchedule base_schedule, AnySampler run_sampler)
      : base(std::move(base_schedule)),
        sampler(std::move(run_sampler)),
        steps(std::visit([](const auto& s) { return s.schedule().num_steps(); }, sampler)) {}

  /// DiffPIR's official quadratic spacing with `steps` steps.
  [[nodiscard]] DiffusionSchedule diffpir() const {
    return steps >= 2 ? base.restricted_to(diffpir_timesteps(steps, base.num_steps())) : base.respaced("1");
  }
  /// Evenly strided DDIM steps (DDNM, PiGDM and DDRM's official spacing) with `steps` steps.
  [[nodiscard]] DiffusionSchedule strided() const { return base.respaced(fmt::format("ddim{}", steps)); }
};

/// What making a method for a run needs besides its settings, the operator, the noise and the sampler.
struct MethodRun {
  const std::string& task;
  double task_scale;  ///< the task's default DPS step size (its registry entry's)
  const RunSchedules& schedules;
  double noise_sigma;  ///< --sigma, ScoreALD's default weighting
};

// ---------------------------------------------------------------------------------------------------------------
// Method settings, each with its flags (group "Method options": a sweep of `diffpost eval` may vary them).
// ---------------------------------------------------------------------------------------------------------------

/// --scale: one step size for every task, per-task values, or the tasks' defaults.
struct ScaleSpec {
  std::optional<double> all;
  std::map<std::string, double> per_task;

  /// The step size of `task`: its own value, else the common one, else `task_default`.
  [[nodiscard]] double of(const std::string& task, double task_default) const {
    if (const auto found = per_task.find(task); found != per_task.end()) return found->second;
    return all.value_or(task_default);
  }
  /// The step size of a task of the tool's registry.
  [[nodiscard]] double of(const std::string& task) const { return of(task, default_scale(task)); }

  /// Parses "X" or "task=X,task=Y".
  static ScaleSpec parse(const std::string& text) {
    const auto number = [](const std::string& value, const std::string& what) {
      std::string copy = value;
      const auto error = finite_in(0.0, 1e6)(copy);
      if (!error.empty()) throw UsageError(fmt::format("{}: {}", what, error));
      return std::stod(value);
    };
    ScaleSpec spec;
    if (text.find('=') == std::string::npos) {
      spec.all = number(text, "--scale");
      return spec;
    }
    for (const auto& item : split_list(text)) {
      const auto eq = item.find('=');
      if (eq == std::string::npos)
        throw UsageError(fmt::format("--scale: expected a number or task=value pairs, got '{}'", item));
      const auto task = item.substr(0, eq);
      default_scale(task);  // refuses unknown tasks
      spec.per_task[task] = number(item.substr(eq + 1), "--scale " + task);
    }
    return spec;
  }
};

/// DPS's (and MCG's) step size.
struct StepSizeSettings {
  ScaleSpec scale;
  StepSizeSchedule schedule = StepSizeSchedule::constant;

  static void add_options(CLI::App& app, StepSizeSettings& s) {
    std::string help = "dps, mcg: step size, one number for all tasks or task=value,... (per-task defaults:";
    for_each_entry(Tasks{},
                   [&]<class Task>() { help += fmt::format(" {} {}", Task::name, Task::default_scale); });
    app.add_option_function<std::string>(
           "--scale", [&s](const std::string& text) { s.scale = ScaleSpec::parse(text); }, help + ")")
        ->type_name("X|TASK=X,...")
        ->check(checked_by([](const std::string& text) { ScaleSpec::parse(text); }, ""))
        ->group("Method options");
    static const std::map<std::string, StepSizeSchedule> schedules{
        {"constant", StepSizeSchedule::constant},
        {"linear", StepSizeSchedule::linear_decay},
        {"exponential", StepSizeSchedule::exponential_decay}};
    app.add_option_function<std::string>(
           "--scale-schedule", [&s](const std::string& name) { s.schedule = schedules.at(name); },
           "dps, mcg: step size over the steps: constant, linear or exponential decay")
        ->type_name("NAME")
        ->check(CLI::IsMember({"constant", "linear", "exponential"}))
        ->default_str("constant")
        ->group("Method options");
  }

  [[nodiscard]] DPSOptions options(const MethodRun& run) const {
    return DPSOptions{}.scale(scale.of(run.task, run.task_scale)).step_size_schedule(schedule);
  }
  /// The step size runs of `task` take; a settings struct with `step_size(task)` shows it in progress bars,
  /// summaries and the diagnosis of unusable results.
  [[nodiscard]] double step_size(const std::string& task) const { return scale.of(task); }
};

struct ScoreALDSettings {
  double scale = ScoreALDOptions{}.scale();
  double gamma = ScoreALDOptions{}.gamma();
  std::optional<double> sigma;  ///< default: the noise's --sigma

  static void add_options(CLI::App& app, ScoreALDSettings& s) {
    add_value_option(app, "--ald-scale", s.scale, "score-ald: guidance scale", "X", "Method options")
        ->check(finite_in(0.0, 1e6));
    add_value_option(app, "--ald-gamma", s.gamma,
                     "score-ald: annealing gamma (gamma_t^2 = gamma^2 (1 - abar_t))", "X", "Method options")
        ->check(finite_in(0.0, 1e6));
    app.add_option_function<double>(
           "--ald-sigma", [&s](double value) { s.sigma = value; },
           "score-ald: measurement noise level in its weighting; default: --sigma")
        ->type_name("X")
        ->check(finite_in(0.0, 10.0))
        ->group("Method options");
  }
};

struct SDEditSettings {
  int64_t t_star = SDEditOptions{}.t_star();

  static void add_options(CLI::App& app, SDEditSettings& s) {
    add_value_option(app, "--t-star", s.t_star,
                     "sdedit: noise level to start from, in original timesteps of 1000", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  }
};

struct DiffPIRSettings {
  double lambda = DiffPIROptions{}.lambda();
  double zeta = DiffPIROptions{}.zeta();

  static void add_options(CLI::App& app, DiffPIRSettings& s) {
    add_value_option(app, "--diffpir-lambda", s.lambda,
                     "diffpir: weight of the prior in the data step (rho_t = lambda sigma^2 / sigmabar_t^2)",
                     "X", "Method options")
        ->check(finite_in(1e-9, 1e9));
    add_value_option(app, "--diffpir-zeta", s.zeta,
                     "diffpir: share of fresh noise when re-noising, in [0, 1]", "X", "Method options")
        ->check(finite_in(0.0, 1.0));
  }
};

struct DDNMSettings {
  double eta = DDNMOptions{}.eta();

  static void add_options(CLI::App& app, DDNMSettings& s) {
    add_value_option(app, "--ddnm-eta", s.eta, "ddnm: DDIM eta of its steps", "X", "Method options")
        ->check(finite_in(0.0, 1.0));
  }
};

struct PiGDMSettings {
  double eta = PiGDMOptions{}.eta();

  static void add_options(CLI::App& app, PiGDMSettings& s) {
    add_value_option(app, "--pigdm-eta", s.eta, "pigdm: DDIM eta of its steps", "X", "Method options")
        ->check(finite_in(0.0, 1.0));
  }
};

struct DDRMSettings {
  double eta = DDRMOptions{}.eta();
  double eta_b = DDRMOptions{}.eta_b();

  static void add_options(CLI::App& app, DDRMSettings& s) {
    add_value_option(app, "--ddrm-eta", s.eta, "ddrm: eta of the unmeasured and noisy components", "X",
                     "Method options")
        ->check(finite_in(0.0, 1.0));
    add_value_option(app, "--ddrm-eta-b", s.eta_b, "ddrm: eta_b of the measured components", "X",
                     "Method options")
        ->check(finite_in(0.0, 1.0));
  }
};

struct DAPSSettings {
  int64_t ode_steps = DAPSOptions{}.ode_steps();
  int64_t langevin_steps = DAPSOptions{}.langevin_steps();
  double step_size = DAPSOptions{}.step_size();
  double tau = DAPSOptions{}.tau();

  static void add_options(CLI::App& app, DAPSSettings& s) {
    add_value_option(app, "--daps-ode-steps", s.ode_steps,
                     "daps: probability-flow ODE steps per annealing level (network evaluations)", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{1}, int64_t{1000}));
    add_value_option(app, "--daps-langevin-steps", s.langevin_steps,
                     "daps: Langevin steps per annealing level (operator gradients only)", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{0}, int64_t{100000}));
    add_value_option(app, "--daps-step-size", s.step_size,
                     "daps: Langevin step size at the first level (decays to 1% by the last)", "X",
                     "Method options")
        ->check(finite_in(1e-12, 1.0));
    add_value_option(app, "--daps-tau", s.tau, "daps: measurement weight tau of the Langevin target", "X",
                     "Method options")
        ->check(finite_in(1e-9, 1e3));
  }
};

/// The settings of a method that has none.
struct NoSettings {
  static void add_options(CLI::App& /*app*/, NoSettings& /*s*/) {}
};

// ---------------------------------------------------------------------------------------------------------------
// The methods. An entry names itself (`name`, `title` for tables, `help`), its `Settings`, the library class
// it runs (`Method<Op, Noise, Sampler>`; whether the library accepts an operator and a noise model decides
// whether the method can run a task), `unmet<Op, Noise>()` (that decision in words, empty when it can run),
// and `make(settings, run, likelihood, op, sampler)`.
// ---------------------------------------------------------------------------------------------------------------

/// The base of the entries whose class takes every operator and noise model of the tool.
struct RunsEveryTask {
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return {};
  }
};

struct DPSEntry : RunsEveryTask {
  static constexpr const char* name = "dps";
  static constexpr const char* title = "DPS";
  static constexpr const char* help = "Diffusion Posterior Sampling (--scale, --scale-schedule)";
  using Settings = StepSizeSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = DPS<Noise, Op, S>;
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& sampler) {
    return Method<Op, Noise, S>(likelihood, op, sampler, s.options(run));
  }
};

struct MCGEntry {
  static constexpr const char* name = "mcg";
  static constexpr const char* title = "MCG";
  static constexpr const char* help =
      "Manifold Constrained Gradients: the DPS step, then projection (--scale; linear tasks)";
  using Settings = StepSizeSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = MCG<Noise, Op, S>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return LinearOperator<Op> ? "" : "it needs a linear operator";
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& sampler) {
    return Method<Op, Noise, S>(likelihood, op, sampler, s.options(run));
  }
};

struct ScoreSDEEntry {
  static constexpr const char* name = "score-sde";
  static constexpr const char* title = "Score-SDE";
  static constexpr const char* help =
      "Score-SDE / ILVR projection onto the diffused measurement (linear tasks)";
  using Settings = NoSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = ScoreSDEProjection<Op, S>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return LinearOperator<Op> ? "" : "it needs a linear operator";
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& /*s*/, const MethodRun& /*run*/, const Noise& /*likelihood*/, const Op& op,
                   const S& sampler) {
    return Method<Op, Noise, S>(op, sampler);
  }
};

struct ScoreALDEntry : RunsEveryTask {
  static constexpr const char* name = "score-ald";
  static constexpr const char* title = "ScoreALD";
  static constexpr const char* help = "annealed Langevin guidance on x_t (--ald-scale, --ald-gamma)";
  using Settings = ScoreALDSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = ScoreALD<Noise, Op, S>;
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& sampler) {
    return Method<Op, Noise, S>(
        likelihood, op, sampler,
        ScoreALDOptions{}.scale(s.scale).gamma(s.gamma).sigma(s.sigma.value_or(run.noise_sigma)));
  }
};

struct SDEditEntry {
  static constexpr const char* name = "sdedit";
  static constexpr const char* title = "SDEdit";
  static constexpr const char* help =
      "noise the naive inverse to t*, then the plain reverse process (--t-star)";
  using Settings = SDEditSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = SDEdit<Op, S>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return HasNaiveInverse<Op> ? "" : "it starts from the naive inverse, which the task lacks";
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& /*run*/, const Noise& /*likelihood*/, const Op& op,
                   const S& sampler) {
    return Method<Op, Noise, S>(op, sampler, SDEditOptions{}.t_star(s.t_star));
  }
};

/// Why a method with closed-form updates in sigma_y cannot take a noise model.
template <class Noise>
constexpr std::string_view needs_gaussian_noise() {
  return GaussianNoiseModel<Noise> ? "" : "it needs Gaussian (or no) measurement noise";
}

struct DiffPIREntry {
  static constexpr const char* name = "diffpir";
  static constexpr const char* title = "DiffPIR";
  static constexpr const char* help =
      "plug-and-play data step on x0 each step, no network gradient (--diffpir-lambda, --diffpir-zeta; "
      "Gaussian noise)";
  using Settings = DiffPIRSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = DiffPIR<Noise, Op>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return needs_gaussian_noise<Noise>();
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& /*sampler*/) {
    return Method<Op, Noise, S>(likelihood, op, run.schedules.diffpir(),
                                DiffPIROptions{}.lambda(s.lambda).zeta(s.zeta));
  }
};

struct DDNMEntry {
  static constexpr const char* name = "ddnm";
  static constexpr const char* title = "DDNM";
  static constexpr const char* help =
      "range-null-space correction of x0, DDNM+ for noise (--ddnm-eta; masks, sr, colorize, denoise; "
      "Gaussian noise)";
  using Settings = DDNMSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = DDNM<Noise, Op>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return !PseudoInvertibleOperator<Op> ? "it needs the operator's pseudo-inverse"
                                         : needs_gaussian_noise<Noise>();
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& /*sampler*/) {
    return Method<Op, Noise, S>(likelihood, op, run.schedules.strided(), DDNMOptions{}.eta(s.eta));
  }
};

struct PiGDMEntry {
  static constexpr const char* name = "pigdm";
  static constexpr const char* title = "PiGDM";
  static constexpr const char* help =
      "pseudo-inverse guidance through the network (--pigdm-eta; linear tasks; Gaussian noise)";
  using Settings = PiGDMSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = PiGDM<Noise, Op>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return !LinearOperator<Op> ? "it needs a linear operator" : needs_gaussian_noise<Noise>();
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& /*sampler*/) {
    return Method<Op, Noise, S>(likelihood, op, run.schedules.strided(), PiGDMOptions{}.eta(s.eta));
  }
};

struct DDRMEntry {
  static constexpr const char* name = "ddrm";
  static constexpr const char* title = "DDRM";
  static constexpr const char* help =
      "denoising in the operator's SVD (--ddrm-eta, --ddrm-eta-b; masks, sr, gaussian-deblur, colorize, "
      "denoise; Gaussian noise)";
  using Settings = DDRMSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = DDRM<Noise, Op>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return !DecomposableOperator<Op> ? "it needs the operator's singular value decomposition"
                                     : needs_gaussian_noise<Noise>();
  }
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& /*sampler*/) {
    return Method<Op, Noise, S>(likelihood, op, run.schedules.strided(),
                                DDRMOptions{}.eta(s.eta).eta_b(s.eta_b));
  }
};

struct DAPSEntry : RunsEveryTask {
  static constexpr const char* name = "daps";
  static constexpr const char* title = "DAPS";
  static constexpr const char* help =
      "decoupled annealing: ODE steps, then Langevin steps on the measurement (--daps-*; any task)";
  using Settings = DAPSSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = DAPS<Noise, Op>;
  /// The step budget is the network evaluations: annealing levels x ODE steps.
  template <class Op, class Noise, class S>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood, const Op& op,
                   const S& /*sampler*/) {
    return Method<Op, Noise, S>(likelihood, op, run.schedules.base,
                                DAPSOptions{}
                                    .annealing_steps(std::max<int64_t>(1, run.schedules.steps / s.ode_steps))
                                    .ode_steps(s.ode_steps)
                                    .langevin_steps(s.langevin_steps)
                                    .step_size(s.step_size)
                                    .tau(s.tau));
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The latent methods: they run on the latents of a latent diffusion model (--model an LDM checkpoint), the
// measurement seen through its decoder. Their `Method<Op, Noise>` is the library class on
// ThroughDecoder<Op, FirstStage>, and `make(settings, run, likelihood, op)` takes that operator.
// ---------------------------------------------------------------------------------------------------------------

/// The base of the entries whose methods run on latents.
struct RunsOnLatents {
  static constexpr bool latent = true;
};

struct LatentDAPSSettings {
  int64_t ode_steps = DAPSOptions::latent().ode_steps();
  int64_t chain_steps = DAPSOptions::latent().langevin_steps();
  double step_size = DAPSOptions::latent().step_size();
  double tau = DAPSOptions::latent().tau();

  static void add_options(CLI::App& app, LatentDAPSSettings& s) {
    add_value_option(app, "--latent-daps-ode-steps", s.ode_steps,
                     "latent-daps: probability-flow ODE steps per annealing level (network evaluations)", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{1}, int64_t{1000}));
    add_value_option(app, "--latent-daps-chain-steps", s.chain_steps,
                     "latent-daps: HMC steps per annealing level (a decoder pass and its backward each)", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{0}, int64_t{100000}));
    add_value_option(app, "--latent-daps-step-size", s.step_size,
                     "latent-daps: HMC step size at the first level (decays to 2.3% by the last)", "X",
                     "Method options")
        ->check(finite_in(1e-12, 1.0));
    add_value_option(app, "--latent-daps-tau", s.tau,
                     "latent-daps: measurement weight tau of the chain's target", "X", "Method options")
        ->check(finite_in(1e-9, 1e3));
  }
};

struct PSLDSettings {
  double omega = PSLDOptions{}.omega();
  double gamma = PSLDOptions{}.gamma();

  static void add_options(CLI::App& app, PSLDSettings& s) {
    add_value_option(app, "--psld-omega", s.omega, "psld: step size on the measurement norm", "X",
                     "Method options")
        ->check(finite_in(0.0, 1e6));
    add_value_option(app, "--psld-gamma", s.gamma,
                     "psld: step size on the gluing norm (0: latent DPS on DDIM, no encoder)", "X",
                     "Method options")
        ->check(finite_in(0.0, 1e6));
  }
};

struct ReSampleSettings {
  int64_t pixel_iterations = ReSampleOptions{}.pixel_iterations();
  int64_t latent_iterations = ReSampleOptions{}.latent_iterations();

  static void add_options(CLI::App& app, ReSampleSettings& s) {
    add_value_option(app, "--resample-pixel-iterations", s.pixel_iterations,
                     "resample: most AdamW iterations of a pixel-space data-consistency fit (middle third)",
                     "N", "Method options")
        ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
    add_value_option(app, "--resample-latent-iterations", s.latent_iterations,
                     "resample: most AdamW iterations of a latent data-consistency fit (last third)", "N",
                     "Method options")
        ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  }
};

struct LatentDAPSEntry : RunsEveryTask, RunsOnLatents {
  static constexpr const char* name = "latent-daps";
  static constexpr const char* title = "LatentDAPS";
  static constexpr const char* help =
      "latent diffusion models: DAPS on the latents, HMC on z0 through the decoder (--latent-daps-*; any "
      "task)";
  using Settings = LatentDAPSSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = LatentDAPS<Noise, Op, FirstStage>;
  /// The official preset (DAPSOptions::latent()); the step budget is the network evaluations: annealing
  /// levels x ODE steps.
  template <class Op, class Noise>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood,
                   const ThroughDecoder<Op, FirstStage>& op) {
    return Method<Op, Noise>(likelihood, op, run.schedules.base,
                             DAPSOptions::latent()
                                 .annealing_steps(std::max<int64_t>(1, run.schedules.steps / s.ode_steps))
                                 .ode_steps(s.ode_steps)
                                 .langevin_steps(s.chain_steps)
                                 .step_size(s.step_size)
                                 .tau(s.tau));
  }
};

struct PSLDEntry : RunsOnLatents {
  static constexpr const char* name = "psld";
  static constexpr const char* title = "PSLD";
  static constexpr const char* help =
      "latent diffusion models: DDIM, then a gradient step on the measurement and gluing norms through "
      "decoder and encoder (--psld-omega, --psld-gamma; masks, sr, colorize, denoise)";
  using Settings = PSLDSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = PSLD<Noise, Op, FirstStage>;
  template <class Op, class Noise>
  static constexpr std::string_view unmet() {
    return PseudoInvertibleOperator<Op> ? "" : "it needs the operator's pseudo-inverse";
  }
  /// --steps DDIM steps on ldm's uniform discretisation.
  template <class Op, class Noise>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood,
                   const ThroughDecoder<Op, FirstStage>& op) {
    return Method<Op, Noise>(likelihood, op, run.schedules.base,
                             PSLDOptions{}.ddim_steps(run.schedules.steps).omega(s.omega).gamma(s.gamma));
  }
};

struct ReSampleEntry : RunsEveryTask, RunsOnLatents {
  static constexpr const char* name = "resample";
  static constexpr const char* title = "ReSample";
  static constexpr const char* help =
      "latent diffusion models: DDIM with hard data consistency (AdamW fits through the decoder) and "
      "stochastic resampling (--resample-*; any task)";
  using Settings = ReSampleSettings;
  template <class Op, class Noise, class S = DDPMSampler>
  using Method = ReSample<Noise, Op, FirstStage>;
  /// --steps DDIM steps on ldm's uniform discretisation.
  template <class Op, class Noise>
  static auto make(const Settings& s, const MethodRun& run, const Noise& likelihood,
                   const ThroughDecoder<Op, FirstStage>& op) {
    return Method<Op, Noise>(likelihood, op, run.schedules.base,
                             ReSampleOptions{}
                                 .steps(run.schedules.steps)
                                 .pixel_iterations(s.pixel_iterations)
                                 .latent_iterations(s.latent_iterations));
  }
};

/// Every method, in the order of the help text.
using Methods =
    TypeList<DPSEntry, MCGEntry, ScoreSDEEntry, ScoreALDEntry, SDEditEntry, DiffPIREntry, DDNMEntry,
             PiGDMEntry, DDRMEntry, DAPSEntry, LatentDAPSEntry, PSLDEntry, ReSampleEntry>;

// ---------------------------------------------------------------------------------------------------------------
// What the registry gives.
// ---------------------------------------------------------------------------------------------------------------

/// Whether `Entry`'s method runs on a latent diffusion model's latents (RunsOnLatents).
template <class Entry>
concept LatentEntry = requires {
  requires Entry::latent;
};

/// Whether the library accepts `Entry`'s method for operator `Op` and noise model `Noise`.
template <class Entry, class Op, class Noise>
concept EntryRuns = requires {
  typename Entry::template Method<Op, Noise>;
};

namespace detail {

template <class Entry, class... Ops, class... Noises>
consteval bool says_what_it_needs(TypeList<Ops...> /*operators*/, std::variant<Noises...>* /*noises*/) {
  return ((([]<class Op>() {
             return ((EntryRuns<Entry, Op, Noises> == Entry::template unmet<Op, Noises>().empty()) && ...);
           }).template operator()<PerImageOperator<Ops>>()) &&
          ...);
}

template <class TaskRegistry, class... Entries>
consteval bool all_say_what_they_need(TypeList<Entries...> /*registry*/) {
  return (says_what_it_needs<Entries>(typename task_types_t<TaskRegistry>::operators{},
                                      static_cast<AnyNoise*>(nullptr)) &&
          ...);
}

template <class... Entries>
Apply<std::tuple, UniqueTypes<typename Entries::Settings...>> settings_of(TypeList<Entries...>);

}  // namespace detail

/// Whether every entry of a method registry says in words exactly what its library class accepts, for every
/// operator of a task registry and every noise model.
template <class MethodRegistry, class TaskRegistry = Tasks>
inline constexpr bool entries_agree_with_library =
    detail::all_say_what_they_need<TaskRegistry>(MethodRegistry{});

static_assert(entries_agree_with_library<Methods>,
              "a method entry's unmet<Op, Noise>() disagrees with what its library class accepts");

/// The settings of every method of a registry, one struct per kind, each with its flags.
template <class Registry = Methods>
using MethodSettingsOf = decltype(detail::settings_of(Registry{}));
using MethodSettings = MethodSettingsOf<Methods>;

/// Declares the flags of every method's settings.
template <class Registry = Methods>
void add_method_options(CLI::App& app, MethodSettingsOf<Registry>& settings) {
  std::apply([&](auto&... s) { (std::decay_t<decltype(s)>::add_options(app, s), ...); }, settings);
}

/// The names of all methods, in order.
template <class Registry = Methods>
std::vector<std::string> method_names() {
  return entry_names(Registry{});
}

/// `title` and one line per method ("dps: ...") for a --method / --methods help text.
template <class Registry = Methods>
std::string methods_help(const std::string& title) {
  std::string help = title;
  for_each_entry(Registry{},
                 [&]<class Entry>() { help += fmt::format("\n{}: {}", Entry::name, Entry::help); });
  return help;
}

/// The error for a method name the registry does not have.
template <class Registry = Methods>
UsageError unknown_method(const std::string& name) {
  return UsageError(
      fmt::format("unknown method '{}'; methods: {}", name, fmt::join(method_names<Registry>(), ", ")));
}

/// The title of method `name` in tables ("DPS").
template <class Registry = Methods>
std::string method_title(const std::string& name) {
  std::string title;
  if (!with_entry(Registry{}, name, [&]<class Entry>() { title = Entry::title; }))
    throw unknown_method<Registry>(name);
  return title;
}

/// The step size `method` runs `task` with, where its settings have one (DPS and MCG's --scale).
template <class Registry = Methods>
std::optional<double> task_step_size(const std::string& method, const MethodSettingsOf<Registry>& settings,
                                     const std::string& task) {
  std::optional<double> step_size;
  with_entry(Registry{}, method, [&]<class Entry>() {
    const auto& s = std::get<typename Entry::Settings>(settings);
    if constexpr (requires { s.step_size(task); }) step_size = s.step_size(task);
  });
  return step_size;
}

/// What a progress bar shows of a run of `method` on `task`: its step size, or its name.
template <class Registry = Methods>
std::string progress_note(const std::string& method, const MethodSettingsOf<Registry>& settings,
                          const std::string& task) {
  const auto step_size = task_step_size<Registry>(method, settings, task);
  return step_size ? fmt::format("scale {}", *step_size) : method;
}

/// Why restorations of `task` by `method` that leave their measurement unexplained went wrong.
template <class Registry = Methods>
std::string unusable_hint(const std::string& method, const MethodSettingsOf<Registry>& settings,
                          const std::string& task) {
  const auto step_size = task_step_size<Registry>(method, settings, task);
  if (!step_size) return fmt::format("the {} settings do not suit this task", method_title<Registry>(method));
  return fmt::format("the step size --scale {} does not suit this task (the default is {})",
                     default_text(*step_size), default_text(default_scale(task)));
}

/// The reason `method` cannot run the operators of `plan` (a BasicTaskPlan) with `noise`, empty when it can.
template <class Registry = Methods, class Plan>
std::string missing_capability(const std::string& method, const Plan& plan, const AnyNoise& noise) {
  std::string reason;
  plan.visit_type([&]<class Op>(std::type_identity<Op>) {
    std::visit(
        [&](const auto& likelihood) {
          using Noise = std::decay_t<decltype(likelihood)>;
          with_entry(Registry{}, method, [&]<class Entry>() { reason = Entry::template unmet<Op, Noise>(); });
        },
        noise);
  });
  return reason;
}

/// Whether method `name` runs on a latent diffusion model's latents.
template <class Registry = Methods>
bool runs_on_latents(const std::string& name) {
  bool latent = false;
  if (!with_entry(Registry{}, name, [&]<class Entry>() { latent = LatentEntry<Entry>; }))
    throw unknown_method<Registry>(name);
  return latent;
}

/// The names of the methods that run in pixel space (`latent` false) or on latents (true).
template <class Registry = Methods>
std::vector<std::string> method_names_in(bool latent) {
  std::vector<std::string> names;
  for_each_entry(Registry{}, [&]<class Entry>() {
    if (LatentEntry<Entry> == latent) names.emplace_back(Entry::name);
  });
  return names;
}

/// Refuses a method whose space is not the prior's: a latent method with a pixel-space model, or a
/// pixel-space method with a latent diffusion model (`model` names it).
template <class Registry = Methods>
void check_method_space(const std::string& method, bool latent_prior, const std::string& model) {
  if (runs_on_latents<Registry>(method) == latent_prior) return;
  if (latent_prior)
    throw UsageError(fmt::format(
        "method {} works in pixel space, but the model '{}' is a latent diffusion model; choose a latent "
        "method: {}",
        method, model, fmt::join(method_names_in<Registry>(true), ", ")));
  throw UsageError(
      fmt::format("method {} runs on the latents of a latent diffusion model, but the model '{}' works in "
                  "pixel space; pass --model with an LDM checkpoint and its config, or choose a pixel-space "
                  "method: {}",
                  method, model, fmt::join(method_names_in<Registry>(false), ", ")));
}

/// The error for a method that cannot run a task.
inline UsageError cannot_run(const std::string& method, const std::string& task, std::string_view reason) {
  return UsageError(
      fmt::format("method {} cannot run task {}: {} (drop the task or the method)", method, task, reason));
}

/// Calls `use(sampler)` with the PosteriorSampler of method `name` for the batch operator `op` (a
/// std::variant, e.g. AnyOperator), noise `noise` and the run's sampler, drawing `num_samples` samples per
/// measurement; throws the cannot_run error where the library does not accept the combination.
template <class Registry = Methods, class AnyOp, class Use>
void with_method(const std::string& name, const MethodSettingsOf<Registry>& settings, const MethodRun& run,
                 int64_t num_samples, const AnyOp& op, const AnyNoise& noise, Use&& use) {
  std::visit(
      [&](const auto& o, const auto& likelihood, const auto& sampler) {
        using Op = std::decay_t<decltype(o)>;
        using Noise = std::decay_t<decltype(likelihood)>;
        const bool found = with_entry(Registry{}, name, [&]<class Entry>() {
          if constexpr (LatentEntry<Entry>) {
            throw UsageError(fmt::format("method {} runs on latents; it needs a latent diffusion model",
                                         name));  // check_method_space refuses this before the run
          } else if constexpr (EntryRuns<Entry, Op, Noise>) {
            use(PosteriorSampler(
                Entry::make(std::get<typename Entry::Settings>(settings), run, likelihood, o, sampler),
                num_samples));
          } else {
            throw cannot_run(name, run.task, Entry::template unmet<Op, Noise>());
          }
        });
        if (!found) throw unknown_method<Registry>(name);
      },
      op, noise, run.schedules.sampler);
}

}  // namespace diffpost::cli
