// The options the subcommands of the diffpost tool share, as typed structs with their flag tables, and the
// scoring and formatting helpers they share.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/runtime/device.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "options.hpp"
#include "run_folder.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------------
// Options shared by several commands, each with the flags that set it. `part` maps a command's options struct
// to the shared part, so that one table serves every command.
// ---------------------------------------------------------------------------------------------------------------

/// --task and the task parameters.
struct TaskOptions {
  std::vector<std::string> tasks;
  TaskParameters parameters;
};

/// The --task flag: one task (`multiple` false) or a comma-separated list, each known and at most once.
template <class O, class Part>
Flag<O> task_flag(Part part, bool multiple) {
  std::string help = multiple ? "task, or a comma-separated list of tasks (one subfolder each):" : "task:";
  for (const auto& task : all_tasks())
    help += "\n" + std::string(32, ' ') + task.name + ": " + task.description;
  return {"task", multiple ? "NAME[,NAME...]" : "NAME", help, "",
          [part, multiple](O& o, const std::string& v) {
            auto tasks = multiple ? unique_list(v, "--task") : std::vector<std::string>{v};
            for (const auto& task : tasks) find_task(task);
            part(o).tasks = std::move(tasks);
          }};
}

/// The parameters of the operators.
template <class O, class Part>
std::vector<Flag<O>> task_parameter_flags(Part part) {
  const TaskParameters d;
  auto p = [part](O& o) -> TaskParameters& { return part(o).parameters; };
  return {
      {"box-size", "N", "box-inpaint: side of the missing square", default_text(d.box_size),
       [p](O& o, const std::string& v) { p(o).box_size = parse_int(v, "--box-size", 1); }},
      {"box-margin", "N", "box-inpaint: the box lies at least this far from the border (random position)",
       default_text(d.box_margin),
       [p](O& o, const std::string& v) { p(o).box_margin = parse_int(v, "--box-margin", 0); }},
      {"drop-fraction", "P", "random-inpaint: fraction of pixels removed", default_text(d.drop_fraction),
       [p](O& o, const std::string& v) {
         p(o).drop_fraction = parse_double(v, "--drop-fraction", 0.0, 1.0);
       }},
      {"mask-file", "FILE",
       "inpainting: mask image, white = observed, black = missing (instead of a random one)", "",
       [p](O& o, const std::string& v) { p(o).mask_file = v; }},
      {"factor", "N", "sr: downsampling factor", default_text(d.factor),
       [p](O& o, const std::string& v) { p(o).factor = parse_int(v, "--factor", 1); }},
      {"kernel-size", "N", "gaussian-deblur, motion-deblur: odd kernel side", default_text(d.kernel_size),
       [p](O& o, const std::string& v) {
         const auto size = parse_int(v, "--kernel-size", 1);
         if (size % 2 == 0) throw UsageError(fmt::format("--kernel-size must be odd, got {}", size));
         p(o).kernel_size = size;
       }},
      {"kernel-sigma", "X", "gaussian-deblur: kernel standard deviation, pixels",
       default_text(d.kernel_sigma),
       [p](O& o, const std::string& v) { p(o).kernel_sigma = parse_double(v, "--kernel-sigma", 1e-3, 1e3); }},
      {"motion-intensity", "X", "motion-deblur: camera shake in [0, 1]", default_text(d.motion_intensity),
       [p](O& o, const std::string& v) {
         p(o).motion_intensity = parse_double(v, "--motion-intensity", 0.0, 1.0);
       }},
      {"kernel-file", "FILE", "deblurring: kernel image (normalised to sum 1) instead of the generated one",
       "", [p](O& o, const std::string& v) { p(o).kernel_file = v; }},
      {"oversample", "X", "phase-retrieval: zero padding, oversample / 8 of the size per side",
       default_text(d.oversample),
       [p](O& o, const std::string& v) { p(o).oversample = parse_double(v, "--oversample", 0.0, 16.0); }},
  };
}

/// The measurement noise.
struct NoiseOptions {
  std::string kind = "gaussian";
  double sigma = 0.05;
  double poisson_rate = 1.0;
};

template <class O, class Part>
std::vector<Flag<O>> noise_flags(Part part) {
  const NoiseOptions d;
  return {
      {"noise", "NAME", "measurement noise: gaussian, poisson or none", d.kind,
       [part](O& o, const std::string& v) {
         part(o).kind = parse_choice(v, "--noise", {"gaussian", "poisson", "none"});
       }},
      {"sigma", "X", "gaussian: standard deviation on the [-1, 1] scale", default_text(d.sigma),
       [part](O& o, const std::string& v) { part(o).sigma = parse_double(v, "--sigma", 0.0, 10.0); }},
      {"poisson-rate", "X", "poisson: photons per 8-bit level (higher = less noise)",
       default_text(d.poisson_rate),
       [part](O& o, const std::string& v) {
         part(o).poisson_rate = parse_double(v, "--poisson-rate", 1e-6, 1e9);
       }},
  };
}

inline AnyNoise noise_model(const NoiseOptions& options) {
  if (options.kind == "gaussian") return GaussianLikelihood(options.sigma);
  if (options.kind == "poisson") return PoissonLikelihood(options.poisson_rate);
  return NoNoise{};
}

inline std::string noise_description(const NoiseOptions& options) {
  if (options.kind == "gaussian") return "gaussian sigma " + default_text(options.sigma);
  if (options.kind == "poisson") return "poisson rate " + default_text(options.poisson_rate);
  return "none";
}

/// The flags of the task and the noise, under their headings.
template <class O, class TaskPart, class NoisePart>
std::vector<FlagGroup<O>> task_groups(TaskPart task, NoisePart noise, bool multiple) {
  auto flags = task_parameter_flags<O>(task);
  flags.insert(flags.begin(), task_flag<O>(task, multiple));
  return {{"Task", flags}, {"Noise", noise_flags<O>(noise)}};
}

/// The reverse process: respacing, sampler, seed and batch size.
struct SamplingOptions {
  std::string steps;
  std::string sampler = "ddpm";
  double eta = 0.0;
  uint64_t seed = 0;
  int64_t batch = 16;
};

/// Sampling flags; `defaults` holds the command's defaults (restore and eval: 100 steps and eta 1, since DPS
/// on deterministic DDIM steps fails - docs/results.md, "DPS on DDIM"; sample: 250 steps, eta 0).
template <class O, class Part>
std::vector<Flag<O>> sampling_flags(Part part, const SamplingOptions& defaults) {
  return {
      {"steps", "SPEC", "timestep respacing: N steps, a,b,c sections or ddimN (1000 = no respacing)",
       defaults.steps,
       [part](O& o, const std::string& v) {
         if (v.empty()) throw UsageError("--steps is empty; give N steps, a,b,c sections or ddimN");
         try {
           DiffusionSchedule::spaced_timesteps(1000, v);
         } catch (const c10::Error& e) {
           throw UsageError(fmt::format("--steps: {}", std::string(e.what_without_backtrace())));
         }
         part(o).steps = v;
       }},
      {"sampler", "NAME", "ddpm (ancestral) or ddim", defaults.sampler,
       [part](O& o, const std::string& v) {
         part(o).sampler = parse_choice(v, "--sampler", {"ddpm", "ddim"});
       }},
      {"eta", "X", "DDIM eta (0 = deterministic; DPS needs > 0, 1 is best measured)",
       default_text(defaults.eta),
       [part](O& o, const std::string& v) { part(o).eta = parse_double(v, "--eta", 0.0, 1.0); }},
      {"seed", "N", "random seed (masks, kernels, noise, sampling)", default_text(defaults.seed),
       [part](O& o, const std::string& v) {
         part(o).seed = static_cast<uint64_t>(parse_int(v, "--seed", 0));
       }},
      {"batch", "N", "images per batch", default_text(defaults.batch),
       [part](O& o, const std::string& v) { part(o).batch = parse_int(v, "--batch", 1, 100000); }},
  };
}

/// The model and the CPU threads.
struct ModelOptions {
  std::string model;
  std::string config;
  std::string beta_schedule = "linear";
  int64_t threads = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  std::string device = "cpu";
  std::string precision = "fp32";
};

/// --device as text, checked for form ("cpu", "cuda", "cuda:N"); whether the machine has it is checked when
/// the run starts (resolve_runtime).
inline std::string parse_device_flag(const std::string& text) {
  try {
    return parse_device(text, "--device").str();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    throw UsageError(message.substr(0, message.find('\n')));
  }
}

template <class O, class Part>
std::vector<Flag<O>> model_flags(Part part) {
  const ModelOptions d;
  return {
      {"model", "FILE",
       "ADM UNet checkpoint (torch.save state dict); default: the bundled Fashion-MNIST prior", "",
       [part](O& o, const std::string& v) { part(o).model = v; }},
      {"config", "FILE",
       "model configuration YAML (reference model_config.yaml keys); default: the --model file with .yaml",
       "", [part](O& o, const std::string& v) { part(o).config = v; }},
      {"beta-schedule", "NAME", "noise schedule the model was trained with: linear or cosine (1000 steps)",
       d.beta_schedule,
       [part](O& o, const std::string& v) {
         part(o).beta_schedule = parse_choice(v, "--beta-schedule", {"linear", "cosine"});
       }},
      {"threads", "N", "CPU threads", default_text(d.threads),
       [part](O& o, const std::string& v) { part(o).threads = parse_int(v, "--threads", 1, 4096); }},
      {"device", "DEVICE",
       "where the network runs: cpu, cuda or cuda:N (cuda with --shard auto: cuda:LOCAL_RANK of the "
       "launcher)",
       d.device, [part](O& o, const std::string& v) { part(o).device = parse_device_flag(v); }},
      {"precision", "NAME",
       "network precision: fp32, tf32 (TF32 tensor cores), bf16 or fp16 (CUDA only) convolutions; "
       "images and gradients stay float32",
       d.precision,
       [part](O& o, const std::string& v) {
         part(o).precision = parse_choice(v, "--precision", {"fp32", "tf32", "bf16", "fp16"});
       }},
  };
}

/// Applies --threads; call it before any LibTorch work.
inline void set_threads(const ModelOptions& options) {
  torch::set_num_threads(static_cast<int>(options.threads));
}

inline DiffusionSchedule base_schedule(const ModelOptions& options) {
  return options.beta_schedule == "linear" ? DiffusionSchedule::linear(1000)
                                           : DiffusionSchedule::cosine(1000);
}

inline AnySampler make_sampler(const ModelOptions& model, const SamplingOptions& sampling) {
  const auto schedule = base_schedule(model).respaced(sampling.steps);
  if (sampling.sampler == "ddpm") return DDPMSampler(schedule);
  return DDIMSampler(schedule, DDIMOptions{}.eta(sampling.eta));
}

inline int64_t num_steps(const AnySampler& sampler) {
  return std::visit([](const auto& s) { return s.schedule().num_steps(); }, sampler);
}

/// The output folder, whether files in it may be replaced, and the part of the run this process does.
struct OutputOptions {
  std::string out;
  bool force = false;
  bool verbose = false;
  bool resume = false;
  std::string shard;  ///< --shard K/N or auto; empty: the whole run
};

template <class O, class Part>
std::vector<Flag<O>> output_flags(Part part) {
  return {
      {"out", "DIR", "output folder (created if missing)", "",
       [part](O& o, const std::string& v) {
         if (v.empty()) throw UsageError("--out must name a folder, got ''");
         part(o).out = v;
       }},
      {"force", "", "overwrite existing output files", "",
       [part](O& o, const std::string&) { part(o).force = true; }},
      {"verbose", "", "print full error messages", "",
       [part](O& o, const std::string&) { part(o).verbose = true; }},
  };
}

/// --resume and --shard, of the commands whose runs can be split and resumed (restore, eval).
template <class O, class Part>
std::vector<Flag<O>> run_part_flags(Part part) {
  return {
      {"resume", "",
       "finish the run in --out: skip the batches whose outputs are complete and intact, redo the others", "",
       [part](O& o, const std::string&) { part(o).resume = true; }},
      {"shard", "K/N|auto",
       "do shard K of N (K from 0) of the batches; auto reads torchrun, Slurm or MPI variables; then "
       "'diffpost merge DIR' combines the shards",
       "",
       [part](O& o, const std::string& v) {
         parse_shard(v);  // checked now, read again when the run starts
         part(o).shard = v;
       }},
  };
}

/// The output folder, which every command that writes files requires.
inline fs::path output_folder(const OutputOptions& options, const std::string& command) {
  if (options.out.empty()) throw UsageError(fmt::format("--out DIR is required (see {} --help)", command));
  return fs::path(options.out);
}

/// The input images: files and folders given as arguments, and the Fashion-MNIST test images.
struct InputOptions {
  std::vector<std::string> paths;
  int64_t test_set = 0;
};

template <class O, class Part>
Flag<O> test_set_flag(Part part) {
  return {"test-set", "N",
          "also use the first N images of the Fashion-MNIST test split (not used in training)", "0",
          [part](O& o, const std::string& v) { part(o).test_set = parse_int(v, "--test-set", 0, 10000); }};
}

/// Declares the positional inputs of `app`.
inline void declare_inputs(CLI::App& app, InputOptions& inputs) {
  app.add_option("inputs", inputs.paths, "input images or folders")->type_name("IMAGE|FOLDER");
}

/// A parsed command line: the app (to ask which flags were given) and the typed options.
template <class Options>
struct ParsedCommand {
  std::unique_ptr<CLI::App> app;
  Options options;
};

/// Parses `argv[2...]` of a command with option `groups` and input paths; nullptr when --help was printed.
template <class Options>
std::unique_ptr<ParsedCommand<Options>> parse_command(const std::string& name, const std::string& description,
                                                      const std::vector<FlagGroup<Options>>& groups, int argc,
                                                      char** argv) {
  auto parsed = std::make_unique<ParsedCommand<Options>>();
  parsed->app = make_app(name, description);
  declare(*parsed->app, parsed->options, groups);
  declare_inputs(*parsed->app, parsed->options.input);
  if (!parse(*parsed->app, argc, argv)) return nullptr;
  return parsed;
}

/// The tasks of a command that requires --task.
inline const std::vector<std::string>& required_tasks(const TaskOptions& options,
                                                      const std::string& command) {
  if (options.tasks.empty()) throw UsageError(fmt::format("--task is required (see {} --help)", command));
  return options.tasks;
}

/// The sampling defaults of the commands that restore measured images (restore, eval).
inline SamplingOptions restoration_sampling_defaults() {
  return {"100", "ddpm", 1.0, 0, 16};
}

/// Sampling, input, model and output flags of the commands that restore measured images (restore, eval),
/// bound to the members `sampling`, `input`, `model` and `output` of their options.
template <class O>
std::vector<FlagGroup<O>> restoration_groups() {
  return {
      {"Sampling", sampling_flags<O>([](O& o) -> SamplingOptions& { return o.sampling; },
                                     restoration_sampling_defaults())},
      {"Input", {test_set_flag<O>([](O& o) -> InputOptions& { return o.input; })}},
      {"Model", model_flags<O>([](O& o) -> ModelOptions& { return o.model; })},
      {"Output", output_flags<O>([](O& o) -> OutputOptions& { return o.output; })},
      {"Sharding and resuming", run_part_flags<O>([](O& o) -> OutputOptions& { return o.output; })},
  };
}

// ---------------------------------------------------------------------------------------------------------------
// DPS step size
// ---------------------------------------------------------------------------------------------------------------

/// --scale: one step size for every task, per-task values, or the tasks' defaults.
struct ScaleSpec {
  std::optional<double> all;
  std::map<std::string, double> per_task;

  /// The step size of `task`: its own value, else the common one, else the task's default.
  [[nodiscard]] double of(const std::string& task) const {
    if (const auto found = per_task.find(task); found != per_task.end()) return found->second;
    return all.value_or(find_task(task).default_scale);
  }

  /// Parses "X" or "task=X,task=Y".
  static ScaleSpec parse(const std::string& text) {
    ScaleSpec spec;
    if (text.find('=') == std::string::npos) {
      spec.all = parse_double(text, "--scale", 0.0, 1e6);
      return spec;
    }
    for (const auto& item : split_list(text)) {
      const auto eq = item.find('=');
      if (eq == std::string::npos)
        throw UsageError(fmt::format("--scale: expected a number or task=value pairs, got '{}'", item));
      const auto task = item.substr(0, eq);
      find_task(task);
      spec.per_task[task] = parse_double(item.substr(eq + 1), "--scale " + task, 0.0, 1e6);
    }
    return spec;
  }
};

/// The help of --scale, listing the per-task defaults.
inline std::string scale_help(const std::string& lead) {
  std::string help = lead + " (per-task defaults:";
  for (const auto& task : all_tasks()) help += fmt::format(" {} {}", task.name, task.default_scale);
  return help + ")";
}

inline StepSizeSchedule parse_step_size_schedule(const std::string& text) {
  const auto kind = parse_choice(text, "--scale-schedule", {"constant", "linear", "exponential"});
  if (kind == "linear") return StepSizeSchedule::linear_decay;
  if (kind == "exponential") return StepSizeSchedule::exponential_decay;
  return StepSizeSchedule::constant;
}

// ---------------------------------------------------------------------------------------------------------------
// Scores and text
// ---------------------------------------------------------------------------------------------------------------

/// Mean and sample standard deviation (n - 1; 0 for a single value) of finite values; NaN when there are
/// none.
inline std::pair<double, double> mean_std(const std::vector<double>& values) {
  std::vector<double> finite;
  for (double v : values)
    if (std::isfinite(v)) finite.push_back(v);
  if (finite.empty()) return {NAN, NAN};
  double sum = 0.0;
  for (double v : finite) sum += v;
  const double mean = sum / static_cast<double>(finite.size());
  double squares = 0.0;
  for (double v : finite) squares += (v - mean) * (v - mean);
  const double std = finite.size() > 1 ? std::sqrt(squares / static_cast<double>(finite.size() - 1)) : 0.0;
  return {mean, std};
}

/// PSNR and SSIM of one method over the images of a run.
struct Scores {
  std::vector<double> psnr;
  std::vector<double> ssim;
  void add(const torch::Tensor& image, const torch::Tensor& truth) {
    const auto p = diffpost::psnr(image, truth), s = diffpost::ssim(image, truth);
    for (int64_t i = 0; i < p.size(0); ++i) {
      psnr.push_back(p[i].item<double>());
      ssim.push_back(s[i].item<double>());
    }
  }
  [[nodiscard]] std::string summary() const {
    const auto [pm, ps] = mean_std(psnr);
    const auto [sm, ss] = mean_std(ssim);
    return fmt::format("PSNR {:.2f} ± {:.2f} dB, SSIM {:.3f} ± {:.3f}", pm, ps, sm, ss);
  }
};

/// The caption of a grid cell scored against the truth: its PSNR in dB to one decimal ("21.4"; "inf" for an
/// exact match), short enough for a 28-pixel cell.
inline std::string psnr_caption(double psnr) {
  return std::isfinite(psnr) ? fmt::format("{:.1f}", psnr) : std::string("inf");
}

/// The caption of the truth's cell, first in each row of a scored grid: it names the numbers beside it.
inline constexpr const char* kPsnrCaptionTitle = "PSNR";

inline std::string csv_number(double value) {
  return std::isfinite(value) ? fmt::format("{:.4f}", value) : "inf";
}

/// The measurement y of one image saved as a PNG: as is where it is an image in [-1, 1] (clamped), and as
/// the log-magnitude picture for phase retrieval, whose magnitudes are not image values.
inline torch::Tensor measurement_to_save(const std::string& task, const AnyOperator& op,
                                         const torch::Tensor& y) {
  if (task == "phase-retrieval") return measurement_picture(op, y);
  return y.clamp(-1.0, 1.0);
}

inline std::string command_line(int argc, char** argv) {
  std::string text = "diffpost";
  for (int i = 1; i < argc; ++i) text += std::string(" ") + argv[i];
  return text;
}

/// The command line of a restore or eval run for its summary, without the flags that do not change its
/// outputs (--out, --threads, --shard, --resume, --force, --verbose), so that a sharded run merged and a
/// single run name the same command.
inline std::string canonical_command(const std::string& command, int argc, char** argv) {
  static const std::set<std::string> with_value{"--out", "--threads", "--shard"};
  static const std::set<std::string> switches{"--resume", "--force", "--verbose"};
  std::string text = "diffpost " + command;
  for (int i = 2; i < argc; ++i) {
    const std::string argument = argv[i];
    const auto name = argument.substr(0, argument.find('='));
    if (switches.count(argument) > 0) continue;
    if (with_value.count(name) > 0) {
      if (name == argument) ++i;  // "--flag value": skip the value too
      continue;
    }
    text += " " + argument;
  }
  return text;
}

}  // namespace diffpost::cli
