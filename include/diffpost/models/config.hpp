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
#include <stdexcept>
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

/// The range of an integer key: what a network diffpost can build and run may use (the reference models use
/// image_size 64 to 512, num_channels 128 to 256, num_res_blocks 1 to 3), so that a typo such as
/// `num_channels: 4000000000` is a range error naming the key instead of a failed multi-terabyte allocation.
/// `unset` (-1) is accepted where the reference uses it for "not given".
struct AdmConfigRange {
  const char* key;
  int64_t min;
  int64_t max;
  bool unset = false;
};

inline const std::vector<AdmConfigRange>& adm_config_ranges() {
  static const std::vector<AdmConfigRange> ranges{{"image_size", 1, 4096},
                                                  {"in_channels", 1, 64},
                                                  {"num_channels", 1, 4096},
                                                  {"num_res_blocks", 1, 16},
                                                  {"num_heads", 1, 1024},
                                                  {"num_head_channels", 1, 4096, true},
                                                  {"num_heads_upsample", 1, 1024, true},
                                                  {"num_classes", 0, 1'000'000},
                                                  {"channel_mult", 1, 64},
                                                  {"attention_resolutions", 1, 4096}};
  return ranges;
}

/// At most this many channel_mult levels and attention resolutions (a 4096-pixel image halves 12 times).
inline constexpr size_t kAdmConfigMaxListLength = 16;
/// At most this many parameters in a network read from a config file (4 G, 16 GiB in float32; the largest
/// reference model, ImageNet 512, has 559 M).
inline constexpr int64_t kAdmConfigMaxParameters = int64_t{1} << 32;

/// Checks `value` of `key` against adm_config_ranges().
inline int64_t check_config_range(const std::string& key, int64_t value, const std::string& origin,
                                  const char* what = "") {
  const auto& ranges = adm_config_ranges();
  const auto range = std::find_if(ranges.begin(), ranges.end(), [&](const auto& r) { return key == r.key; });
  TORCH_CHECK(range != ranges.end(), "check_config_range: no range for '", key, "'");  // a diffpost bug
  TORCH_CHECK((value >= range->min && value <= range->max) || (range->unset && value == -1), origin, ": '",
              key, "'", what, " is ", value, ", out of range: it must be ", range->min, " to ", range->max,
              range->unset ? " (or -1 for unset)" : "", "; check the file");
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
inline std::vector<int64_t> config_int_list(const YAML::Node& node, const std::string& key,
                                            const std::string& origin) {
  std::vector<int64_t> values;
  auto add = [&](int64_t value) {
    TORCH_CHECK(values.size() < kAdmConfigMaxListLength, origin, ": '", key, "' has more than ",
                kAdmConfigMaxListLength, " entries; check the file");
    values.push_back(check_config_range(key, value, origin, " entry"));
  };
  if (node.IsSequence()) {
    for (const auto& item : node) add(config_value<int64_t>(item, key, "a list of integers", origin));
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

/// parse_adm_model_config, less its conversion of stray yaml-cpp exceptions.
inline AdmModelConfig parse_adm_model_config_yaml(const std::string& text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    TORCH_CHECK(false, origin, ": not valid YAML/JSON: ", e.what());
  }
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
  auto int_value = [&](const char* key) {
    return check_config_range(key, config_value<int64_t>(root[key], key, "an integer", origin), origin);
  };
  auto required_int = [&](const char* key) {
    TORCH_CHECK(seen.count(key), origin, ": missing required key '", key, "'");
    return int_value(key);
  };
  AdmUNetOptions options(required_int("image_size"), required_int("num_channels"),
                         required_int("num_res_blocks"));
  // Each present key is read with its type and handed to the matching setter.
  auto read_int = [&](const char* key, auto&& apply) {
    if (seen.count(key)) apply(int_value(key));
  };
  auto read_bool = [&](const char* key, auto&& apply) {
    if (seen.count(key)) apply(config_value<bool>(root[key], key, "true or false", origin));
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
    options.channel_mult(config_int_list(root["channel_mult"], "channel_mult", origin));
  if (seen.count("attention_resolutions"))
    options.attention_resolutions(
        config_int_list(root["attention_resolutions"], "attention_resolutions", origin));
  if (seen.count("dropout"))
    options.dropout(config_value<double>(root["dropout"], "dropout", "a number", origin));
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
  const int64_t parameters = adm_parameter_count(options);
  TORCH_CHECK(parameters <= kAdmConfigMaxParameters, origin, ": the network has ", parameters,
              " parameters, more than the ", kAdmConfigMaxParameters,
              " diffpost builds from a config file; check num_channels, channel_mult and num_res_blocks");
  AdmModelConfig config{options, ""};
  if (seen.count("model_path"))
    config.model_path = config_value<std::string>(root["model_path"], "model_path", "a path", origin);
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
/// required keys, wrong types, integers outside detail::adm_config_ranges() (e.g. num_channels 1 to 4096),
/// options that `AdmUNetOptions::validate()` rejects, and networks of more than 2^32 parameters.
inline AdmModelConfig parse_adm_model_config(const std::string& text,
                                             const std::string& origin = "model config") {
  try {
    return detail::parse_adm_model_config_yaml(text, origin);
  } catch (const YAML::Exception& e) {  // a conversion the checks above did not foresee
    TORCH_CHECK(false, origin, ": not a model config diffpost can read: ", e.what());
  }
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
