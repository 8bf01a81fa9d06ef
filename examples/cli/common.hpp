// Flags, parsing and scoring shared by the subcommands of the diffpost tool.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "args.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

inline void add_input_flags(ArgParser& args) {
  args.section("Input");
  args.add("test-set", "N",
           "also use the first N images of the Fashion-MNIST test split (not used in training)", "0");
}

inline void add_model_flags(ArgParser& args) {
  args.section("Model");
  args.add("model", "FILE",
           "ADM UNet checkpoint (torch.save state dict); default: the bundled Fashion-MNIST prior");
  args.add(
      "config", "FILE",
      "model configuration YAML (reference model_config.yaml keys); default: the --model file with .yaml");
  args.add("beta-schedule", "NAME",
           "noise schedule the model was trained with: linear or cosine (1000 steps)", "linear");
  args.add("threads", "N", "CPU threads", std::to_string(std::max(1u, std::thread::hardware_concurrency())));
}

/// Sampling flags. `default_eta` is 0 (deterministic DDIM) for unconditional sampling and 1 for the
/// restoring commands: DPS on deterministic DDIM steps fails (docs/results.md, "DPS on DDIM").
inline void add_sampler_flags(ArgParser& args, const std::string& default_steps,
                              const std::string& default_eta = "0") {
  args.section("Sampling");
  args.add("steps", "SPEC", "timestep respacing: N steps, a,b,c sections or ddimN (1000 = no respacing)",
           default_steps);
  args.add("sampler", "NAME", "ddpm (ancestral) or ddim", "ddpm");
  args.add("eta", "X", "DDIM eta (0 = deterministic; DPS needs > 0, 1 is best measured)", default_eta);
  args.add("seed", "N", "random seed (masks, kernels, noise, sampling)", "0");
  args.add("batch", "N", "images per batch", "16");
}

inline void add_output_flags(ArgParser& args) {
  args.section("Output");
  args.add("out", "DIR", "output folder (created if missing)");
  args.add_switch("force", "overwrite existing output files");
  args.add_switch("verbose", "print full error messages");
}

inline void add_task_flags(ArgParser& args, bool multiple) {
  std::string task_help =
      multiple ? "task, or a comma-separated list of tasks (one subfolder each):" : "task:";
  for (const auto& task : all_tasks())
    task_help += "\n" + std::string(32, ' ') + task.name + ": " + task.description;
  args.section("Task");
  args.add("task", multiple ? "NAME[,NAME...]" : "NAME", task_help);
  const TaskParameters d;
  args.add("box-size", "N", "box-inpaint: side of the missing square", std::to_string(d.box_size));
  args.add("box-margin", "N", "box-inpaint: the box lies at least this far from the border (random position)",
           std::to_string(d.box_margin));
  args.add("drop-fraction", "P", "random-inpaint: fraction of pixels removed",
           fmt::format("{}", d.drop_fraction));
  args.add("mask-file", "FILE",
           "inpainting: mask image, white = observed, black = missing (instead of a random one)");
  args.add("factor", "N", "sr: downsampling factor", std::to_string(d.factor));
  args.add("kernel-size", "N", "gaussian-deblur, motion-deblur: odd kernel side",
           std::to_string(d.kernel_size));
  args.add("kernel-sigma", "X", "gaussian-deblur: kernel standard deviation, pixels",
           fmt::format("{}", d.kernel_sigma));
  args.add("motion-intensity", "X", "motion-deblur: camera shake in [0, 1]",
           fmt::format("{}", d.motion_intensity));
  args.add("kernel-file", "FILE",
           "deblurring: kernel image (normalised to sum 1) instead of the generated one");
  args.add("oversample", "X", "phase-retrieval: zero padding, oversample / 8 of the size per side",
           fmt::format("{}", d.oversample));
  args.section("Noise");
  args.add("noise", "NAME", "measurement noise: gaussian, poisson or none", "gaussian");
  args.add("sigma", "X", "gaussian: standard deviation on the [-1, 1] scale", "0.05");
  args.add("poisson-rate", "X", "poisson: photons per 8-bit level (higher = less noise)", "1");
}

inline TaskParameters task_parameters(const ArgParser& args) {
  TaskParameters p;
  p.box_size = args.get_int("box-size", 1);
  p.box_margin = args.get_int("box-margin", 0);
  p.drop_fraction = args.get_double("drop-fraction", 0.0, 1.0);
  p.factor = args.get_int("factor", 1);
  p.kernel_size = args.get_int("kernel-size", 1);
  if (p.kernel_size % 2 == 0)
    throw UsageError(fmt::format("--kernel-size must be odd, got {}", p.kernel_size));
  p.kernel_sigma = args.get_double("kernel-sigma", 1e-3, 1e3);
  p.motion_intensity = args.get_double("motion-intensity", 0.0, 1.0);
  p.oversample = args.get_double("oversample", 0.0, 16.0);
  p.kernel_file = args.get("kernel-file");
  p.mask_file = args.get("mask-file");
  return p;
}

inline AnyNoise noise_model(const ArgParser& args) {
  const auto kind = args.get_choice("noise", {"gaussian", "poisson", "none"});
  if (kind == "gaussian") return GaussianLikelihood(args.get_double("sigma", 0.0, 10.0));
  if (kind == "poisson") return PoissonLikelihood(args.get_double("poisson-rate", 1e-6, 1e9));
  return NoNoise{};
}

inline std::string noise_description(const ArgParser& args) {
  const auto kind = args.get("noise");
  if (kind == "gaussian") return "gaussian sigma " + args.get("sigma");
  if (kind == "poisson") return "poisson rate " + args.get("poisson-rate");
  return "none";
}

inline void set_threads(const ArgParser& args) {
  const auto threads = args.get_int("threads", 1, 4096);
  torch::set_num_threads(static_cast<int>(threads));
}

inline DiffusionSchedule base_schedule(const ArgParser& args) {
  const auto kind = args.get_choice("beta-schedule", {"linear", "cosine"});
  return kind == "linear" ? DiffusionSchedule::linear(1000) : DiffusionSchedule::cosine(1000);
}

inline AnySampler make_sampler(const ArgParser& args) {
  const auto schedule = base_schedule(args).respaced(args.get("steps"));
  const auto kind = args.get_choice("sampler", {"ddpm", "ddim"});
  if (kind == "ddpm") return DDPMSampler(schedule);
  return DDIMSampler(schedule, DDIMOptions{}.eta(args.get_double("eta", 0.0, 1.0)));
}

inline int64_t num_steps(const AnySampler& sampler) {
  return std::visit([](const auto& s) { return s.schedule().num_steps(); }, sampler);
}

inline fs::path output_folder(const ArgParser& args) {
  if (!args.has("out"))
    throw UsageError(fmt::format("--out DIR is required (see {} --help)", args.command()));
  return fs::path(args.get("out"));
}

inline bool help_requested(ArgParser& args, int argc, char** argv) {
  args.parse(argc, argv, 2);
  if (!args.flag("help")) return false;
  std::fputs(args.help().c_str(), stdout);
  return true;
}

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

/// Parses --scale: empty = every task's default; a number = that scale for every task; "task=x,task=y" =
/// per-task values, defaults for the others.
inline std::map<std::string, double> task_scales(const std::string& text,
                                                 const std::vector<std::string>& tasks) {
  std::map<std::string, double> scales;
  for (const auto& task : tasks) scales[task] = find_task(task).default_scale;
  if (text.empty()) return scales;
  if (text.find('=') == std::string::npos) {
    const double value = ArgParser::parse_double(text, "--scale", 0.0, 1e6);
    for (auto& [task, scale] : scales) scale = value;
    return scales;
  }
  for (const auto& item : split_list(text)) {
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      throw UsageError(fmt::format("--scale: expected a number or task=value pairs, got '{}'", item));
    const auto task = item.substr(0, eq);
    find_task(task);
    scales[task] = ArgParser::parse_double(item.substr(eq + 1), "--scale " + task, 0.0, 1e6);
  }
  return scales;
}

inline StepSizeSchedule step_size_schedule(const ArgParser& args) {
  const auto kind = args.get_choice("scale-schedule", {"constant", "linear", "exponential"});
  if (kind == "linear") return StepSizeSchedule::linear_decay;
  if (kind == "exponential") return StepSizeSchedule::exponential_decay;
  return StepSizeSchedule::constant;
}

/// The comma-separated items of a list flag, each at most once.
inline std::vector<std::string> unique_list(const std::string& text, const std::string& flag) {
  std::vector<std::string> items;
  for (const auto& item : split_list(text)) {
    if (std::find(items.begin(), items.end(), item) != items.end())
      throw UsageError(fmt::format("{}: '{}' is listed twice", flag, item));
    items.push_back(item);
  }
  if (items.empty()) throw UsageError(fmt::format("{} is empty", flag));
  return items;
}

/// The flags of every command that runs the model and writes files.
struct RunFlags {
  uint64_t seed;
  int64_t batch_size;
  bool force;
  fs::path out;
};

/// Reads --seed, --batch, --force and --out, and applies --threads (before any LibTorch work).
inline RunFlags run_flags(const ArgParser& args) {
  RunFlags flags{static_cast<uint64_t>(args.get_int("seed", 0)), args.get_int("batch", 1, 100000),
                 args.flag("force"), output_folder(args)};
  set_threads(args);
  return flags;
}

/// The flags of the commands that restore measured images (restore, eval): sampling, input, model, output.
inline void add_restoration_flags(ArgParser& args) {
  add_sampler_flags(args, "100", "1");
  add_input_flags(args);
  add_model_flags(args);
  add_output_flags(args);
}

/// The tasks of --task (a comma-separated list, each known and at most once).
inline std::vector<std::string> required_tasks(const ArgParser& args) {
  if (!args.has("task")) throw UsageError(fmt::format("--task is required (see {} --help)", args.command()));
  auto tasks = unique_list(args.get("task"), "--task");
  for (const auto& task : tasks) find_task(task);
  return tasks;
}

}  // namespace diffpost::cli
