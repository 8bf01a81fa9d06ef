// The restoration methods of the diffpost tool: run-time method names mapped to the library's method class
// templates, their options as flags, the schedule each runs on for a given step budget, and what each costs
// in network evaluations.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "common.hpp"
#include "options.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

/// A method the tool knows: its flag name, its name in tables and file names, and a line of help.
struct MethodInfo {
  std::string name;
  std::string title;
  std::string description;
};

/// All methods, in the order of the help text.
inline const std::vector<MethodInfo>& all_methods() {
  static const std::vector<MethodInfo> methods{
      {"dps", "DPS", "Diffusion Posterior Sampling (--scale, --scale-schedule)"},
      {"mcg", "MCG", "Manifold Constrained Gradients: the DPS step, then projection (--scale; linear tasks)"},
      {"score-sde", "Score-SDE", "Score-SDE / ILVR projection onto the diffused measurement (linear tasks)"},
      {"score-ald", "ScoreALD", "annealed Langevin guidance on x_t (--ald-scale, --ald-gamma)"},
      {"sdedit", "SDEdit", "noise the naive inverse to t*, then the plain reverse process (--t-star)"},
      {"diffpir", "DiffPIR",
       "plug-and-play data step on x0 each step, no network gradient (--diffpir-lambda, --diffpir-zeta; "
       "Gaussian noise)"},
      {"ddnm", "DDNM",
       "range-null-space correction of x0, DDNM+ for noise (--ddnm-eta; masks, sr, colorize, denoise; "
       "Gaussian "
       "noise)"},
      {"pigdm", "PiGDM",
       "pseudo-inverse guidance through the network (--pigdm-eta; linear tasks; Gaussian noise)"},
      {"ddrm", "DDRM",
       "denoising in the operator's SVD (--ddrm-eta, --ddrm-eta-b; masks, sr, gaussian-deblur, colorize, "
       "denoise; Gaussian noise)"},
      {"daps", "DAPS",
       "decoupled annealing: ODE steps, then Langevin steps on the measurement (--daps-*; any task)"},
  };
  return methods;
}

inline const MethodInfo& find_method(const std::string& name) {
  for (const auto& method : all_methods())
    if (method.name == name) return method;
  std::vector<std::string> names;
  for (const auto& method : all_methods()) names.push_back(method.name);
  throw UsageError(fmt::format("unknown method '{}'; methods: {}", name, fmt::join(names, ", ")));
}

/// `title` and one line per method ("  dps: ...") for a --method / --methods help text.
inline std::string methods_help(const std::string& title) {
  std::string help = title;
  for (const auto& method : all_methods())
    help += "\n" + std::string(32, ' ') + method.name + ": " + method.description;
  return help;
}

/// The options of every method (each method reads its own), with the libraries' defaults.
struct MethodSettings {
  ScaleSpec scale;
  StepSizeSchedule scale_schedule = StepSizeSchedule::constant;
  double ald_scale = 1.0;
  double ald_gamma = 1.0;
  std::optional<double> ald_sigma;  ///< default: the noise's sigma
  int64_t t_star = 250;
  double diffpir_lambda = DiffPIROptions{}.lambda();
  double diffpir_zeta = DiffPIROptions{}.zeta();
  double ddnm_eta = DDNMOptions{}.eta();
  double pigdm_eta = PiGDMOptions{}.eta();
  double ddrm_eta = DDRMOptions{}.eta();
  double ddrm_eta_b = DDRMOptions{}.eta_b();
  int64_t daps_ode_steps = DAPSOptions{}.ode_steps();
  int64_t daps_langevin_steps = DAPSOptions{}.langevin_steps();
  double daps_step_size = DAPSOptions{}.step_size();
  double daps_tau = DAPSOptions{}.tau();
};

/// The flags of the methods' options other than DPS's step size, bound to the MethodSettings `part(o)`.
template <class O, class Part>
std::vector<Flag<O>> method_option_flags(Part part) {
  const MethodSettings d;
  auto number = [part](const char* name, double MethodSettings::*field, double low, double high) {
    return [part, name, field, low, high](O& o, const std::string& v) {
      part(o).*field = parse_double(v, std::string("--") + name, low, high);
    };
  };
  auto integer = [part](const char* name, int64_t MethodSettings::*field, int64_t low, int64_t high) {
    return [part, name, field, low, high](O& o, const std::string& v) {
      part(o).*field = parse_int(v, std::string("--") + name, low, high);
    };
  };
  return {
      {"ald-scale", "X", "score-ald: guidance scale", default_text(d.ald_scale),
       number("ald-scale", &MethodSettings::ald_scale, 0.0, 1e6)},
      {"ald-gamma", "X", "score-ald: annealing gamma (gamma_t^2 = gamma^2 (1 - abar_t))",
       default_text(d.ald_gamma), number("ald-gamma", &MethodSettings::ald_gamma, 0.0, 1e6)},
      {"ald-sigma", "X", "score-ald: measurement noise level in its weighting; default: --sigma", "",
       [part](O& o, const std::string& v) { part(o).ald_sigma = parse_double(v, "--ald-sigma", 0.0, 10.0); }},
      {"t-star", "N", "sdedit: noise level to start from, in original timesteps of 1000",
       default_text(d.t_star), integer("t-star", &MethodSettings::t_star, 0, 1000)},
      {"diffpir-lambda", "X",
       "diffpir: weight of the prior in the data step (rho_t = lambda sigma^2 / sigmabar_t^2)",
       default_text(d.diffpir_lambda), number("diffpir-lambda", &MethodSettings::diffpir_lambda, 1e-9, 1e9)},
      {"diffpir-zeta", "X", "diffpir: share of fresh noise when re-noising, in [0, 1]",
       default_text(d.diffpir_zeta), number("diffpir-zeta", &MethodSettings::diffpir_zeta, 0.0, 1.0)},
      {"ddnm-eta", "X", "ddnm: DDIM eta of its steps", default_text(d.ddnm_eta),
       number("ddnm-eta", &MethodSettings::ddnm_eta, 0.0, 1.0)},
      {"pigdm-eta", "X", "pigdm: DDIM eta of its steps", default_text(d.pigdm_eta),
       number("pigdm-eta", &MethodSettings::pigdm_eta, 0.0, 1.0)},
      {"ddrm-eta", "X", "ddrm: eta of the unmeasured and noisy components", default_text(d.ddrm_eta),
       number("ddrm-eta", &MethodSettings::ddrm_eta, 0.0, 1.0)},
      {"ddrm-eta-b", "X", "ddrm: eta_b of the measured components", default_text(d.ddrm_eta_b),
       number("ddrm-eta-b", &MethodSettings::ddrm_eta_b, 0.0, 1.0)},
      {"daps-ode-steps", "N", "daps: probability-flow ODE steps per annealing level (network evaluations)",
       default_text(d.daps_ode_steps), integer("daps-ode-steps", &MethodSettings::daps_ode_steps, 1, 1000)},
      {"daps-langevin-steps", "N", "daps: Langevin steps per annealing level (operator gradients only)",
       default_text(d.daps_langevin_steps),
       integer("daps-langevin-steps", &MethodSettings::daps_langevin_steps, 0, 100000)},
      {"daps-step-size", "X", "daps: Langevin step size at the first level (decays to 1% by the last)",
       default_text(d.daps_step_size), number("daps-step-size", &MethodSettings::daps_step_size, 1e-12, 1.0)},
      {"daps-tau", "X", "daps: measurement weight tau of the Langevin target", default_text(d.daps_tau),
       number("daps-tau", &MethodSettings::daps_tau, 1e-9, 1e3)},
  };
}

/// The flags of DPS's (and MCG's) step size.
template <class O, class Part>
std::vector<Flag<O>> step_size_flags(Part part, const std::string& scale_lead) {
  return {
      {"scale", "X|TASK=X,...", scale_help(scale_lead), "",
       [part](O& o, const std::string& v) { part(o).scale = ScaleSpec::parse(v); }},
      {"scale-schedule", "NAME", "DPS/MCG step size over the steps: constant, linear or exponential decay",
       "constant",
       [part](O& o, const std::string& v) { part(o).scale_schedule = parse_step_size_schedule(v); }},
  };
}

/// The schedules and samplers of a run: the model's noise schedule and the step budget of --steps.
struct RunSchedules {
  DiffusionSchedule base;  ///< the model's 1000-step schedule
  AnySampler sampler;      ///< DPS, MCG, Score-SDE, ScoreALD and SDEdit step along it (--steps, --sampler)
  int64_t steps;           ///< network evaluations per image the budget allows

  RunSchedules(const ModelOptions& model, const SamplingOptions& sampling)
      : base(base_schedule(model)), sampler(make_sampler(model, sampling)), steps(num_steps(sampler)) {}

  /// DiffPIR's official quadratic spacing with `steps` steps.
  [[nodiscard]] DiffusionSchedule diffpir() const {
    return steps >= 2 ? base.restricted_to(diffpir_timesteps(steps, base.num_steps())) : base.respaced("1");
  }
  /// Evenly strided DDIM steps (DDNM, PiGDM and DDRM's official spacing) with `steps` steps.
  [[nodiscard]] DiffusionSchedule strided() const { return base.respaced(fmt::format("ddim{}", steps)); }
  /// DAPS's options: `steps` network evaluations = annealing levels x ODE steps.
  [[nodiscard]] DAPSOptions daps(const MethodSettings& m, int64_t num_samples) const {
    return DAPSOptions{}
        .annealing_steps(std::max<int64_t>(1, steps / m.daps_ode_steps))
        .ode_steps(m.daps_ode_steps)
        .langevin_steps(m.daps_langevin_steps)
        .step_size(m.daps_step_size)
        .tau(m.daps_tau)
        .num_samples(num_samples);
  }
};

/// Why `method` cannot run a task whose operator is Op, with noise model N, or empty when it can. The
/// library refuses these combinations at compile time; the tool reports them before anything runs.
template <class Op, class N>
std::string missing_capability(const std::string& method) {
  if ((method == "mcg" || method == "score-sde" || method == "pigdm") && !LinearOperator<Op>)
    return "it needs a linear operator";
  if (method == "sdedit" && !HasNaiveInverse<Op>)
    return "it starts from the naive inverse, which the task lacks";
  if (method == "ddnm" && !PseudoInvertibleOperator<Op>) return "it needs the operator's pseudo-inverse";
  if (method == "ddrm" && !DecomposableOperator<Op>)
    return "it needs the operator's singular value decomposition";
  if ((method == "diffpir" || method == "ddnm" || method == "pigdm" || method == "ddrm") &&
      !GaussianNoiseModel<N>)
    return "it needs Gaussian (or no) measurement noise";
  return {};
}

/// The reason `method` cannot run `task` with `noise`, empty when it can.
inline std::string missing_capability(const std::string& method, const AnyOperator& op,
                                      const AnyNoise& noise) {
  return std::visit(
      [&](const auto& o, const auto& n) {
        return missing_capability<std::decay_t<decltype(o)>, std::decay_t<decltype(n)>>(method);
      },
      op, noise);
}

/// The error for a method that cannot run a task.
inline UsageError cannot_run(const std::string& method, const std::string& task, const std::string& reason) {
  return UsageError(
      fmt::format("method {} cannot run task {}: {} (drop the task or the method)", method, task, reason));
}

/// What a method needs besides the operator, the noise and the model.
struct MethodRun {
  const std::string& method;
  const std::string& task;
  const MethodSettings& settings;
  const RunSchedules& schedules;
  double noise_sigma;  ///< --sigma, ScoreALD's default weighting
  int64_t num_samples = 1;
};

/// How many steps a method reports to its progress callback: its schedule's, or from its start (SDEdit).
template <class Method>
int64_t reported_steps(const Method& method) {
  if constexpr (requires { method.start_index(); })
    return method.start_index() + 1;
  else
    return method.schedule().num_steps();
}

/// Calls `use(m)` with the method object of `run` for operator `op` and noise `noise`; throws the
/// cannot_run error when the combination is impossible.
template <class Use>
auto with_method(const MethodRun& run, const AnyOperator& op, const AnyNoise& noise, Use&& use) {
  const auto& m = run.settings;
  const auto& method = run.method;
  return std::visit(
      [&](const auto& o, const auto& likelihood, const auto& sampler) {
        using Op = std::decay_t<decltype(o)>;
        using Noise = std::decay_t<decltype(likelihood)>;
        const double scale = m.scale.of(run.task);
        if (method == "dps")
          return use(DPS(
              o, likelihood, sampler,
              DPSOptions{}.scale(scale).step_size_schedule(m.scale_schedule).num_samples(run.num_samples)));
        if (method == "score-ald")
          return use(ScoreALD(o, likelihood, sampler,
                              ScoreALDOptions{}
                                  .scale(m.ald_scale)
                                  .gamma(m.ald_gamma)
                                  .sigma(m.ald_sigma.value_or(run.noise_sigma))
                                  .num_samples(run.num_samples)));
        if (method == "daps")
          return use(DAPS(o, likelihood, run.schedules.base, run.schedules.daps(m, run.num_samples)));
        if constexpr (LinearOperator<Op>) {
          if (method == "mcg")
            return use(MCG(
                o, likelihood, sampler,
                DPSOptions{}.scale(scale).step_size_schedule(m.scale_schedule).num_samples(run.num_samples)));
          if (method == "score-sde")
            return use(ScoreSDEProjection(o, sampler, ProjectionOptions{}.num_samples(run.num_samples)));
        }
        if constexpr (HasNaiveInverse<Op>) {
          if (method == "sdedit")
            return use(SDEdit(o, sampler, SDEditOptions{}.t_star(m.t_star).num_samples(run.num_samples)));
        }
        if constexpr (GaussianNoiseModel<Noise>) {
          if (method == "diffpir")
            return use(DiffPIR(
                o, likelihood, run.schedules.diffpir(),
                DiffPIROptions{}.lambda(m.diffpir_lambda).zeta(m.diffpir_zeta).num_samples(run.num_samples)));
          if constexpr (LinearOperator<Op>) {
            if (method == "pigdm")
              return use(PiGDM(o, likelihood, run.schedules.strided(),
                               PiGDMOptions{}.eta(m.pigdm_eta).num_samples(run.num_samples)));
          }
          if constexpr (PseudoInvertibleOperator<Op>) {
            if (method == "ddnm")
              return use(DDNM(o, likelihood, run.schedules.strided(),
                              DDNMOptions{}.eta(m.ddnm_eta).num_samples(run.num_samples)));
          }
          if constexpr (DecomposableOperator<Op>) {
            if (method == "ddrm")
              return use(
                  DDRM(o, likelihood, run.schedules.strided(),
                       DDRMOptions{}.eta(m.ddrm_eta).eta_b(m.ddrm_eta_b).num_samples(run.num_samples)));
          }
        }
        find_method(method);  // throws for unknown names
        throw cannot_run(method, run.task, missing_capability<Op, Noise>(method));
      },
      op, noise, run.schedules.sampler);
}

}  // namespace diffpost::cli
