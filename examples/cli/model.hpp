// Finding and loading the prior for the diffpost tool: an ADM UNet checkpoint plus its YAML configuration,
// by default the bundled Fashion-MNIST prior.
#pragma once

#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/runtime/device.hpp>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "options.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

/// The bundled prior's file names inside a prior directory.
inline constexpr const char* kBundledCheckpoint = "fashion_mnist_28.pt";
inline constexpr const char* kBundledConfig = "fashion_mnist_28.yaml";
/// The bundled Fashion-MNIST classifier whose features `diffpost eval` uses for the Frechet distance.
inline constexpr const char* kBundledClassifier = "fashion_mnist_classifier.pt";

/// The directory holding the running executable (via /proc/self/exe), or empty when unknown.
inline fs::path executable_directory() {
  std::error_code error;
  const auto self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::path{} : self.parent_path();
}

/// Where the bundled prior is looked for, in order: $DIFFPOST_PRIOR_DIR; next to the executable's install
/// prefix (<prefix>/bin/diffpost -> <prefix>/share/diffpost/prior); the install data directory configured at
/// build time; the source tree the executable was built from (<source>/examples/prior); an `examples/prior`
/// folder in the current directory.
inline std::vector<fs::path> prior_search_directories() {
  std::vector<fs::path> directories;
  if (const char* env = std::getenv("DIFFPOST_PRIOR_DIR"); env && *env) directories.emplace_back(env);
  if (const auto exe = executable_directory(); !exe.empty())
    directories.push_back(exe.parent_path() / "share" / "diffpost" / "prior");
#ifdef DIFFPOST_INSTALL_PRIOR_DIR
  directories.emplace_back(DIFFPOST_INSTALL_PRIOR_DIR);
#endif
#ifdef DIFFPOST_SOURCE_DIR
  directories.push_back(fs::path(DIFFPOST_SOURCE_DIR) / "examples" / "prior");
#endif
  directories.push_back(fs::path("examples") / "prior");
  return directories;
}

/// A checkpoint and the configuration it is loaded with.
struct PriorFiles {
  fs::path checkpoint;
  fs::path config;
};

/// Resolves --model / --config: both given: used as given; only --config: its `model_path` (relative to
/// the config's folder); only --model: the .yaml file of the same name next to it; neither: the bundled
/// prior in the first of prior_search_directories() that holds both files.
inline PriorFiles resolve_prior(const std::string& model_flag, const std::string& config_flag) {
  std::error_code error;
  if (!model_flag.empty() && !config_flag.empty()) return {model_flag, config_flag};
  if (!config_flag.empty()) {
    const auto config = read_adm_model_config(config_flag);
    if (config.model_path.empty())
      throw UsageError(
          fmt::format("config '{}' has no model_path; pass the checkpoint with --model", config_flag));
    fs::path checkpoint(config.model_path);
    if (checkpoint.is_relative()) checkpoint = fs::path(config_flag).parent_path() / checkpoint;
    return {checkpoint, config_flag};
  }
  if (!model_flag.empty()) {
    auto config = fs::path(model_flag).replace_extension(".yaml");
    if (!fs::is_regular_file(config, error))
      throw UsageError(fmt::format("no config given for model '{}' and '{}' does not exist; pass --config",
                                   model_flag, config.string()));
    return {model_flag, config};
  }
  std::string searched;
  for (const auto& directory : prior_search_directories()) {
    const auto checkpoint = directory / kBundledCheckpoint;
    const auto config = directory / kBundledConfig;
    if (fs::is_regular_file(checkpoint, error) && fs::is_regular_file(config, error))
      return {checkpoint, config};
    searched += (searched.empty() ? "" : ", ") + directory.string();
  }
  throw UsageError(
      fmt::format("the bundled prior ({} and {}) was not found in {}; pass --model and --config, or set "
                  "DIFFPOST_PRIOR_DIR",
                  kBundledCheckpoint, kBundledConfig, searched));
}

/// A loaded prior: the network in eval mode with frozen parameters, and where it came from.
struct Prior {
  AdmUNet model{nullptr};
  AdmUNetOptions options{0, 0, 0};
  PriorFiles files;

  /// [C, H, W] of the images the model works on.
  [[nodiscard]] Shape image_shape() const {
    return {options.in_channels(), options.image_size(), options.image_size()};
  }
};

/// [C, H, W] of the images the model of `files` works on, read from its configuration alone.
inline Shape prior_image_shape(const PriorFiles& files) {
  std::error_code error;
  if (!fs::is_regular_file(files.config, error))
    throw UsageError(fmt::format("cannot read model config '{}': no such file", files.config.string()));
  const auto options = read_adm_model_config(files.config).options;
  return {options.in_channels(), options.image_size(), options.image_size()};
}

/// Where and in which precision the network runs.
struct Runtime {
  torch::Device device = torch::kCPU;
  Precision precision = Precision::fp32;
};

/// The device and precision of `--device` and `--precision`, checked against the machine; "cuda" without an
/// index becomes cuda:`local_rank` when the launcher gave one (--shard auto). Sets the process-wide TF32
/// switches for the precision.
inline Runtime resolve_runtime(const std::string& device, const std::string& precision,
                               std::optional<int64_t> local_rank = std::nullopt) {
  const auto first_line = [](const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    return message.substr(0, message.find('\n'));
  };
  Runtime runtime;
  try {
    const bool per_rank = device == "cuda" && local_rank.has_value();
    const auto text = per_rank ? fmt::format("cuda:{}", *local_rank) : device;
    runtime.device = usable_device(
        text, per_rank ? fmt::format("--device cuda (LOCAL_RANK {})", *local_rank) : "--device");
    runtime.precision = parse_precision(precision, "--precision");
    check_precision(runtime.precision, runtime.device, "--precision");
  } catch (const c10::Error& e) {
    throw UsageError(first_line(e));
  }
  apply_precision(runtime.precision);
  return runtime;
}

/// "cpu", "cuda:0 (bf16)": where a run computes, for its first output line.
inline std::string runtime_description(const Runtime& runtime) {
  return runtime.precision == Precision::fp32
             ? runtime.device.str()
             : fmt::format("{} ({})", runtime.device.str(), to_string(runtime.precision));
}

/// Builds the network described by the config and loads the checkpoint into it; a checkpoint that does not
/// match the config is an error naming both files and the first mismatching tensor.
inline Prior load_prior(const PriorFiles& files, const Runtime& runtime = {}) {
  std::error_code error;
  if (!fs::is_regular_file(files.config, error))
    throw UsageError(fmt::format("cannot read model config '{}': no such file", files.config.string()));
  if (!fs::is_regular_file(files.checkpoint, error))
    throw UsageError(fmt::format("cannot read checkpoint '{}': no such file", files.checkpoint.string()));
  Prior prior;
  prior.files = files;
  prior.options = read_adm_model_config(files.config).options;
  prior.model = AdmUNet(prior.options);
  const auto first_line = [](const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    return message.substr(0, message.find('\n'));
  };
  StateDict state;
  try {
    state = read_state_dict(files.checkpoint);  // errors name the file and the problem
  } catch (const c10::Error& e) {
    throw UsageError(first_line(e));
  }
  try {
    load_state_dict(prior.model, state);
  } catch (const c10::Error& e) {
    throw UsageError(fmt::format("checkpoint '{}' does not match config '{}': {}", files.checkpoint.string(),
                                 files.config.string(), first_line(e)));
  }
  prior.model->eval();
  prior.model->to(runtime.device);
  prior.model->set_compute_dtype(compute_dtype(runtime.precision));
  // DPS needs the gradient with respect to the image only; frozen weights skip the weight gradients.
  for (auto& parameter : prior.model->parameters()) parameter.requires_grad_(false);
  return prior;
}

}  // namespace diffpost::cli
