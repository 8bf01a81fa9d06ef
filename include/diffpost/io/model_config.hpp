// Reading the model configuration files of the reference implementation (DPS `configs/model_config.yaml`,
// `configs/imagenet_model_config.yaml`): the keyword arguments of guided-diffusion's `create_model` as YAML
// (or JSON, which yaml-cpp also parses), turned into AdmUNetOptions. Unknown keys and values of the wrong
// type are errors, not silently ignored: a misspelt `num_head_channel` would otherwise build a different
// network whose checkpoint then fails to load, or worse, loads.
#pragma once

#include <diffpost/detail/text.hpp>
#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
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
/// options that `AdmUNetOptions::validate()` rejects, and networks of more than 2^32 parameters.
inline AdmModelConfig parse_adm_model_config(const std::string& text,
                                             const std::string& origin = "model config") {
  try {
    return detail::parse_adm_model_config_yaml(text, origin);
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
