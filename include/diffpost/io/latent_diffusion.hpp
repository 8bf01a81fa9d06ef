// Loading CompVis latent diffusion models (Rombach et al., CVPR 2022; CompVis/latent-diffusion): an LDM
// checkpoint (`ffhq.zip`'s `model.ckpt`, a Lightning training checkpoint) with its YAML config
// (`ffhq-ldm-vq-4.yaml`) into the UNet, the first-stage autoencoder and the schedule, and a standalone
// first-stage checkpoint (`vq-f4.zip`'s `model.ckpt` with `models/first_stage_models/vq-f4/config.yaml`).
// Every tensor is matched strictly: the UNet is the file's `model.diffusion_model.*` (or its EMA copy), the
// autoencoder its `first_stage_model.*`, the schedule its `betas` checked against the config's. The loaded
// model computes what ldm's `LatentDiffusion` computes: `encode_first_stage` (scaled), `decode_first_stage`,
// `apply_model` of an unconditional model. docs/checkpoints.md ("Latent diffusion models").
#pragma once

#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/schedule.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// Where `load_first_stage` puts the autoencoder: device (default CPU) and the dtype of its parameters
/// (default float32, the published checkpoints' dtype).
struct FirstStageLoadOptions {
  TORCH_ARG(torch::Device, device) = torch::kCPU;
  TORCH_ARG(torch::ScalarType, dtype) = torch::kFloat32;
};

/// How `load_latent_diffusion` reads an LDM. `ema`: the UNet's EMA weights (ldm's `ema_scope`, what its
/// sampling scripts use when the checkpoint has them) instead of the trained ones. `device`, `dtype`: where
/// the UNet and the autoencoder go and the dtype of their parameters. `autoencoder`: a standalone first-stage
/// checkpoint (`vq-f4.zip`'s `model.ckpt`) to take the autoencoder from instead of the LDM checkpoint's
/// `first_stage_model.*` (the tool's `--autoencoder`); `autoencoder_config`: its config (standalone layout or
/// an LDM config), by default the LDM config's `first_stage_config`.
struct LatentDiffusionOptions {
  TORCH_ARG(bool, ema) = false;
  TORCH_ARG(torch::Device, device) = torch::kCPU;
  TORCH_ARG(torch::ScalarType, dtype) = torch::kFloat32;
  TORCH_ARG(std::filesystem::path, autoencoder) = {};
  TORCH_ARG(std::filesystem::path, autoencoder_config) = {};
};

/// A loaded CompVis latent diffusion model: the first stage (autoencoder and scale factor), the latent UNet
/// and the schedule it was trained with. `encode`, `decode` and `eps` are ldm's `LatentDiffusion` functions,
/// each differentiable; `prior()` is the LatentPrior the posterior samplers take. The modules are shared
/// with every copy (LibTorch module holders).
class LatentDiffusion {
 public:
  LatentDiffusion(FirstStage first_stage, AdmUNet unet, DiffusionSchedule schedule, LdmModelConfig config,
                  std::string source)
      : first_stage_(std::move(first_stage)),
        unet_(std::move(unet)),
        schedule_(std::move(schedule)),
        config_(std::move(config)),
        source_(std::move(source)) {}

  /// Images [B, C, H, W] in [-1, 1] to diffusion latents: scale_factor x `first_stage_model.encode(x)` (ldm's
  /// `get_first_stage_encoding(encode_first_stage(x))`; for VQ the latent before quantization, for KL the
  /// posterior mean).
  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const { return first_stage_.encode(x); }

  /// Diffusion latents to images: ldm's `decode_first_stage(z)` (z / scale_factor, quantized for VQ with the
  /// straight-through gradient, then `post_quant_conv` and the decoder).
  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const { return first_stage_.decode(z); }

  /// The UNet's noise prediction for latents z [B, c, h, w] at timesteps t [B] (int64, 0 to num_steps - 1, on
  /// z's device): ldm's `apply_model(z, t, None)` = `model.diffusion_model(z, t)` of an unconditional model.
  [[nodiscard]] torch::Tensor eps(const torch::Tensor& z, const torch::Tensor& t) const {
    return unet_.ptr()->forward(z, t);
  }

  /// The latent prior for the posterior samplers (autoencoder, UNet, schedule), sharing these modules.
  [[nodiscard]] LatentPrior<FirstStage, AdmUNet> prior() const { return {first_stage_, unet_, schedule_}; }

  [[nodiscard]] const FirstStage& first_stage() const noexcept { return first_stage_; }
  /// The autoencoder and the UNet: handles sharing the modules (call `->encode`, `->set_compute_dtype`, ...).
  [[nodiscard]] LdmAutoencoder autoencoder() const { return first_stage_.autoencoder(); }
  [[nodiscard]] AdmUNet unet() const { return unet_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }
  [[nodiscard]] double scale_factor() const noexcept { return first_stage_.scale_factor(); }
  /// The config it was built from (with the autoencoder actually used in `first_stage`).
  [[nodiscard]] const LdmModelConfig& config() const noexcept { return config_; }

  /// A few lines for logs: the files, the UNet and autoencoder options, the scale factor and the schedule.
  [[nodiscard]] std::string describe() const {
    std::ostringstream text;
    text << "latent diffusion model from " << source_ << "\n  UNet: " << unet_->options()
         << "\n  autoencoder: " << autoencoder()->options() << ", scale_factor " << scale_factor()
         << "\n  schedule: " << schedule_.num_steps() << " steps, betas " << schedule_.betas().front()
         << " to " << schedule_.betas().back();
    return text.str();
  }

 private:
  FirstStage first_stage_;
  AdmUNet unet_;
  DiffusionSchedule schedule_;
  LdmModelConfig config_;
  std::string source_;
};

namespace detail {

inline bool has_prefix(const StateDict& state, const std::string& prefix) {
  return std::any_of(state.begin(), state.end(),
                     [&](const auto& entry) { return entry.first.rfind(prefix, 0) == 0; });
}

/// Builds the autoencoder of `config` and loads `state` (its own names) into it strictly, the training
/// losses' `loss.*` entries (a standalone checkpoint's discriminator and LPIPS) skipped by name.
inline LdmAutoencoder load_first_stage_state(const StateDict& state, const LdmFirstStageConfig& config) {
  StateDict own(state.origin());
  size_t skipped = 0;
  for (const auto& [name, tensor] : state) {
    if (name.rfind("loss.", 0) == 0) {
      ++skipped;
      continue;
    }
    own.insert(name, tensor);
  }
  TORCH_CHECK(!own.empty(), state.origin(), " holds no autoencoder tensors (", skipped,
              " loss.* entries only)");
  LdmAutoencoder autoencoder(config.options);
  const auto built_with = config.options;
  const auto target = config.target;
  load_state_dict(*autoencoder, own, LoadOptions{}.describe_file([=](const StateDict&) {
    std::ostringstream text;
    text << "The autoencoder was built for the config's " << target << ": " << built_with
         << ". Check that the config belongs to the checkpoint.";
    return text.str();
  }));
  autoencoder->eval();
  return autoencoder;
}

}  // namespace detail

/// Reads the autoencoder of the standalone first-stage checkpoint at `checkpoint` (ldm's `VQModel` or
/// `AutoencoderKL` trained alone, e.g. `vq-f4.zip`'s `model.ckpt`: a Lightning checkpoint whose `state_dict`
/// holds the autoencoder's tensors under their own names plus the training losses' `loss.*` - the
/// discriminator and LPIPS - which are skipped by name) built as `config` says, strictly for everything
/// else. An LDM checkpoint works too: its `first_stage_model.*` entries are used. Returns the autoencoder in
/// eval mode on `options.device()` in `options.dtype()`.
inline LdmAutoencoder load_first_stage(const std::filesystem::path& checkpoint,
                                       const LdmFirstStageConfig& config,
                                       const FirstStageLoadOptions& options = {}) {
  auto state = read_state_dict(checkpoint);
  const bool own_names = detail::has_prefix(state, "encoder.") || detail::has_prefix(state, "decoder.");
  if (!own_names && detail::has_prefix(state, "first_stage_model."))
    state = select_module(state, "first_stage_model.");
  auto autoencoder = detail::load_first_stage_state(state, config);
  autoencoder->to(options.device(), options.dtype());
  return autoencoder;
}

/// load_first_stage with the config file at `config` (`models/first_stage_models/vq-f4/config.yaml`, or an
/// LDM config, whose `first_stage_config` is used; read_ldm_first_stage_config).
inline LdmAutoencoder load_first_stage(const std::filesystem::path& checkpoint,
                                       const std::filesystem::path& config,
                                       const FirstStageLoadOptions& options = {}) {
  return load_first_stage(checkpoint, read_ldm_first_stage_config(config), options);
}

/// Loads the CompVis latent diffusion model of `checkpoint` (a Lightning `.ckpt` of ldm's `LatentDiffusion`,
/// e.g. `ffhq.zip`'s `model.ckpt`) as `config` describes it (parse_ldm_model_config of e.g.
/// `ffhq-ldm-vq-4.yaml`):
/// - the UNet from the file's `model.diffusion_model.*` entries (with `options.ema()` the `model_ema.*`
/// copy),
///   strictly, errors naming the configuration the weights were made for (load_state_dict for AdmUNet);
/// - the autoencoder from `first_stage_model.*`, or from `options.autoencoder()` (load_first_stage),
/// strictly;
/// - the schedule from the file's `betas` (schedule_from_state_dict), which must be the config's (same number
///   of steps, betas equal to 1e-5 relative), or the config's when the file has none;
/// - the scale factor from the config (`model.params.scale_factor`, default 1), or with `scale_by_std: true`
///   from the file's `scale_factor` buffer, which training sets to 1 / std of the latents.
/// Refused, each with the fix: conditional models (in the config parser), an x0-parameterized UNet, a UNet
/// whose input channels are not the autoencoder's embed_dim, a file without `first_stage_model.*` and no
/// `options.autoencoder()`, a schedule or scale factor the config contradicts, and every tensor mismatch.
/// Both networks end in eval mode on `options.device()` in `options.dtype()`.
inline LatentDiffusion load_latent_diffusion(const std::filesystem::path& checkpoint, LdmModelConfig config,
                                             const LatentDiffusionOptions& options = {}) {
  const std::string where = "load_latent_diffusion: " + detail::quoted(checkpoint);
  TORCH_CHECK(config.parameterization == "eps", where, ": the config's parameterization is '",
              config.parameterization,
              "'; diffpost's samplers and LatentDiffusion::eps need a UNet that predicts the noise (eps, "
              "ldm's default and every released LDM)");
  if (!options.autoencoder().empty() && !options.autoencoder_config().empty())
    config.first_stage = read_ldm_first_stage_config(options.autoencoder_config());
  TORCH_CHECK(config.first_stage.has_value(), where,
              ": the config has no model.params.first_stage_config (the autoencoder); use the LDM's full "
              "config (e.g. ffhq-ldm-vq-4.yaml), or pass the autoencoder's own config with "
              "LatentDiffusionOptions{}.autoencoder_config(...)");
  const auto& first_stage_options = config.first_stage->options;
  TORCH_CHECK(config.unet.in_channels() == first_stage_options.embed_dim(), where, ": the UNet takes ",
              config.unet.in_channels(),
              " latent channels (unet_config in_channels) but the autoencoder's latents have ",
              first_stage_options.embed_dim(),
              " (first_stage_config embed_dim); the two parts of the config do not belong together");

  const auto state = read_state_dict(checkpoint);

  // The schedule the model was trained with: the file's betas, checked against the config's.
  std::optional<DiffusionSchedule> schedule = schedule_from_state_dict(state);
  if (!schedule) {
    schedule = config.schedule();
  } else {
    std::optional<DiffusionSchedule> configured;
    try {
      configured = config.schedule();
    } catch (const c10::Error&) {  // a beta_schedule diffpost cannot compute: the file's betas decide
    }
    if (configured) {
      const auto& stored = schedule->betas();
      const auto& expected = configured->betas();
      TORCH_CHECK(stored.size() == expected.size(), where, ": the file's schedule has ", stored.size(),
                  " steps (its 'betas') but the config's has ", expected.size(),
                  " (model.params.timesteps); the config does not belong to this checkpoint");
      double worst = 0;
      for (size_t i = 0; i < stored.size(); ++i)
        worst = std::max(worst, std::abs(stored[i] - expected[i]) / expected[i]);
      TORCH_CHECK(worst <= 1e-5, where, ": the file's betas (", stored.front(), " to ", stored.back(),
                  ") differ from the config's ", config.beta_schedule, " schedule from linear_start ",
                  config.linear_start, " to linear_end ", config.linear_end, " by up to ", worst,
                  " (relative); the config does not belong to this checkpoint");
    }
  }

  // The scale factor: the config's, or the buffer scale_by_std training stored.
  double scale_factor = config.scale_factor;
  const auto* stored_scale = state.find("scale_factor");
  if (stored_scale != nullptr) {
    TORCH_CHECK(stored_scale->numel() == 1 && stored_scale->is_floating_point(), where,
                ": 'scale_factor' is a tensor of shape ", stored_scale->sizes(), " and dtype ",
                stored_scale->scalar_type(), ", not a number");
  }
  if (config.scale_by_std) {
    TORCH_CHECK(stored_scale != nullptr, where,
                ": the config has scale_by_std: true, so the scale factor is the checkpoint's 'scale_factor' "
                "buffer, but the file has none; set scale_by_std: false and scale_factor in the config");
    scale_factor = stored_scale->item<double>();
    TORCH_CHECK(std::isfinite(scale_factor) && scale_factor > 0, where, ": the file's 'scale_factor' is ",
                scale_factor, "; it must be a positive number");
  } else if (stored_scale != nullptr) {
    const auto value = stored_scale->item<double>();
    TORCH_CHECK(
        std::abs(value - scale_factor) <= 1e-6 * std::abs(scale_factor), where,
        ": the file stores scale_factor ", value,
        " (a model trained with scale_by_std) but the config has scale_by_std false and scale_factor ",
        scale_factor, "; set scale_by_std: true in the config");
  }
  config.scale_factor = scale_factor;

  // The UNet, strictly, from its own entries or their EMA copy.
  AdmUNet unet(config.unet);
  TORCH_CHECK(detail::has_prefix(state, "model.diffusion_model."), where,
              " has no model.diffusion_model.* entries (the LDM's UNet); the sub-modules it has: ",
              detail::list_module_prefixes(state),
              ". Is this an LDM checkpoint (ldm.models.diffusion.ddpm.LatentDiffusion)?");
  load_state_dict(unet, select_module(state, "model.diffusion_model.", options.ema()));
  unet->eval();
  unet->to(options.device(), options.dtype());

  // The autoencoder, from this file or its own.
  LdmAutoencoder autoencoder{nullptr};
  if (!options.autoencoder().empty()) {
    autoencoder = load_first_stage(options.autoencoder(), *config.first_stage,
                                   FirstStageLoadOptions{}.device(options.device()).dtype(options.dtype()));
  } else {
    TORCH_CHECK(detail::has_prefix(state, "first_stage_model."), where,
                " has no first_stage_model.* entries (the autoencoder); the sub-modules it has: ",
                detail::list_module_prefixes(state),
                ". Pass the autoencoder's own checkpoint with "
                "LatentDiffusionOptions{}.autoencoder(\"vq-f4/model.ckpt\") "
                "(the tool's --autoencoder)");
    autoencoder =
        detail::load_first_stage_state(select_module(state, "first_stage_model."), *config.first_stage);
    autoencoder->to(options.device(), options.dtype());
  }
  std::string source = detail::quoted(checkpoint);
  if (!options.autoencoder().empty())
    source += " with the autoencoder of " + detail::quoted(options.autoencoder());
  return {FirstStage(autoencoder, scale_factor), unet, *schedule, std::move(config), std::move(source)};
}

/// load_latent_diffusion with the config file at `config_yaml` (read_ldm_model_config).
inline LatentDiffusion load_latent_diffusion(const std::filesystem::path& checkpoint,
                                             const std::filesystem::path& config_yaml,
                                             const LatentDiffusionOptions& options = {}) {
  return load_latent_diffusion(checkpoint, read_ldm_model_config(config_yaml), options);
}

}  // namespace diffpost
