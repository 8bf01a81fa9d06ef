// Finding and loading the prior for the diffpost tool: an ADM UNet checkpoint plus its YAML configuration
// (by default the bundled Fashion-MNIST prior), a diffusers folder (UNet2DModel and its scheduler), or a
// CompVis latent diffusion model (a Lightning checkpoint with its config, the autoencoder in the checkpoint
// or in its own file).
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/diffusers.hpp>
#include <diffpost/io/latent_diffusion.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/runtime/device.hpp>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <variant>
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

/// A checkpoint and the configuration it is loaded with, or a diffusers folder (then `checkpoint` is the
/// folder and `config` is empty). `latent`: the config is a CompVis latent-diffusion config; the autoencoder
/// then comes from `autoencoder` (and `autoencoder_config`) when given, else from the checkpoint.
struct PriorFiles {
  fs::path checkpoint;
  fs::path config;
  bool diffusers = false;
  bool latent = false;
  fs::path autoencoder;
  fs::path autoencoder_config;

  /// A checkpoint file and its config.
  static PriorFiles of_checkpoint(fs::path checkpoint, fs::path config) {
    PriorFiles files;
    files.checkpoint = std::move(checkpoint);
    files.config = std::move(config);
    return files;
  }
  /// A diffusers folder.
  static PriorFiles of_diffusers_folder(fs::path folder) {
    PriorFiles files;
    files.checkpoint = std::move(folder);
    files.diffusers = true;
    return files;
  }

  /// The checkpoint's file name or the folder's name (also when given with a trailing slash).
  [[nodiscard]] std::string name() const {
    const auto path = checkpoint.lexically_normal();
    return (path.has_filename() ? path.filename() : path.parent_path().filename()).string();
  }

  /// "CHECKPOINT (CONFIG)", "FOLDER (diffusers)" or "CHECKPOINT (CONFIG, latent diffusion[, autoencoder
  /// FILE])", for the first line of a run.
  [[nodiscard]] std::string description() const {
    if (diffusers) return fmt::format("{} (diffusers)", checkpoint.string());
    if (!latent) return fmt::format("{} ({})", checkpoint.string(), config.string());
    return fmt::format("{} ({}, latent diffusion{})", checkpoint.string(), config.string(),
                       autoencoder.empty() ? "" : ", autoencoder " + autoencoder.string());
  }
};

/// The first line of a LibTorch error, for a UsageError.
inline std::string first_line_of(const c10::Error& e) {
  const std::string message = e.what_without_backtrace();
  return message.substr(0, message.find('\n'));
}

/// Resolves --model / --config: --model a diffusers folder (is_diffusers_folder): the folder, which holds its
/// own configuration; both given: used as given; only --config: its `model_path` (relative to the config's
/// folder); only --model: the .yaml file of the same name next to it; neither: the bundled prior in the
/// first of prior_search_directories() that holds both files.
inline PriorFiles resolve_model_files(const std::string& model_flag, const std::string& config_flag) {
  std::error_code error;
  if (!model_flag.empty() && is_diffusers_folder(model_flag)) {
    if (!config_flag.empty())
      throw UsageError(
          fmt::format("--model '{}' is a diffusers folder, which holds its own config.json; drop "
                      "--config (it is for ADM checkpoints)",
                      model_flag));
    return PriorFiles::of_diffusers_folder(model_flag);
  }
  if (!model_flag.empty() && fs::is_directory(model_flag, error))
    throw UsageError(fmt::format(
        "--model '{}' is a folder but not a diffusers one (model_index.json with unet/config.json, or "
        "config.json with diffusion_pytorch_model.safetensors or .bin); pass a checkpoint file or a "
        "diffusers folder",
        model_flag));
  if (!model_flag.empty() && !config_flag.empty()) return PriorFiles::of_checkpoint(model_flag, config_flag);
  if (!config_flag.empty()) {
    const auto config = read_adm_model_config(config_flag);
    if (config.model_path.empty())
      throw UsageError(
          fmt::format("config '{}' has no model_path; pass the checkpoint with --model", config_flag));
    fs::path checkpoint(config.model_path);
    if (checkpoint.is_relative()) checkpoint = fs::path(config_flag).parent_path() / checkpoint;
    return PriorFiles::of_checkpoint(checkpoint, config_flag);
  }
  if (!model_flag.empty()) {
    auto config = fs::path(model_flag).replace_extension(".yaml");
    if (!fs::is_regular_file(config, error))
      throw UsageError(fmt::format("no config given for model '{}' and '{}' does not exist; pass --config",
                                   model_flag, config.string()));
    return PriorFiles::of_checkpoint(model_flag, config);
  }
  std::string searched;
  for (const auto& directory : prior_search_directories()) {
    const auto checkpoint = directory / kBundledCheckpoint;
    const auto config = directory / kBundledConfig;
    if (fs::is_regular_file(checkpoint, error) && fs::is_regular_file(config, error))
      return PriorFiles::of_checkpoint(checkpoint, config);
    searched += (searched.empty() ? "" : ", ") + directory.string();
  }
  throw UsageError(
      fmt::format("the bundled prior ({} and {}) was not found in {}; pass --model and --config, or set "
                  "DIFFPOST_PRIOR_DIR",
                  kBundledCheckpoint, kBundledConfig, searched));
}

/// resolve_model_files, then whether the config is a latent-diffusion config (is_latent_diffusion_config),
/// and --autoencoder / --autoencoder-config, which only a latent diffusion model takes.
inline PriorFiles resolve_prior(const std::string& model_flag, const std::string& config_flag,
                                const std::string& autoencoder_flag = {},
                                const std::string& autoencoder_config_flag = {}) {
  auto files = resolve_model_files(model_flag, config_flag);
  files.latent = !files.diffusers && is_latent_diffusion_config(files.config);
  if (autoencoder_flag.empty() && autoencoder_config_flag.empty()) return files;
  if (!files.latent)
    throw UsageError(fmt::format(
        "--autoencoder is for latent diffusion models (a CompVis LDM checkpoint with its config, e.g. "
        "ffhq-ldm-vq-4.yaml); the model '{}' is {}: drop --autoencoder and --autoencoder-config",
        files.checkpoint.string(), files.diffusers ? "a diffusers folder" : "an ADM UNet"));
  if (autoencoder_flag.empty())
    throw UsageError(
        "--autoencoder-config describes the checkpoint given with --autoencoder; pass --autoencoder too "
        "(without it the autoencoder is the model checkpoint's first_stage_model, described by the model "
        "config)");
  std::error_code error;
  if (!fs::is_regular_file(autoencoder_flag, error))
    throw UsageError(fmt::format("cannot read autoencoder checkpoint '{}': no such file", autoencoder_flag));
  if (!autoencoder_config_flag.empty() && !fs::is_regular_file(autoencoder_config_flag, error))
    throw UsageError(
        fmt::format("cannot read autoencoder config '{}': no such file", autoencoder_config_flag));
  files.autoencoder = autoencoder_flag;
  files.autoencoder_config = autoencoder_config_flag;
  return files;
}

/// The prior's network as one ScoreModel: an ADM UNet or a diffusers UNet2DModel (which gives eps whatever
/// its prediction type). Copies share the network.
class PriorNetwork {
 public:
  PriorNetwork() = default;
  explicit PriorNetwork(AdmUNet network) : network_(std::move(network)) {}
  explicit PriorNetwork(DiffusersUNet network) : network_(std::move(network)) {}

  /// eps (and the variance channels when learns_variance()) for x_t [B, C, H, W] and timesteps t [B].
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) {
    return std::visit([&](auto& network) { return network(x_t, t); }, network_);
  }

  [[nodiscard]] bool learns_variance() const {
    return std::visit([](const auto& network) { return network.learns_variance(); }, network_);
  }

  /// The network as a module, for moving it and freezing its parameters.
  [[nodiscard]] torch::nn::Module& module() {
    return std::visit([](auto& network) -> torch::nn::Module& { return *network; }, network_);
  }

  /// Runs the network's convolutions in `dtype` (see AdmUNetImpl::set_compute_dtype).
  void set_compute_dtype(torch::ScalarType dtype) {
    std::visit([&](auto& network) { network->set_compute_dtype(dtype); }, network_);
  }

 private:
  std::variant<AdmUNet, DiffusersUNet> network_{AdmUNet{nullptr}};
};

static_assert(ScoreModel<PriorNetwork>, "the tool's prior must be a ScoreModel for every method");

/// A loaded prior: the network in eval mode with frozen parameters, the images it works on, and where it
/// came from; for a latent diffusion model also its first stage, whose latents the network works on.
struct Prior {
  PriorNetwork model;
  Shape shape;
  PriorFiles files;
  std::optional<FirstStage> first_stage;

  /// [C, H, W] of the images the model works on (for a latent model, the decoded images).
  [[nodiscard]] Shape image_shape() const { return shape; }
  [[nodiscard]] bool latent() const { return first_stage.has_value(); }
  /// [C, H, W] of what the network takes: the images, or a latent model's latents.
  [[nodiscard]] Shape network_shape() const {
    if (!first_stage) return shape;
    const auto batch = first_stage->latent_shape({1, shape[0], shape[1], shape[2]});
    return {batch[1], batch[2], batch[3]};
  }
};

/// [C, H, W] of the images a diffusers UNet2DModel of `options` works on: `in_channels` and a square
/// `sample_size` (the tool's images are square).
inline Shape diffusers_image_shape(const DiffusersUNetOptions& options, const fs::path& folder) {
  const auto& size = options.sample_size();
  if (size.empty())
    throw UsageError(
        fmt::format("diffusers folder '{}': config.json has no sample_size, so the image size "
                    "is unknown; add \"sample_size\": N",
                    folder.string()));
  if (size.front() != size.back())
    throw UsageError(
        fmt::format("diffusers folder '{}': sample_size {}x{} is not square; the tool restores "
                    "square images",
                    folder.string(), size.front(), size.back()));
  return {options.in_channels(), size.front(), size.front()};
}

/// The configuration of the latent diffusion model of `files`, with --autoencoder-config's first stage when
/// given; a config without an autoencoder and none given is a UsageError naming the fix.
inline LdmModelConfig latent_model_config(const PriorFiles& files) {
  try {
    auto config = read_ldm_model_config(files.config);
    if (!files.autoencoder_config.empty())
      config.first_stage = read_ldm_first_stage_config(files.autoencoder_config);
    if (!config.first_stage)
      throw UsageError(fmt::format(
          "config '{}' has no model.params.first_stage_config (the autoencoder); pass the autoencoder's "
          "checkpoint and config with --autoencoder and --autoencoder-config, or use the LDM's full config",
          files.config.string()));
    return config;
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
  }
}

/// [C, H, W] of the images the model of `files` works on, read from its configuration alone; for a latent
/// model, the decoded images (the UNet's latent size times the autoencoder's downsampling factor).
inline Shape prior_image_shape(const PriorFiles& files) {
  std::error_code error;
  if (files.latent) {
    const auto config = latent_model_config(files);
    const auto& autoencoder = config.first_stage->options;
    const auto size = config.unet.image_size() * autoencoder.downsampling_factor();
    return {autoencoder.out_ch(), size, size};
  }
  if (files.diffusers) {
    try {
      const auto folder = locate_diffusers_folder(files.checkpoint);
      return diffusers_image_shape(read_diffusers_unet_config(folder.config), files.checkpoint);
    } catch (const c10::Error& e) {
      throw UsageError(first_line_of(e));
    }
  }
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
  Runtime runtime;
  try {
    const bool per_rank = device == "cuda" && local_rank.has_value();
    const auto text = per_rank ? fmt::format("cuda:{}", *local_rank) : device;
    runtime.device = usable_device(
        text, per_rank ? fmt::format("--device cuda (LOCAL_RANK {})", *local_rank) : "--device");
    runtime.precision = parse_precision(precision, "--precision");
    check_precision(runtime.precision, runtime.device, "--precision");
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
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

/// The network of an ADM checkpoint and its YAML config; a checkpoint that does not match the config is an
/// error naming both files and the first mismatching tensor.
inline Prior load_adm_prior(const PriorFiles& files) {
  std::error_code error;
  if (!fs::is_regular_file(files.config, error))
    throw UsageError(fmt::format("cannot read model config '{}': no such file", files.config.string()));
  if (!fs::is_regular_file(files.checkpoint, error))
    throw UsageError(fmt::format("cannot read checkpoint '{}': no such file", files.checkpoint.string()));
  const auto options = read_adm_model_config(files.config).options;
  AdmUNet network(options);
  StateDict state;
  try {
    state = read_state_dict(files.checkpoint);  // errors name the file and the problem
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
  }
  try {
    load_state_dict(network, state);
  } catch (const c10::Error& e) {
    throw UsageError(fmt::format("checkpoint '{}' does not match config '{}': {}", files.checkpoint.string(),
                                 files.config.string(), first_line_of(e)));
  }
  return {.model = PriorNetwork(network),
          .shape = {options.in_channels(), options.image_size(), options.image_size()},
          .files = files,
          .first_stage = std::nullopt};
}

/// The UNet2DModel of a diffusers folder (load_diffusers_pipeline: config.json, weights loaded strictly,
/// output converted to eps by the scheduler's prediction type); errors name the folder and the problem.
inline Prior load_diffusers_prior(const PriorFiles& files) {
  try {
    auto pipeline = load_diffusers_pipeline(files.checkpoint);
    const auto shape = diffusers_image_shape(pipeline.unet->options(), files.checkpoint);
    return {
        .model = PriorNetwork(pipeline.unet), .shape = shape, .files = files, .first_stage = std::nullopt};
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
  }
}

/// The latent UNet and first stage of a CompVis LDM (load_latent_diffusion: every tensor strict, the
/// schedule checked against the config); errors name the files and the problem.
inline Prior load_latent_prior(const PriorFiles& files) {
  auto config = latent_model_config(files);
  try {
    auto ldm = load_latent_diffusion(
        files.checkpoint, config,
        LatentDiffusionOptions{}.autoencoder(files.autoencoder).autoencoder_config(files.autoencoder_config));
    return {.model = PriorNetwork(ldm.unet()),
            .shape = prior_image_shape(files),
            .files = files,
            .first_stage = ldm.first_stage()};
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
  }
}

/// Builds the network of `files` (an ADM checkpoint and config, a diffusers folder, or a latent diffusion
/// model) and loads its weights, in eval mode on `runtime`'s device and precision with frozen parameters.
inline Prior load_prior(const PriorFiles& files, const Runtime& runtime = {}) {
  auto prior = files.diffusers ? load_diffusers_prior(files)
               : files.latent  ? load_latent_prior(files)
                               : load_adm_prior(files);
  auto& module = prior.model.module();
  module.eval();
  module.to(runtime.device);
  prior.model.set_compute_dtype(compute_dtype(runtime.precision));
  // DPS needs the gradient with respect to the image only; frozen weights skip the weight gradients.
  for (auto& parameter : module.parameters()) parameter.requires_grad_(false);
  if (prior.first_stage) {
    auto autoencoder = prior.first_stage->autoencoder();  // a handle sharing the module
    autoencoder->eval();
    autoencoder->to(runtime.device);
    autoencoder->set_compute_dtype(compute_dtype(runtime.precision));
    for (auto& parameter : autoencoder->parameters()) parameter.requires_grad_(false);
  }
  return prior;
}

/// The noise schedule and sampler settings of the model of `files`: a diffusers folder's scheduler (its
/// `scheduler_config.json`, DDPMScheduler's defaults without one); std::nullopt for an ADM checkpoint,
/// whose schedule is --beta-schedule, and for a latent model, whose schedule is its config's.
inline std::optional<DiffusersScheduler> prior_scheduler(const PriorFiles& files) {
  if (!files.diffusers) return std::nullopt;
  try {
    const auto folder = locate_diffusers_folder(files.checkpoint);
    return folder.scheduler_config ? read_diffusers_scheduler(*folder.scheduler_config)
                                   : DiffusersScheduler{};
  } catch (const c10::Error& e) {
    throw UsageError(first_line_of(e));
  }
}

}  // namespace diffpost::cli
