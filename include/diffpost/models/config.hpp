// Reading the model configuration files of the reference implementation (DPS `configs/model_config.yaml`,
// `configs/imagenet_model_config.yaml`): the keyword arguments of guided-diffusion's `create_model` as YAML
// (or JSON, which yaml-cpp also parses), turned into AdmUNetOptions. Unknown keys and values of the wrong
// type are errors, not silently ignored: a misspelt `num_head_channel` would otherwise build a different
// network whose checkpoint then fails to load, or worse, loads.
#pragma once

#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace diffpost {

/// An ADM UNet configuration file: the network options and the checkpoint it names (`model_path`, as written
/// in the file, relative paths untouched; empty when absent).
struct AdmModelConfig {
  AdmUNetOptions options;
  std::string model_path;
};

namespace detail {

/// The keys a model configuration may hold: the reference `create_model` arguments, `model_path`, and the
/// diffpost extensions `in_channels` and `num_classes`.
inline const std::vector<std::string>& adm_config_keys() {
  static const std::vector<std::string> keys{
      "image_size",  "num_channels",      "num_res_blocks",     "channel_mult",
      "learn_sigma", "class_cond",        "use_checkpoint",     "attention_resolutions",
      "num_heads",   "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
      "dropout",     "resblock_updown",   "use_fp16",           "use_new_attention_order",
      "model_path",  "in_channels",       "num_classes"};
  return keys;
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
inline std::vector<int64_t> config_int_list(const YAML::Node& node, const std::string& key,
                                            const std::string& origin) {
  std::vector<int64_t> values;
  if (node.IsSequence()) {
    for (const auto& item : node)
      values.push_back(config_value<int64_t>(item, key, "a list of integers", origin));
    return values;
  }
  const auto text = config_value<std::string>(node, key, "a comma-separated list of integers", origin);
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');) {
    const auto first = part.find_first_not_of(" \t");
    const auto last = part.find_last_not_of(" \t");
    TORCH_CHECK(first != std::string::npos, origin, ": '", key, "' has an empty entry in '", text, "'");
    part = part.substr(first, last - first + 1);
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TORCH_CHECK(used == part.size(), origin, ": '", key,
                "' must be a comma-separated list of integers, got '", text, "' (entry '", part, "')");
    values.push_back(value);
  }
  return values;
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
/// required keys, wrong types and options that `AdmUNetOptions::validate()` rejects.
inline AdmModelConfig parse_adm_model_config(const std::string& text,
                                             const std::string& origin = "model config") {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    TORCH_CHECK(false, origin, ": not valid YAML/JSON: ", e.what());
  }
  TORCH_CHECK(root.IsMap(), origin, ": expected a mapping of create_model arguments (key: value lines)");
  const auto& known = detail::adm_config_keys();
  std::set<std::string> seen;
  for (const auto& item : root) {
    const auto key = item.first.as<std::string>();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      TORCH_CHECK(false, origin, ": unknown key '", key, "'; known keys: ", list);
    }
    TORCH_CHECK(seen.insert(key).second, origin, ": key '", key, "' appears twice");
  }
  auto required_int = [&](const char* key) {
    TORCH_CHECK(seen.count(key), origin, ": missing required key '", key, "'");
    return detail::config_value<int64_t>(root[key], key, "an integer", origin);
  };
  AdmUNetOptions options(required_int("image_size"), required_int("num_channels"),
                         required_int("num_res_blocks"));
  // Each present key is read with its type and handed to the matching setter.
  auto read_int = [&](const char* key, auto&& apply) {
    if (seen.count(key)) apply(detail::config_value<int64_t>(root[key], key, "an integer", origin));
  };
  auto read_bool = [&](const char* key, auto&& apply) {
    if (seen.count(key)) apply(detail::config_value<bool>(root[key], key, "true or false", origin));
  };
  read_int("in_channels", [&](int64_t v) { options.in_channels(v); });
  read_int("num_heads", [&](int64_t v) { options.num_heads(v); });
  read_int("num_head_channels", [&](int64_t v) { options.num_head_channels(v); });
  read_int("num_heads_upsample", [&](int64_t v) { options.num_heads_upsample(v); });
  read_bool("learn_sigma", [&](bool v) { options.learn_sigma(v); });
  read_bool("use_scale_shift_norm", [&](bool v) { options.use_scale_shift_norm(v); });
  read_bool("resblock_updown", [&](bool v) { options.resblock_updown(v); });
  read_bool("use_new_attention_order", [&](bool v) { options.use_new_attention_order(v); });
  if (seen.count("channel_mult"))
    options.channel_mult(detail::config_int_list(root["channel_mult"], "channel_mult", origin));
  if (seen.count("attention_resolutions"))
    options.attention_resolutions(
        detail::config_int_list(root["attention_resolutions"], "attention_resolutions", origin));
  if (seen.count("dropout"))
    options.dropout(detail::config_value<double>(root["dropout"], "dropout", "a number", origin));
  read_bool("class_cond",
            [&](bool v) { options.num_classes(v ? 1000 : 0); });  // NUM_CLASSES of guided-diffusion
  read_int("num_classes", [&](int64_t v) { options.num_classes(v); });
  read_bool("use_checkpoint", [](bool) {});  // gradient checkpointing only trades time for memory
  read_bool("use_fp16", [&](bool v) {
    TORCH_CHECK(
        !v, origin,
        ": use_fp16: true is not supported in a configuration (the published checkpoints are float32; "
        "choose 16-bit compute when running instead: AdmUNetImpl::set_compute_dtype, the tool's "
        "--precision); set use_fp16: false");
  });
  try {
    options.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
  AdmModelConfig config{options, ""};
  if (seen.count("model_path"))
    config.model_path = detail::config_value<std::string>(root["model_path"], "model_path", "a path", origin);
  return config;
}

/// Reads the ADM UNet configuration file at `path` (YAML or JSON; see parse_adm_model_config for the keys).
/// Errors name the file.
inline AdmModelConfig read_adm_model_config(const std::filesystem::path& path) {
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
