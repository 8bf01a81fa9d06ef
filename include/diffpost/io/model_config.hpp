// Reading the model configuration files of the reference implementation (DPS `configs/model_config.yaml`,
// `configs/imagenet_model_config.yaml`): the keyword arguments of guided-diffusion's `create_model` as YAML
// (or JSON, which yaml-cpp also parses), turned into AdmUNetOptions. Unknown keys and values of the wrong
// type are errors, not silently ignored: a misspelt `num_head_channel` would otherwise build a different
// network whose checkpoint then fails to load, or worse, loads.
#pragma once

#include <diffpost/detail/text.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/schedule.hpp>

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace diffpost {

/// An ADM UNet configuration file: the network options and the checkpoint it names (`model_path`, as written
/// in the file, relative paths untouched; empty when absent).
struct AdmModelConfig {
  AdmUNetOptions options;
  std::string model_path;
};

namespace detail {

/// Keys of the reference's configuration files that are not AdmUNetOptions fields: `class_cond` (1000
/// classes), `use_checkpoint` and `use_fp16` (run-time choices here), `model_path`.
inline constexpr std::array<const char*, 4> kAdmConfigReferenceOnlyKeys{"class_cond", "use_checkpoint",
                                                                        "use_fp16", "model_path"};

/// The keys a model configuration may hold: the AdmUNetOptions fields (for_each_adm_option, with the
/// diffpost extensions `in_channels` and `num_classes`) and kAdmConfigReferenceOnlyKeys.
inline std::vector<std::string> adm_config_keys() {
  std::vector<std::string> keys;
  const AdmUNetOptions any(1, 1, 1);
  for_each_adm_option(any, [&](const AdmOptionField& field, const auto&) { keys.emplace_back(field.name); });
  keys.insert(keys.end(), kAdmConfigReferenceOnlyKeys.begin(), kAdmConfigReferenceOnlyKeys.end());
  return keys;
}

/// At most this many channel_mult levels and attention resolutions (a 4096-pixel image halves 12 times).
inline constexpr size_t kAdmConfigMaxListLength = 16;
/// At most this many parameters in a network read from a config file (4 G, 16 GiB in float32; the largest
/// reference model, ImageNet 512, has 559 M).
inline constexpr int64_t kAdmConfigMaxParameters = int64_t{1} << 32;

/// Checks `value` of `field` against the field's range (AdmOptionField).
inline int64_t check_config_range(const AdmOptionField& field, int64_t value, const std::string& origin,
                                  const char* what = "") {
  TORCH_CHECK((value >= field.min && value <= field.max) || (field.unset_allowed && value == -1), origin,
              ": '", field.name, "'", what, " is ", value, ", out of range: it must be ", field.min, " to ",
              field.max, field.unset_allowed ? " (or -1 for unset)" : "", "; check the file");
  return value;
}

/// Reads `node` (the value of `key` in `origin`) as T, turning yaml-cpp's conversion error into a c10::Error
/// that names the key, the value and the expected type.
template <class T>
T config_value(const YAML::Node& node, const std::string& key, const char* expected,
               const std::string& origin) {
  TORCH_CHECK(node.IsScalar(), origin, ": '", key, "' must be ", expected, ", got a ",
              node.IsSequence() ? "list" : (node.IsMap() ? "mapping" : "null"));
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    TORCH_CHECK(false, origin, ": '", key, "' must be ", expected, ", got '", node.Scalar(), "'");
  }
}

/// Comma-separated integers ("1,1,2,2,4,4", "32,16,8", "16"), or a YAML list of integers; "" gives an empty
/// list.
inline std::vector<int64_t> config_int_list(const YAML::Node& node, const AdmOptionField& field,
                                            const std::string& origin) {
  const std::string key = field.name;
  std::vector<int64_t> values;
  auto add = [&](int64_t value) {
    TORCH_CHECK(values.size() < kAdmConfigMaxListLength, origin, ": '", key, "' has more than ",
                kAdmConfigMaxListLength, " entries; check the file");
    values.push_back(check_config_range(field, value, origin, " entry"));
  };
  if (node.IsSequence()) {
    for (const auto& item : node) add(config_value<int64_t>(item, key, "a list of integers", origin));
    return values;
  }
  const auto text = config_value<std::string>(node, key, "a comma-separated list of integers", origin);
  auto pieces = detail::split_commas(text);
  if (pieces.back().empty()) pieces.pop_back();  // "" is the empty list; a trailing comma is allowed
  for (const auto piece : pieces) {
    TORCH_CHECK(!trim_blanks(piece).empty(), origin, ": '", key, "' has an empty entry in '", text, "'");
    const std::string part(trim_blanks(piece));
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(part, &used);
    } catch (const std::out_of_range&) {
      TORCH_CHECK(false, origin, ": '", key, "' entry '", part, "' is out of range; check the file");
    } catch (const std::invalid_argument&) {
      used = 0;
    }
    TORCH_CHECK(used == part.size(), origin, ": '", key,
                "' must be a comma-separated list of integers, got '", text, "' (entry '", part, "')");
    add(value);
  }
  return values;
}

/// The create_model arguments in `root` (a mapping) as AdmModelConfig; see parse_adm_model_config.
inline AdmModelConfig parse_adm_model_config_node(const YAML::Node& root, const std::string& origin) {
  TORCH_CHECK(root.IsMap(), origin, ": expected a mapping of create_model arguments (key: value lines)");
  const auto& known = adm_config_keys();
  std::set<std::string> seen;
  for (const auto& item : root) {
    TORCH_CHECK(item.first.IsScalar(), origin, ": keys must be names such as 'image_size', got a ",
                item.first.IsSequence() ? "list" : (item.first.IsMap() ? "mapping" : "null"));
    const auto key = item.first.Scalar();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      TORCH_CHECK(false, origin, ": unknown key '", key, "'; known keys: ", list);
    }
    TORCH_CHECK(seen.insert(key).second, origin, ": key '", key, "' appears twice");
  }
  AdmUNetOptions options(1, 1, 1);
  for_each_adm_option(options, [&](const AdmOptionField& field, const auto&) {
    TORCH_CHECK(!field.required || seen.contains(field.name), origin, ": missing required key '", field.name,
                "'");
  });
  // class_cond first, so that the diffpost extension num_classes overrides it.
  if (seen.contains("class_cond"))
    options.num_classes(config_value<bool>(root["class_cond"], "class_cond", "true or false", origin)
                            ? 1000  // NUM_CLASSES of guided-diffusion
                            : 0);
  // use_checkpoint only trades time for memory: read for its type, then ignored.
  if (seen.contains("use_checkpoint"))
    config_value<bool>(root["use_checkpoint"], "use_checkpoint", "true or false", origin);
  if (seen.contains("use_fp16"))
    TORCH_CHECK(
        !config_value<bool>(root["use_fp16"], "use_fp16", "true or false", origin), origin,
        ": use_fp16: true is not supported in a configuration (the published checkpoints are float32; "
        "choose 16-bit compute when running instead: AdmUNetImpl::set_compute_dtype, the tool's "
        "--precision); set use_fp16: false");
  // Every field present in the file is read with its type and range.
  for_each_adm_option(options, [&](const AdmOptionField& field, auto& value) {
    if (!seen.contains(field.name)) return;
    const auto& node = root[field.name];
    using Value = std::decay_t<decltype(value)>;
    if constexpr (std::is_same_v<Value, bool>)
      value = config_value<bool>(node, field.name, "true or false", origin);
    else if constexpr (std::is_same_v<Value, double>)
      value = config_value<double>(node, field.name, "a number", origin);
    else if constexpr (std::is_same_v<Value, int64_t>)
      value =
          check_config_range(field, config_value<int64_t>(node, field.name, "an integer", origin), origin);
    else
      value = config_int_list(node, field, origin);
  });
  try {
    options.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
  const int64_t parameters = adm_parameter_count(options);
  TORCH_CHECK(parameters <= kAdmConfigMaxParameters, origin, ": the network has ", parameters,
              " parameters, more than the ", kAdmConfigMaxParameters,
              " diffpost builds from a config file; check num_channels, channel_mult and num_res_blocks");
  AdmModelConfig config{options, ""};
  if (seen.contains("model_path"))
    config.model_path = config_value<std::string>(root["model_path"], "model_path", "a path", origin);
  return config;
}

/// Loads YAML (or JSON) text; errors name `origin`.
inline YAML::Node load_yaml(const std::string& text, const std::string& origin) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    TORCH_CHECK(false, origin, ": not valid YAML/JSON: ", e.what());
  }
}

/// Whether `root` has the layout of a CompVis latent-diffusion config (`model: {target: ..., params: {...,
/// unet_config: ...}}`).
inline bool is_ldm_config(const YAML::Node& root) {
  return root.IsMap() && root["model"] && root["model"].IsMap() && root["model"]["params"] &&
         root["model"]["params"].IsMap() && root["model"]["params"]["unet_config"];
}

/// The ldm UNetModel keyword arguments diffpost reads, and the AdmUNetOptions field each one sets (empty:
/// checked, then not needed).
inline const std::vector<std::pair<std::string, std::string>>& ldm_unet_keys() {
  static const std::vector<std::pair<std::string, std::string>> keys{
      {"image_size", "image_size"},
      {"in_channels", "in_channels"},
      {"out_channels", "out_channels"},
      {"model_channels", "num_channels"},
      {"num_res_blocks", "num_res_blocks"},
      {"channel_mult", "channel_mult"},
      {"attention_resolutions", ""},  // downsample factors, converted below
      {"num_heads", "num_heads"},
      {"num_head_channels", "num_head_channels"},
      {"num_heads_upsample", "num_heads_upsample"},
      {"use_scale_shift_norm", "use_scale_shift_norm"},
      {"resblock_updown", "resblock_updown"},
      {"use_new_attention_order", "use_new_attention_order"},
      {"dropout", "dropout"},
      {"num_classes", "num_classes"},
      {"use_checkpoint", "use_checkpoint"},
      {"use_fp16", "use_fp16"},
      {"legacy", ""},
      {"dims", ""},
      {"conv_resample", ""},
      {"use_spatial_transformer", ""},
      {"transformer_depth", ""},
      {"context_dim", ""},
      {"n_embed", ""},
  };
  return keys;
}

/// ldm's `make_beta_schedule` (ldm/modules/diffusionmodules/util.py) for "linear" (linspace of the square
/// roots, squared), "sqrt_linear" and "sqrt", in float64.
inline std::vector<double> ldm_betas(const std::string& schedule, int64_t timesteps, double linear_start,
                                     double linear_end, const std::string& origin) {
  auto linspace = [timesteps](double start, double end) {
    std::vector<double> values(static_cast<size_t>(timesteps));
    const double step = timesteps == 1 ? 0.0 : (end - start) / static_cast<double>(timesteps - 1);
    for (int64_t i = 0; i < timesteps; ++i) values[i] = start + static_cast<double>(i) * step;
    values.back() = end;
    return values;
  };
  std::vector<double> betas;
  if (schedule == "linear") {
    betas = linspace(std::sqrt(linear_start), std::sqrt(linear_end));
    for (auto& b : betas) b *= b;
  } else if (schedule == "sqrt_linear") {
    betas = linspace(linear_start, linear_end);
  } else if (schedule == "sqrt") {
    betas = linspace(linear_start, linear_end);
    for (auto& b : betas) b = std::sqrt(b);
  } else {
    TORCH_CHECK(false, origin, ": beta_schedule '", schedule,
                "' is not supported (supported: linear, sqrt_linear, sqrt); read the schedule from the "
                "checkpoint's betas instead (schedule_from_state_dict)");
  }
  return betas;
}

}  // namespace detail

/// A CompVis first-stage autoencoder configuration: the `first_stage_config` of a latent-diffusion config, or
/// the `model` section of a standalone one (`models/first_stage_models/vq-f4/config.yaml`): the class it
/// names and its hyper-parameters (`embed_dim`, `n_embed` and the `ddconfig` of ldm's Encoder and Decoder).
struct LdmFirstStageConfig {
  /// `target`: ldm.models.autoencoder.VQModelInterface (in LDM configs), VQModel (standalone VQ configs) or
  /// AutoencoderKL.
  std::string target;
  LdmAutoencoderOptions options;
};

namespace detail {

/// At most this many codebook entries (the published VQ autoencoders have 256 to 16,384), channels and pixels
/// of training resolution in a first-stage config: bounds on what a config file can make diffpost allocate.
inline constexpr int64_t kLdmFirstStageMaxCodebook = int64_t{1} << 20;
inline constexpr int64_t kLdmFirstStageMaxChannels = 4096;
inline constexpr int64_t kLdmFirstStageMaxResolution = 65536;

/// The keys of mapping `node` (at `origin`), each checked against `known` (the arguments of `what`); throws
/// on an unknown or repeated key.
inline std::set<std::string> checked_keys(const YAML::Node& node, const std::vector<std::string>& known,
                                          const std::string& origin, const std::string& what) {
  std::set<std::string> seen;
  for (const auto& item : node) {
    TORCH_CHECK(item.first.IsScalar(), origin, ": keys must be names, got a ",
                item.first.IsSequence() ? "list" : (item.first.IsMap() ? "mapping" : "null"));
    const auto key = item.first.Scalar();
    TORCH_CHECK(std::find(known.begin(), known.end(), key) != known.end(), origin, ": unknown ", what,
                " argument '", key, "'; known: ", fmt::format("{}", fmt::join(known, ", ")));
    TORCH_CHECK(seen.insert(key).second, origin, ": key '", key, "' appears twice");
  }
  return seen;
}

/// An integer `key` of `node` in [min, max].
inline int64_t config_int(const YAML::Node& node, const std::string& key, int64_t min, int64_t max,
                          const std::string& origin) {
  const auto field = AdmOptionField{.name = key.c_str(), .min = min, .max = max};
  return check_config_range(field, config_value<int64_t>(node[key], key, "an integer", origin), origin);
}

/// ldm's `Encoder`/`Decoder` keyword arguments (`ddconfig`) into `options` (embed_dim, n_embed and the kind
/// already set).
inline void parse_ldm_ddconfig(const YAML::Node& ddconfig, LdmAutoencoderOptions& options,
                               const std::string& origin) {
  TORCH_CHECK(ddconfig.IsMap(), origin, " must be a mapping of Encoder/Decoder arguments (ch, ch_mult, ...)");
  const auto seen =
      checked_keys(ddconfig,
                   {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                    "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "use_linear_attn",
                    "attn_type", "give_pre_end", "tanh_out"},
                   origin, "Encoder/Decoder");
  for (const char* key :
       {"z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "attn_resolutions"})
    TORCH_CHECK(seen.contains(key), origin, ": missing required key '", key, "'");
  auto flag = [&](const char* key, bool fallback) {
    return seen.contains(key) ? config_value<bool>(ddconfig[key], key, "true or false", origin) : fallback;
  };
  TORCH_CHECK(flag("resamp_with_conv", true), origin,
              ": resamp_with_conv false (average-pool resampling) is not supported; the published "
              "autoencoders resample with convolutions");
  TORCH_CHECK(!flag("use_linear_attn", false), origin,
              ": use_linear_attn (linear attention) is not supported");
  TORCH_CHECK(!flag("give_pre_end", false) && !flag("tanh_out", false), origin,
              ": give_pre_end and tanh_out (a decoder without its output layers, or with a tanh) are not "
              "supported");
  if (seen.contains("attn_type")) {
    const auto attn_type = config_value<std::string>(ddconfig["attn_type"], "attn_type", "a name", origin);
    TORCH_CHECK(attn_type == "vanilla", origin, ": attn_type '", attn_type,
                "' is not supported (only ldm's vanilla AttnBlock)");
  }
  const int64_t max_channels = kLdmFirstStageMaxChannels;
  options
      .double_z(flag("double_z", true))  // ldm's Encoder default
      .z_channels(config_int(ddconfig, "z_channels", 1, max_channels, origin))
      .resolution(config_int(ddconfig, "resolution", 1, kLdmFirstStageMaxResolution, origin))
      .in_channels(config_int(ddconfig, "in_channels", 1, max_channels, origin))
      .out_ch(config_int(ddconfig, "out_ch", 1, max_channels, origin))
      .ch(config_int(ddconfig, "ch", 1, max_channels, origin))
      .num_res_blocks(config_int(ddconfig, "num_res_blocks", 1, 16, origin))
      .attn_resolutions(config_int_list(
          ddconfig["attn_resolutions"],
          AdmOptionField{.name = "attn_resolutions", .min = 1, .max = kLdmFirstStageMaxResolution}, origin))
      .ch_mult(seen.contains("ch_mult")
                   ? config_int_list(ddconfig["ch_mult"],
                                     AdmOptionField{.name = "ch_mult", .min = 1, .max = 64}, origin)
                   : std::vector<int64_t>{1, 2, 4, 8});  // ldm's Encoder default
  if (seen.contains("dropout"))
    options.dropout(config_value<double>(ddconfig["dropout"], "dropout", "a number", origin));
}

/// A `target` + `params` mapping naming one of ldm's autoencoders (see LdmFirstStageConfig).
inline LdmFirstStageConfig parse_ldm_first_stage_node(const YAML::Node& config, const std::string& origin) {
  TORCH_CHECK(config.IsMap() && config["target"] && config["params"] && config["params"].IsMap(), origin,
              " must be a mapping with target (e.g. ldm.models.autoencoder.VQModelInterface) and params");
  LdmFirstStageConfig result;
  result.target = config_value<std::string>(config["target"], "target", "a class path", origin);
  const std::string prefix = "ldm.models.autoencoder.";
  const auto name = result.target.rfind(prefix, 0) == 0 ? result.target.substr(prefix.size()) : "";
  const bool vq = name == "VQModelInterface" || name == "VQModel";
  TORCH_CHECK(vq || name == "AutoencoderKL", origin, ": target '", result.target,
              "' is not an autoencoder diffpost builds (ldm.models.autoencoder.VQModelInterface, VQModel or "
              "AutoencoderKL)");
  const auto params = config["params"];
  const std::string params_origin = origin + ".params";
  std::vector<std::string> known{"ddconfig",    "lossconfig", "embed_dim",        "ckpt_path",
                                 "ignore_keys", "image_key",  "colorize_nlabels", "monitor"};
  if (vq) {
    for (const char* key : {"n_embed", "batch_resize_range", "scheduler_config", "lr_g_factor", "remap",
                            "sane_index_shape", "use_ema"})
      known.emplace_back(key);
  }
  const auto seen = checked_keys(params, known, params_origin, name);
  TORCH_CHECK(seen.contains("ddconfig") && seen.contains("embed_dim") && (!vq || seen.contains("n_embed")),
              params_origin, ": missing one of the required keys ddconfig, embed_dim", vq ? ", n_embed" : "");
  auto set_and_not_null = [&](const char* key) { return seen.contains(key) && !params[key].IsNull(); };
  TORCH_CHECK(!set_and_not_null("colorize_nlabels"), params_origin,
              ": colorize_nlabels (an autoencoder of segmentation maps, with a 'colorize' buffer) is not "
              "supported");
  TORCH_CHECK(!set_and_not_null("remap"), params_origin,
              ": remap (a codebook index remapping, with a 'used' buffer) is not supported");
  TORCH_CHECK(!seen.contains("use_ema") ||
                  !config_value<bool>(params["use_ema"], "use_ema", "true or false", params_origin),
              params_origin, ": use_ema true (the autoencoder's own EMA copy) is not supported");
  auto& options = result.options;
  options.kind(vq ? LdmAutoencoderKind::vq : LdmAutoencoderKind::kl)
      .embed_dim(config_int(params, "embed_dim", 1, kLdmFirstStageMaxChannels, params_origin));
  if (vq) options.n_embed(config_int(params, "n_embed", 1, kLdmFirstStageMaxCodebook, params_origin));
  parse_ldm_ddconfig(params["ddconfig"], options, params_origin + ".ddconfig");
  try {
    options.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
  return result;
}

}  // namespace detail

/// A CompVis latent-diffusion configuration (e.g. `configs/latent-diffusion/ffhq-ldm-vq-4.yaml`): the UNet
/// of `model.params.unet_config.params` as AdmUNetOptions, and the diffusion settings of `model.params` with
/// ldm's defaults (DDPM in ldm/models/diffusion/ddpm.py) where the file is silent.
struct LdmModelConfig {
  AdmUNetOptions unet{1, 1, 1};
  int64_t timesteps = 1000;
  std::string beta_schedule = "linear";
  double linear_start = 1e-4;
  double linear_end = 2e-2;
  /// The latent scale: `decode_first_stage` divides z by it (1.0 in the VQ configs).
  double scale_factor = 1.0;
  /// What the UNet predicts: "eps" (all the released LDMs) or "x0".
  std::string parameterization = "eps";
  /// `model.params.first_stage_config`: the autoencoder (absent from configs that describe only the UNet).
  std::optional<LdmFirstStageConfig> first_stage;
  /// `scale_by_std`: the scale factor is the checkpoint's `scale_factor` buffer (1 / std of the training
  /// latents, e.g. the LSUN churches KL-f8 LDM), not the config's `scale_factor`.
  bool scale_by_std = false;
  /// `use_ema` (ldm's default true): whether training kept an EMA copy of the UNet (`model_ema.*`).
  bool use_ema = true;

  /// The schedule ldm's `register_schedule` builds from these settings (`make_beta_schedule`); prefer the
  /// checkpoint's own `betas` when it has them (schedule_from_state_dict).
  [[nodiscard]] DiffusionSchedule schedule() const {
    return DiffusionSchedule(
        detail::ldm_betas(beta_schedule, timesteps, linear_start, linear_end, "LdmModelConfig"));
  }
};

namespace detail {

/// parse_ldm_model_config on a loaded document.
inline LdmModelConfig parse_ldm_model_config_node(const YAML::Node& root, const std::string& origin) {
  TORCH_CHECK(is_ldm_config(root), origin,
              ": not a latent-diffusion config: expected model: {params: {unet_config: {target: "
              "ldm.modules.diffusionmodules.openaimodel.UNetModel, params: {...}}}}");
  const auto model_params = root["model"]["params"];
  const auto unet_config = model_params["unet_config"];
  const std::string unet_origin = origin + " model.params.unet_config";
  TORCH_CHECK(unet_config.IsMap() && unet_config["params"] && unet_config["params"].IsMap(), unet_origin,
              " must be a mapping with target and params");
  if (unet_config["target"]) {
    const auto target =
        config_value<std::string>(unet_config["target"], "target", "a class path", unet_origin);
    TORCH_CHECK(target == "ldm.modules.diffusionmodules.openaimodel.UNetModel", unet_origin, ": target '",
                target,
                "' is not ldm.modules.diffusionmodules.openaimodel.UNetModel, the UNet diffpost reads "
                "as its ADM UNet");
  }
  const auto params = unet_config["params"];
  const std::string params_origin = origin + " model.params.unet_config.params";
  const auto& keys = ldm_unet_keys();
  YAML::Node adm(YAML::NodeType::Map);
  std::set<std::string> seen;
  for (const auto& item : params) {
    TORCH_CHECK(item.first.IsScalar(), params_origin, ": keys must be names such as 'model_channels'");
    const auto key = item.first.Scalar();
    auto found = std::find_if(keys.begin(), keys.end(), [&](const auto& k) { return k.first == key; });
    if (found == keys.end()) {
      std::string list;
      for (const auto& k : keys) list += (list.empty() ? "" : ", ") + k.first;
      TORCH_CHECK(false, params_origin, ": unknown UNetModel argument '", key, "'; known: ", list);
    }
    seen.insert(key);
    if (!found->second.empty()) adm[found->second] = item.second;
  }
  auto flag = [&](const char* key, bool fallback) {
    return seen.contains(key) ? config_value<bool>(params[key], key, "true or false", params_origin)
                              : fallback;
  };
  auto absent_or_null = [&](const char* key) { return !seen.contains(key) || params[key].IsNull(); };
  TORCH_CHECK(!flag("use_spatial_transformer", false) && absent_or_null("context_dim"), params_origin,
              ": a conditional UNet with a SpatialTransformer (use_spatial_transformer, context_dim) is not "
              "supported; diffpost reads the unconditional ldm UNet (the ADM UNet)");
  TORCH_CHECK(absent_or_null("n_embed"), params_origin,
              ": n_embed (a UNet that predicts codebook ids) is not supported");
  TORCH_CHECK(!seen.contains("dims") ||
                  config_value<int64_t>(params["dims"], "dims", "an integer", params_origin) == 2,
              params_origin, ": dims must be 2 (images); 1-D and 3-D UNets are not supported");
  TORCH_CHECK(flag("conv_resample", true), params_origin,
              ": conv_resample false is not supported (the ADM UNet resamples with convolutions)");
  flag("legacy", true);  // read for its type: it only changes SpatialTransformer heads, absent here
  TORCH_CHECK(seen.contains("model_channels"), params_origin, ": missing required key 'model_channels'");
  TORCH_CHECK(seen.contains("image_size") && seen.contains("num_res_blocks") &&
                  seen.contains("attention_resolutions"),
              params_origin,
              ": missing one of the required keys image_size, num_res_blocks, "
              "attention_resolutions");
  // ldm's attention_resolutions are downsample factors (ds); AdmUNetOptions holds feature-map sizes.
  const auto image_size =
      config_value<int64_t>(params["image_size"], "image_size", "an integer", params_origin);
  TORCH_CHECK(image_size > 0 && image_size <= 4096, params_origin, ": 'image_size' is ", image_size,
              ", out of range 1 to 4096");
  const auto factors =
      config_int_list(params["attention_resolutions"],
                      AdmOptionField{.name = "attention_resolutions", .min = 1, .max = 4096}, params_origin);
  YAML::Node resolutions(YAML::NodeType::Sequence);
  for (int64_t ds : factors) {
    TORCH_CHECK(image_size % ds == 0, params_origin, ": attention_resolutions entry ", ds,
                " (a downsample factor in ldm) does not divide image_size ", image_size);
    resolutions.push_back(image_size / ds);
  }
  adm["attention_resolutions"] = resolutions;
  if (!seen.contains("num_heads") && !seen.contains("num_head_channels")) {
    TORCH_CHECK(false, params_origin, ": give num_heads or num_head_channels (ldm's UNetModel requires one)");
  }
  LdmModelConfig config;
  config.unet = parse_adm_model_config_node(adm, params_origin).options;
  auto number = [&](const char* key, double& value) {
    if (model_params[key])
      value = config_value<double>(model_params[key], key, "a number", origin + " model.params");
  };
  number("linear_start", config.linear_start);
  number("linear_end", config.linear_end);
  number("scale_factor", config.scale_factor);
  if (model_params["timesteps"]) {
    config.timesteps =
        config_value<int64_t>(model_params["timesteps"], "timesteps", "an integer", origin + " model.params");
    TORCH_CHECK(config.timesteps >= 1 && config.timesteps <= 100000, origin, " model.params: timesteps ",
                config.timesteps, " is out of range 1 to 100000");
  }
  if (model_params["beta_schedule"])
    config.beta_schedule = config_value<std::string>(model_params["beta_schedule"], "beta_schedule",
                                                     "a schedule name", origin + " model.params");
  if (model_params["parameterization"])
    config.parameterization = config_value<std::string>(model_params["parameterization"], "parameterization",
                                                        "eps or x0", origin + " model.params");
  TORCH_CHECK(config.parameterization == "eps" || config.parameterization == "x0", origin,
              " model.params: parameterization '", config.parameterization, "' is not eps or x0");
  TORCH_CHECK(config.linear_start > 0 && config.linear_end > 0 && config.linear_end <= 1, origin,
              " model.params: linear_start ", config.linear_start, " and linear_end ", config.linear_end,
              " must be in (0, 1]");
  TORCH_CHECK(config.scale_factor > 0, origin, " model.params: scale_factor must be positive, got ",
              config.scale_factor);
  auto model_flag = [&](const char* key, bool fallback) {
    return model_params[key]
               ? config_value<bool>(model_params[key], key, "true or false", origin + " model.params")
               : fallback;
  };
  config.scale_by_std = model_flag("scale_by_std", false);
  config.use_ema = model_flag("use_ema", true);
  // Conditional LDMs (ldm's LatentDiffusion: a cond_stage_config other than __is_unconditional__ makes the
  // UNet take a conditioning through conditioning_key) need inputs diffpost does not have.
  if (const auto cond = model_params["cond_stage_config"]; cond) {
    const bool unconditional = cond.IsScalar() && cond.Scalar() == "__is_unconditional__";
    const std::string what = cond.IsScalar() ? "'" + cond.Scalar() + "'"
                                             : (cond.IsMap() && cond["target"] && cond["target"].IsScalar()
                                                    ? "target '" + cond["target"].Scalar() + "'"
                                                    : std::string("a conditioning model"));
    TORCH_CHECK(
        unconditional, origin, " model.params.cond_stage_config is ", what,
        ": a conditional LDM (class labels, text, layouts, or images concatenated to the latent) is not "
        "supported; diffpost reads unconditional LDMs, whose cond_stage_config is __is_unconditional__");
  }
  if (const auto key = model_params["conditioning_key"]; key && !key.IsNull()) {
    TORCH_CHECK(false, origin, " model.params.conditioning_key is '",
                key.IsScalar() ? key.Scalar() : std::string("?"),
                "': a conditional LDM is not supported; diffpost reads unconditional LDMs "
                "(cond_stage_config: __is_unconditional__, no conditioning_key)");
  }
  if (const auto first_stage = model_params["first_stage_config"]; first_stage)
    config.first_stage = parse_ldm_first_stage_node(first_stage, origin + " model.params.first_stage_config");
  return config;
}

}  // namespace detail

/// Parses an ADM UNet configuration from YAML (or JSON) text, with the keys of the reference's
/// `configs/model_config.yaml`: image_size, num_channels, num_res_blocks (required, as in `create_model`),
/// channel_mult ("" for the default of the image size, or "1,1,2,2,4,4"), learn_sigma, class_cond (1000
/// classes), use_checkpoint (accepted and ignored: checkpointing is a run-time choice,
/// AdmUNetImpl::set_gradient_checkpointing), attention_resolutions (16 or "32,16,8"), num_heads,
/// num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown, use_fp16 (must be
/// false: 16-bit compute is a run-time choice, AdmUNetImpl::set_compute_dtype),
/// use_new_attention_order, model_path; plus the extensions in_channels and num_classes (overrides
/// class_cond). `origin` names the source in error messages. Throws c10::Error on unknown keys, missing
/// required keys, wrong types, integers outside their AdmOptionField range (e.g. num_channels 1 to 4096),
/// options that `AdmUNetOptions::validate()` rejects, and networks of more than 2^32 parameters. A CompVis
/// latent-diffusion config (`model: {params: {unet_config: ...}}`) is recognised and its UNet read as
/// parse_ldm_model_config does.
inline AdmModelConfig parse_adm_model_config(const std::string& text,
                                             const std::string& origin = "model config") {
  try {
    const auto root = detail::load_yaml(text, origin);
    if (detail::is_ldm_config(root)) return {detail::parse_ldm_model_config_node(root, origin).unet, ""};
    return detail::parse_adm_model_config_node(root, origin);
  } catch (const YAML::Exception& e) {  // a conversion the checks above did not foresee
    TORCH_CHECK(false, origin, ": not a model config diffpost can read: ", e.what());
  }
}

/// `options` as a configuration file in the keys of the reference's `configs/model_config.yaml` (written with
/// yaml-cpp's emitter, fields in for_each_adm_option's order, lists as "1,1,2" strings, class_cond,
/// use_checkpoint and use_fp16 for the reference's create_model), plus the extensions in_channels and
/// num_classes; `model_path` when not empty. parse_adm_model_config reads it back to equal options.
inline std::string adm_model_config_yaml(const AdmUNetOptions& options, const std::string& model_path = "") {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for_each_adm_option(options, [&](const AdmOptionField& field, const auto& value) {
    // out_channels only when given: files of the derived default stay in the reference's keys
    if (std::string_view(field.name) == "out_channels" && options.explicit_out_channels() == -1) return;
    out << YAML::Key << field.name << YAML::Value;
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::vector<int64_t>>)
      out << YAML::DoubleQuoted << fmt::format("{}", fmt::join(value, ","));
    else
      out << value;
  });
  out << YAML::Key << "class_cond" << YAML::Value << (options.num_classes() > 0);
  out << YAML::Key << "use_checkpoint" << YAML::Value << false;
  out << YAML::Key << "use_fp16" << YAML::Value << false;
  if (!model_path.empty()) out << YAML::Key << "model_path" << YAML::Value << model_path;
  out << YAML::EndMap;
  TORCH_CHECK(out.good(),
              "adm_model_config_yaml: yaml-cpp could not write the configuration: ", out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

/// Parses a CompVis latent-diffusion config (`ffhq-ldm-vq-4.yaml` layout): `model.params.unet_config.params`
/// (ldm's UNetModel arguments: model_channels, attention_resolutions as downsample factors, out_channels,
/// ...) into AdmUNetOptions; timesteps, beta_schedule, linear_start, linear_end, scale_factor, scale_by_std,
/// use_ema and parameterization from `model.params`; and the autoencoder of `model.params.first_stage_config`
/// when there is one (parse_ldm_first_stage_config). Other parts of the file (data, lightning, the
/// autoencoder's lossconfig) are not read. Throws c10::Error on unknown UNet, autoencoder or Encoder/Decoder
/// arguments, conditional models (a cond_stage_config other than __is_unconditional__, a conditioning_key,
/// SpatialTransformer UNets), values of the wrong type or range, and options AdmUNetOptions::validate() or
/// LdmAutoencoderOptions::validate() rejects.
inline LdmModelConfig parse_ldm_model_config(const std::string& text,
                                             const std::string& origin = "latent-diffusion config") {
  try {
    return detail::parse_ldm_model_config_node(detail::load_yaml(text, origin), origin);
  } catch (const YAML::Exception& e) {
    TORCH_CHECK(false, origin, ": not a latent-diffusion config diffpost can read: ", e.what());
  }
}

namespace detail {

/// The text of the config file at `path` (at most 1 MiB); errors name `reader`.
inline std::string read_config_text(const std::filesystem::path& path, const char* reader) {
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  TORCH_CHECK(!error && std::filesystem::is_regular_file(path, error), reader, ": cannot open '",
              path.string(), "'");
  TORCH_CHECK(size <= (uintmax_t{1} << 20), reader, ": '", path.string(), "' is ", size,
              " bytes; a config is a few kilobytes (is this the checkpoint?)");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace detail

/// Reads the latent-diffusion config file at `path` (at most 1 MiB; see parse_ldm_model_config).
inline LdmModelConfig read_ldm_model_config(const std::filesystem::path& path) {
  return parse_ldm_model_config(detail::read_config_text(path, "read_ldm_model_config"),
                                "'" + path.string() + "'");
}

/// Whether the config file at `path` has the layout of a CompVis latent-diffusion config (`model: {params:
/// {unet_config: ...}}`, e.g. `ffhq-ldm-vq-4.yaml`), so that its checkpoint is read by load_latent_diffusion
/// rather than as an ADM UNet. False when the file cannot be read or parsed; the readers then say why.
inline bool is_latent_diffusion_config(const std::filesystem::path& path) {
  try {
    return detail::is_ldm_config(
        detail::load_yaml(detail::read_config_text(path, "is_latent_diffusion_config"), path.string()));
  } catch (const c10::Error&) {
    return false;
  } catch (const YAML::Exception&) {
    return false;
  }
}

/// Parses a CompVis first-stage autoencoder config: the standalone layout of
/// `models/first_stage_models/vq-f4/config.yaml` (`model: {target: ldm.models.autoencoder.VQModel, params:
/// {embed_dim, n_embed, ddconfig, lossconfig, ...}}`), or a latent-diffusion config, whose
/// `model.params.first_stage_config` is read. The targets diffpost builds are ldm.models.autoencoder's
/// VQModelInterface and VQModel (kind vq) and AutoencoderKL (kind kl); `ddconfig` holds ldm's Encoder/Decoder
/// arguments (ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, double_z, ...), `lossconfig`, the
/// training loss, is not read, nor are ckpt_path, monitor and the other training arguments. Refused by name:
/// unknown arguments (per class, as ldm's constructors refuse them), other targets, index remapping (remap),
/// segmentation colorizing (colorize_nlabels), the autoencoder's own EMA (use_ema), linear attention, and
/// options LdmAutoencoderOptions::validate() rejects.
inline LdmFirstStageConfig parse_ldm_first_stage_config(const std::string& text,
                                                        const std::string& origin = "first-stage config") {
  try {
    const auto root = detail::load_yaml(text, origin);
    if (detail::is_ldm_config(root) && root["model"]["params"]["first_stage_config"])
      return detail::parse_ldm_first_stage_node(root["model"]["params"]["first_stage_config"],
                                                origin + " model.params.first_stage_config");
    TORCH_CHECK(root.IsMap() && root["model"] && root["model"].IsMap() && root["model"]["target"], origin,
                ": not a first-stage autoencoder config: expected model: {target: "
                "ldm.models.autoencoder.VQModel, params: {embed_dim, n_embed, ddconfig}} (the layout of "
                "models/first_stage_models/vq-f4/config.yaml) or a latent-diffusion config with "
                "model.params.first_stage_config");
    return detail::parse_ldm_first_stage_node(root["model"], origin + " model");
  } catch (const YAML::Exception& e) {
    TORCH_CHECK(false, origin, ": not a first-stage config diffpost can read: ", e.what());
  }
}

/// Reads the first-stage config file at `path` (at most 1 MiB; see parse_ldm_first_stage_config).
inline LdmFirstStageConfig read_ldm_first_stage_config(const std::filesystem::path& path) {
  return parse_ldm_first_stage_config(detail::read_config_text(path, "read_ldm_first_stage_config"),
                                      "'" + path.string() + "'");
}

/// Reads the ADM UNet configuration file at `path` (YAML or JSON, at most 1 MiB; see parse_adm_model_config
/// for the keys). Errors name the file.
inline AdmModelConfig read_adm_model_config(const std::filesystem::path& path) {
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  TORCH_CHECK(!error && std::filesystem::is_regular_file(path, error), "read_adm_model_config: cannot open '",
              path.string(), "'");
  TORCH_CHECK(size <= (uintmax_t{1} << 20), "read_adm_model_config: '", path.string(), "' is ", size,
              " bytes; a model config is a few hundred (is this the checkpoint?)");
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "read_adm_model_config: cannot open '", path.string(), "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse_adm_model_config(text.str(), "'" + path.string() + "'");
}

/// The AdmUNetOptions of the configuration file at `path` (read_adm_model_config without the model path),
/// e.g. `AdmUNet model(adm_options_from_config("configs/model_config.yaml"));`.
inline AdmUNetOptions adm_options_from_config(const std::filesystem::path& path) {
  return read_adm_model_config(path).options;
}

}  // namespace diffpost
