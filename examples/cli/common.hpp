// The options the subcommands of the diffpost tool share, as typed structs with the CLI11 flags that set
// them, and the scoring and formatting helpers they share.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/runtime/device.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "methods.hpp"
#include "model.hpp"
#include "options.hpp"
#include "run_folder.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------------
// Options shared by several commands, each declared on a command's parser by its add_* function. The groups
// name the headings of --help; `diffpost eval --sweep` may vary the flags of the groups "Task parameters",
// "Noise", "Method options" and "Sampling".
// ---------------------------------------------------------------------------------------------------------------

/// --task and the task parameters.
struct TaskOptions {
  std::vector<std::string> tasks;
  TaskParameters parameters;
};

/// --task (one task, or with `multiple` a comma-separated list, each at most once) and every task's
/// parameters.
inline void add_task_options(CLI::App& app, TaskOptions& o, bool multiple) {
  auto* task =
      app.add_option("--task", o.tasks,
                     tasks_help(multiple ? "task, or a comma-separated list of tasks (one subfolder each):"
                                         : "task:"))
          ->type_name(multiple ? "NAME[,NAME...]" : "NAME")
          ->check(CLI::IsMember(task_names()))
          ->allow_extra_args(false)  // "--task a,b IMAGE": the image is an input, not a task
          ->group("Task");
  if (multiple) {
    task->delimiter(',');
  } else {
    task->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  }
  add_task_parameter_options(app, o.parameters);
}

/// The tasks of a command that requires --task, each at most once.
inline const std::vector<std::string>& required_tasks(const TaskOptions& options,
                                                      const std::string& command) {
  if (options.tasks.empty()) throw UsageError(fmt::format("--task is required (see {} --help)", command));
  check_unique(options.tasks, "--task");
  return options.tasks;
}

/// The measurement noise.
struct NoiseOptions {
  std::string kind = "gaussian";
  double sigma = 0.05;
  double poisson_rate = 1.0;
};

inline void add_noise_options(CLI::App& app, NoiseOptions& o) {
  add_value_option(app, "--noise", o.kind, "measurement noise: gaussian, poisson or none", "NAME", "Noise")
      ->check(CLI::IsMember({"gaussian", "poisson", "none"}));
  add_value_option(app, "--sigma", o.sigma, "gaussian: standard deviation on the [-1, 1] scale", "X", "Noise")
      ->check(finite_in(0.0, 10.0));
  add_value_option(app, "--poisson-rate", o.poisson_rate,
                   "poisson: photons per 8-bit level (higher = less noise)", "X", "Noise")
      ->check(finite_in(1e-6, 1e9));
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

/// The reverse process (respacing, sampler), the seed and the batch size.
struct SamplingOptions {
  std::string steps;
  std::string sampler = "ddpm";
  double eta = 0.0;
  uint64_t seed = 0;
  int64_t batch = 16;
};

/// --steps, --sampler and --eta (group "Sampling"); --seed and --batch (group "Run"). The defaults are the
/// command's: restore and eval take 100 steps and eta 1, since DPS on deterministic DDIM steps fails
/// (docs/results.md, "DPS on DDIM"); sample takes 250 steps and eta 0.
inline void add_sampling_options(CLI::App& app, SamplingOptions& o) {
  add_value_option(app, "--steps", o.steps,
                   "timestep respacing: N steps, a,b,c sections or ddimN (1000 = no respacing)", "SPEC",
                   "Sampling")
      ->check(checked_by(
          [](const std::string& text) {
            if (text.empty()) throw UsageError("--steps is empty; give N steps, a,b,c sections or ddimN");
            DiffusionSchedule::spaced_timesteps(1000, text);
          },
          ""));
  add_value_option(app, "--sampler", o.sampler, "ddpm (ancestral) or ddim", "NAME", "Sampling")
      ->check(CLI::IsMember({"ddpm", "ddim"}));
  add_value_option(app, "--eta", o.eta, "DDIM eta (0 = deterministic; DPS needs > 0, 1 is best measured)",
                   "X", "Sampling")
      ->check(finite_in(0.0, 1.0));
  add_value_option(app, "--seed", o.seed, "random seed (masks, kernels, noise, sampling)", "N", "Run");
  add_value_option(app, "--batch", o.batch, "images per batch", "N", "Run")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
}

/// The model and where it runs.
struct ModelOptions {
  std::string model;
  std::string config;
  std::string autoencoder;         ///< a latent diffusion model's autoencoder checkpoint, when not in --model
  std::string autoencoder_config;  ///< its config (default: the model config's first_stage_config)
  std::string beta_schedule = "linear";
  bool beta_schedule_given =
      false;  // a diffusers folder's scheduler config decides; --beta-schedule is refused
  int64_t threads = static_cast<int64_t>(std::max(1U, std::thread::hardware_concurrency()));
  std::string device = "cpu";
  std::string precision = "fp32";
};

inline void add_model_options(CLI::App& app, ModelOptions& o) {
  app.add_option("--model", o.model,
                 "ADM UNet checkpoint (torch.save state dict or safetensors), a diffusers folder "
                 "(UNet2DModel, with its scheduler) or a CompVis latent diffusion checkpoint (model.ckpt, "
                 "with its LDM config); default: the bundled Fashion-MNIST prior")
      ->type_name("PATH")
      ->group("Model");
  app.add_option(
         "--config", o.config,
         "model configuration YAML (reference model_config.yaml keys, or a CompVis LDM config such as "
         "ffhq-ldm-vq-4.yaml); default: the --model file with .yaml")
      ->type_name("FILE")
      ->group("Model");
  app.add_option(
         "--autoencoder", o.autoencoder,
         "latent diffusion models: the autoencoder's checkpoint (e.g. vq-f4's model.ckpt) when --model "
         "holds only the UNet, or to replace the one it holds")
      ->type_name("FILE")
      ->group("Model");
  app.add_option("--autoencoder-config", o.autoencoder_config,
                 "the --autoencoder checkpoint's config (its config.yaml); default: the model config's "
                 "first_stage_config")
      ->type_name("FILE")
      ->group("Model");
  add_value_option(app, "--beta-schedule", o.beta_schedule,
                   "noise schedule the model was trained with: linear or cosine (1000 steps); a diffusers "
                   "folder's comes from its scheduler config",
                   "NAME", "Model")
      ->check(CLI::IsMember({"linear", "cosine"}))
      ->each([&o](const std::string&) { o.beta_schedule_given = true; });
  add_value_option(app, "--threads", o.threads, "CPU threads", "N", "Model")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  // The form is checked here ("cpu", "cuda", "cuda:N"); whether the machine has it when the run starts.
  add_value_option(
      app, "--device", o.device,
      "where the network runs: cpu, cuda or cuda:N (cuda with --shard auto: cuda:LOCAL_RANK of the "
      "launcher)",
      "DEVICE", "Model")
      ->check(checked_by([](const std::string& text) { parse_device(text, "--device"); }, ""));
  add_value_option(
      app, "--precision", o.precision,
      "network precision: fp32, tf32 (TF32 tensor cores), bf16 or fp16 (CUDA only) convolutions; images "
      "and gradients stay float32",
      "NAME", "Model")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}));
}

/// resolve_prior for the --model, --config, --autoencoder and --autoencoder-config of `options`.
inline PriorFiles resolve_prior(const ModelOptions& options) {
  return resolve_prior(options.model, options.config, options.autoencoder, options.autoencoder_config);
}

/// Applies --threads; call it before any LibTorch work.
inline void set_threads(const ModelOptions& options) {
  torch::set_num_threads(static_cast<int>(options.threads));
}

/// The scheduler of --model when it is a diffusers folder (prior_scheduler), else std::nullopt.
inline std::optional<DiffusersScheduler> model_scheduler(const ModelOptions& options) {
  if (options.model.empty() || !is_diffusers_folder(options.model)) return std::nullopt;
  return prior_scheduler(PriorFiles::of_diffusers_folder(options.model));
}

/// The training schedule of the model of `files` (resolve_prior of `options`): a diffusers folder's
/// scheduler (its betas as diffusers computes them), a latent diffusion model's config (timesteps,
/// beta_schedule, linear_start, linear_end; loading checks the checkpoint's betas against it), else
/// --beta-schedule over 1000 steps.
inline DiffusionSchedule base_schedule(const ModelOptions& options, const PriorFiles& files) {
  if (files.latent) {
    if (options.beta_schedule_given)
      throw UsageError(
          fmt::format("--beta-schedule is for ADM checkpoints; the latent diffusion model '{}' takes its "
                      "schedule from its config '{}': drop --beta-schedule",
                      files.checkpoint.string(), files.config.string()));
    return latent_model_config(files).schedule();
  }
  if (const auto scheduler = model_scheduler(options)) {
    if (options.beta_schedule_given)
      throw UsageError(
          fmt::format("--beta-schedule is for ADM checkpoints; the diffusers folder '{}' takes its "
                      "schedule from its scheduler_config.json: drop --beta-schedule",
                      options.model));
    return scheduler->training_schedule();
  }
  return options.beta_schedule == "linear" ? DiffusionSchedule::linear(1000)
                                           : DiffusionSchedule::cosine(1000);
}

/// The sampler of --steps (diffpost's respacing of the training schedule), --sampler and --eta; a diffusers
/// folder's scheduler sets its variance and clipping (DiffusersScheduler::ddpm_options, ddim_options).
inline AnySampler make_sampler(const ModelOptions& model, const SamplingOptions& sampling,
                               const PriorFiles& files) {
  const auto scheduler = model_scheduler(model);
  const auto schedule = base_schedule(model, files).respaced(sampling.steps);
  if (sampling.sampler == "ddpm")
    return DDPMSampler(schedule, scheduler ? scheduler->ddpm_options() : DDPMOptions{});
  return DDIMSampler(schedule, (scheduler ? scheduler->ddim_options() : DDIMOptions{}).eta(sampling.eta));
}

/// The schedules of a restore or eval run.
inline RunSchedules run_schedules(const ModelOptions& model, const SamplingOptions& sampling,
                                  const PriorFiles& files) {
  return {base_schedule(model, files), make_sampler(model, sampling, files)};
}

/// The output folder, whether files in it may be replaced, and the part of the run this process does.
struct OutputOptions {
  std::string out;
  bool force = false;
  bool verbose = false;
  bool resume = false;
  std::string shard;  ///< --shard K/N or auto; empty: the whole run
};

inline void add_output_options(CLI::App& app, OutputOptions& o,
                               const std::string& out_help =
                                   "output folder (created "
                                   "if missing)") {
  app.add_option("--out", o.out, out_help)
      ->type_name("DIR")
      ->check(checked_by(
          [](const std::string& text) {
            if (text.empty()) throw UsageError("must name a folder, got ''");
          },
          ""))
      ->group("Output");
  app.add_flag("--force", o.force, "overwrite existing output files")->group("Output");
  app.add_flag("--verbose", o.verbose, "print full error messages")->group("Output");
}

/// --resume and --shard, of the commands whose runs can be split and resumed (restore, eval).
inline void add_run_part_options(CLI::App& app, OutputOptions& o) {
  app.add_flag(
         "--resume", o.resume,
         "finish the run in --out: skip the batches whose outputs are complete and intact, redo the others")
      ->group("Sharding and resuming");
  app.add_option(
         "--shard", o.shard,
         "do shard K of N (K from 0) of the batches; auto reads torchrun, Slurm or MPI variables; then "
         "'diffpost merge DIR' combines the shards")
      ->type_name("K/N|auto")
      ->check(checked_by([](const std::string& text) { parse_shard(text); }, ""))
      ->group("Sharding and resuming");
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

/// The positional inputs and, with `test_set`, --test-set.
inline void add_input_options(CLI::App& app, InputOptions& o, bool test_set = true) {
  app.add_option("inputs", o.paths, "input images or folders")->type_name("IMAGE|FOLDER");
  if (!test_set) return;
  add_value_option(app, "--test-set", o.test_set,
                   "also use the first N images of the Fashion-MNIST test split (not used in training)", "N",
                   "Input")
      ->check(CLI::Range(int64_t{0}, int64_t{10000}));
}

/// A parsed command line: the parser (to ask which flags were given) and the typed options it filled.
template <class Options>
struct ParsedCommand {
  std::unique_ptr<CLI::App> app;
  Options options;
};

/// A command's parser named `name` with `description`, its flags declared by `declare(app, options)`.
template <class Options, class Declare>
std::unique_ptr<ParsedCommand<Options>> make_command(const std::string& name, const std::string& description,
                                                     Declare&& declare) {
  auto command = std::make_unique<ParsedCommand<Options>>();
  command->app = make_app(name, description);
  declare(*command->app, command->options);
  return command;
}

/// Parses `argv[2...]` of a command; nullptr when --help was printed.
template <class Options, class Declare>
std::unique_ptr<ParsedCommand<Options>> parse_command(const std::string& name, const std::string& description,
                                                      Declare&& declare, int argc, char** argv) {
  auto command = make_command<Options>(name, description, std::forward<Declare>(declare));
  if (!parse(*command->app, argc, argv)) return nullptr;
  return command;
}

/// Reads a command's options back from a run's stored settings (RunSettings::settings), as `diffpost merge`
/// does: CLI11 reads its own configuration format, with every flag's checks.
template <class Options, class Declare>
std::unique_ptr<ParsedCommand<Options>> load_command(const std::string& name, const std::string& description,
                                                     Declare&& declare, const std::string& settings) {
  auto command = make_command<Options>(name, description, std::forward<Declare>(declare));
  std::istringstream stream(settings);
  try {
    command->app->parse_from_stream(stream);
  } catch (const CLI::ParseError& e) {
    throw UsageError(fmt::format("the stored settings of this {} run do not read back: {}", name, e.what()));
  }
  return command;
}

/// The sampling defaults of the commands that restore measured images (restore, eval).
inline SamplingOptions restoration_sampling_defaults() {
  return {"100", "ddpm", 1.0, 0, 16};
}

/// The sampling, input, model, output and sharding options of the commands that restore measured images
/// (restore, eval), bound to the members `sampling`, `input`, `model` and `output` of their options.
template <class O>
void add_restoration_options(CLI::App& app, O& o) {
  add_sampling_options(app, o.sampling);
  add_input_options(app, o.input);
  add_model_options(app, o.model);
  add_output_options(app, o.output);
  add_run_part_options(app, o.output);
}

/// The progress of one task's batches in this process. Its bar starts with the first batch this process
/// restores, when the method says how many steps a batch takes.
struct TaskProgress {
  TaskProgress(int64_t batch_count, std::string bar_label)
      : batches(batch_count), label(std::move(bar_label)) {}

  int64_t batches;  ///< this process's batches of the task
  std::string label;
  std::optional<ProgressBar> bar;
  int64_t steps = 0;  ///< per batch
  int64_t done = 0;   ///< batches done or kept

  void start(int64_t steps_per_batch) {
    if (bar) return;
    steps = steps_per_batch;
    bar.emplace(batches * steps, label);
    bar->update(done * steps);
  }
  void finish_batch() {
    ++done;
    if (bar) bar->update(done * steps);
  }
};

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

}  // namespace diffpost::cli
