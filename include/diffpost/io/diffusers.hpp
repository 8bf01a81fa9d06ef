// Loading diffusers folders: a `UNet2DModel` (`config.json` + `diffusion_pytorch_model.safetensors` or
// `.bin`) alone or inside a pipeline folder (`model_index.json`, `unet/`, `scheduler/`), and its scheduler
// (`scheduler_config.json`: DDPMScheduler or DDIMScheduler) mapped onto diffpost's DiffusionSchedule and the
// samplers' options. Config keys are read with nlohmann::json; a key missing from a file takes diffusers'
// default, a key or value diffpost cannot honour is refused naming it. docs/models.md ("diffusers folders").
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/safetensors.hpp>
#include <diffpost/models/diffusers_unet.hpp>
#include <diffpost/samplers/ddim.hpp>
#include <diffpost/samplers/ddpm.hpp>
#include <diffpost/schedule.hpp>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numbers>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

namespace detail {

/// Reads a JSON config file of at most 1 MiB into a JSON object; errors name the file.
inline nlohmann::json read_json_config(const std::filesystem::path& path, const std::string& what) {
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), what, " '", path.string(), "' does not exist");
  const auto size = std::filesystem::file_size(path, error);
  TORCH_CHECK(!error && size <= (uintmax_t{1} << 20), what, " '", path.string(), "' is ", size,
              " bytes; a diffusers config is a few kilobytes (is this the weights file?)");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, what, " '", path.string(), "' is not valid JSON: ", e.what());
  }
  TORCH_CHECK(root.is_object(), what, " '", path.string(), "' is a JSON ", root.type_name(),
              ", not an object");
  return root;
}

/// Typed access to the keys of one diffusers config object, with errors that name the file and the key.
class JsonConfig {
 public:
  JsonConfig(const nlohmann::json& root, std::string origin) : root_(root), origin_(std::move(origin)) {}

  /// Refuses keys outside `known` (keys starting with '_' are diffusers' bookkeeping and are skipped).
  void check_keys(const std::vector<std::string>& known) const {
    for (const auto& [key, value] : root_.items()) {
      (void)value;
      if (key.rfind('_', 0) == 0) continue;
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      TORCH_CHECK(false, origin_, ": unknown key '", key, "'; diffpost reads ", list);
    }
  }
  [[nodiscard]] bool has(const std::string& key) const { return root_.contains(key); }
  [[nodiscard]] bool is_null(const std::string& key) const {
    return root_.contains(key) && root_[key].is_null();
  }
  [[nodiscard]] const nlohmann::json& at(const std::string& key) const { return root_.at(key); }

  template <class T>
  [[nodiscard]] T get(const std::string& key, T fallback) const {
    if (!root_.contains(key)) return fallback;
    return value<T>(root_[key], key);
  }
  template <class T>
  [[nodiscard]] std::optional<T> get_optional(const std::string& key, std::optional<T> fallback) const {
    if (!root_.contains(key)) return fallback;
    if (root_[key].is_null()) return std::nullopt;
    return value<T>(root_[key], key);
  }
  [[nodiscard]] int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const {
    const auto v = get<int64_t>(key, fallback);
    TORCH_CHECK(v >= min && v <= max, origin_, ": '", key, "' is ", v, ", out of range: it must be ", min,
                " to ", max);
    return v;
  }
  [[nodiscard]] std::vector<int64_t> get_ints(const std::string& key, std::vector<int64_t> fallback,
                                              int64_t min, int64_t max) const {
    if (!root_.contains(key)) return fallback;
    const auto& node = root_[key];
    TORCH_CHECK(node.is_array() && node.size() <= 64, origin_, ": '", key, "' must be a list of integers");
    std::vector<int64_t> out;
    for (const auto& item : node) {
      const auto v = value<int64_t>(item, key);
      TORCH_CHECK(v >= min && v <= max, origin_, ": '", key, "' entry ", v,
                  " is out of range: entries must be ", min, " to ", max);
      out.push_back(v);
    }
    return out;
  }
  [[nodiscard]] std::vector<std::string> get_strings(const std::string& key,
                                                     std::vector<std::string> fallback) const {
    if (!root_.contains(key)) return fallback;
    const auto& node = root_[key];
    TORCH_CHECK(node.is_array() && node.size() <= 64, origin_, ": '", key, "' must be a list of strings");
    std::vector<std::string> out;
    for (const auto& item : node) out.push_back(value<std::string>(item, key));
    return out;
  }
  [[nodiscard]] const std::string& origin() const { return origin_; }

 private:
  template <class T>
  [[nodiscard]] T value(const nlohmann::json& node, const std::string& key) const {
    if constexpr (std::is_same_v<T, bool>) {
      TORCH_CHECK(node.is_boolean(), origin_, ": '", key, "' must be true or false, got ", node.dump());
      return node.get<bool>();
    } else if constexpr (std::is_same_v<T, int64_t>) {
      TORCH_CHECK(
          node.is_number_integer() || (node.is_number_float() && std::abs(node.get<double>()) < 1e15 &&
                                       node.get<double>() == std::floor(node.get<double>())),
          origin_, ": '", key, "' must be an integer, got ", node.dump());
      return node.is_number_integer() ? node.get<int64_t>() : static_cast<int64_t>(node.get<double>());
    } else if constexpr (std::is_same_v<T, double>) {
      TORCH_CHECK(node.is_number(), origin_, ": '", key, "' must be a number, got ", node.dump());
      return node.get<double>();
    } else {
      TORCH_CHECK(node.is_string(), origin_, ": '", key, "' must be a string, got ", node.dump());
      return node.get<std::string>();
    }
  }

  const nlohmann::json& root_;
  std::string origin_;
};

}  // namespace detail

/// Parses the `config.json` of a diffusers `UNet2DModel` (as `save_pretrained` writes it, or an older one)
/// into DiffusersUNetOptions: every UNet2DModel argument is read with its type and range, a missing one takes
/// UNet2DModel's default. Refused, naming the key: another `_class_name` (e.g. UNet2DConditionModel), an
/// unknown key, class embeddings (`class_embed_type`, `num_class_embeds` not null), values validate() refuses
/// (Fourier or learned time embeddings, other block types, ...). `origin` names the source in messages.
inline DiffusersUNetOptions parse_diffusers_unet_config(const nlohmann::json& root,
                                                        const std::string& origin) {
  const detail::JsonConfig c(root, origin);
  if (c.has("_class_name")) {
    const auto name = c.get<std::string>("_class_name", "");
    TORCH_CHECK(name == "UNet2DModel", origin, ": _class_name '", name,
                "' is not supported; diffpost reads UNet2DModel (unconditional pixel-space UNets)");
  }
  c.check_keys({"sample_size",
                "in_channels",
                "out_channels",
                "center_input_sample",
                "time_embedding_type",
                "time_embedding_dim",
                "freq_shift",
                "flip_sin_to_cos",
                "down_block_types",
                "mid_block_type",
                "up_block_types",
                "block_out_channels",
                "layers_per_block",
                "mid_block_scale_factor",
                "downsample_padding",
                "downsample_type",
                "upsample_type",
                "dropout",
                "act_fn",
                "attention_head_dim",
                "norm_num_groups",
                "attn_norm_num_groups",
                "norm_eps",
                "resnet_time_scale_shift",
                "add_attention",
                "class_embed_type",
                "num_class_embeds",
                "num_train_timesteps"});
  TORCH_CHECK(!c.has("class_embed_type") || c.is_null("class_embed_type"), origin,
              ": class_embed_type must be null: class-conditional UNet2DModels are not supported");
  TORCH_CHECK(!c.has("num_class_embeds") || c.is_null("num_class_embeds"), origin,
              ": num_class_embeds must be null: class-conditional UNet2DModels are not supported");
  if (c.has("num_train_timesteps") && !c.is_null("num_train_timesteps"))
    (void)c.get_int("num_train_timesteps", 0, 1, 1'000'000);  // used by the learned time embedding only
  TORCH_CHECK(!c.has("norm_num_groups") || !c.is_null("norm_num_groups"), origin,
              ": norm_num_groups null is not supported (diffusers' residual blocks need a group count)");
  DiffusersUNetOptions o;
  if (c.has("sample_size") && !c.is_null("sample_size")) {
    o.sample_size(c.at("sample_size").is_array()
                      ? c.get_ints("sample_size", {}, 1, 1 << 16)
                      : std::vector<int64_t>{c.get_int("sample_size", 0, 1, 1 << 16)});
    TORCH_CHECK(o.sample_size().size() <= 2, origin, ": 'sample_size' must be a size or [height, width]");
  }
  o.in_channels(c.get_int("in_channels", o.in_channels(), 1, 64));
  o.out_channels(c.get_int("out_channels", o.out_channels(), 1, 128));
  o.center_input_sample(c.get<bool>("center_input_sample", o.center_input_sample()));
  o.time_embedding_type(c.get<std::string>("time_embedding_type", o.time_embedding_type()));
  if (c.has("time_embedding_dim") && !c.is_null("time_embedding_dim"))
    o.time_embedding_dim(c.get_int("time_embedding_dim", 0, 1, 65536));
  o.freq_shift(c.get<double>("freq_shift", o.freq_shift()));
  o.flip_sin_to_cos(c.get<bool>("flip_sin_to_cos", o.flip_sin_to_cos()));
  o.down_block_types(c.get_strings("down_block_types", o.down_block_types()));
  o.mid_block_type(c.get_optional<std::string>("mid_block_type", o.mid_block_type()));
  o.up_block_types(c.get_strings("up_block_types", o.up_block_types()));
  o.block_out_channels(c.get_ints("block_out_channels", o.block_out_channels(), 1, 4096));
  o.layers_per_block(c.get_int("layers_per_block", o.layers_per_block(), 1, 16));
  o.mid_block_scale_factor(c.get<double>("mid_block_scale_factor", o.mid_block_scale_factor()));
  o.downsample_padding(c.get_int("downsample_padding", o.downsample_padding(), 0, 2));
  o.downsample_type(c.get<std::string>("downsample_type", o.downsample_type()));
  o.upsample_type(c.get<std::string>("upsample_type", o.upsample_type()));
  o.dropout(c.get<double>("dropout", o.dropout()));
  o.act_fn(c.get<std::string>("act_fn", o.act_fn()));
  if (c.has("attention_head_dim"))
    o.attention_head_dim(c.is_null("attention_head_dim")
                             ? std::nullopt
                             : std::optional<int64_t>(c.get_int("attention_head_dim", 0, 1, 4096)));
  o.norm_num_groups(c.get_int("norm_num_groups", o.norm_num_groups(), 1, 4096));
  if (c.has("attn_norm_num_groups") && !c.is_null("attn_norm_num_groups"))
    o.attn_norm_num_groups(c.get_int("attn_norm_num_groups", 0, 1, 4096));
  o.norm_eps(c.get<double>("norm_eps", o.norm_eps()));
  o.resnet_time_scale_shift(c.get<std::string>("resnet_time_scale_shift", o.resnet_time_scale_shift()));
  o.add_attention(c.get<bool>("add_attention", o.add_attention()));
  try {
    o.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": ", e.what_without_backtrace());
  }
  return o;
}

/// A diffusers DDPMScheduler or DDIMScheduler as its `scheduler_config.json` describes it, with the defaults
/// of those classes for missing keys, and its mapping onto diffpost: `training_schedule()` (the betas as
/// diffusers computes them: float32, then everything derived in float64), `timesteps(n)` (the respaced
/// timesteps diffusers' `set_timesteps(n)` chooses, by `timestep_spacing` and `steps_offset`), `schedule(n)`
/// (the training schedule restricted to them), and the samplers' options. Not supported, refused naming the
/// key: other scheduler classes, `thresholding`, `rescale_betas_zero_snr`, the `sigmoid` and `laplace` beta
/// schedules, variance types `learned` and `fixed_large_log`, and `clip_sample_range` other than 1 with
/// `clip_sample` (diffpost images and clipping live in [-1, 1]).
struct DiffusersScheduler {
  std::string class_name = "DDPMScheduler";
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";
  std::vector<double> trained_betas;  ///< empty unless the file gives them
  std::string variance_type = "fixed_small";
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  DiffusersPrediction prediction_type = DiffusersPrediction::epsilon;
  std::string timestep_spacing = "leading";
  int64_t steps_offset = 0;
  bool set_alpha_to_one = true;  ///< DDIMScheduler only

  /// The training betas as diffusers computes them (float32, then widened): `linear`
  /// linspace(beta_start, beta_end, N); `scaled_linear` linspace(sqrt(beta_start), sqrt(beta_end), N)^2;
  /// `squaredcos_cap_v2` the cosine schedule of Nichol & Dhariwal (eq. 17, betas capped at 0.999);
  /// `trained_betas` as given.
  [[nodiscard]] std::vector<double> betas() const {
    torch::Tensor betas;
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    if (!trained_betas.empty()) {
      betas = torch::tensor(trained_betas, torch::kFloat64).to(torch::kFloat32);
    } else if (beta_schedule == "linear") {
      betas = torch::linspace(beta_start, beta_end, num_train_timesteps, f32);
    } else if (beta_schedule == "scaled_linear") {
      betas = torch::linspace(std::sqrt(beta_start), std::sqrt(beta_end), num_train_timesteps, f32).pow(2);
    } else {  // squaredcos_cap_v2, in float64 as Python computes it, then float32
      betas = torch::tensor(DiffusionSchedule::cosine(num_train_timesteps).betas(), torch::kFloat64)
                  .to(torch::kFloat32);
    }
    const auto widened = betas.to(torch::kFloat64).contiguous();
    return {widened.data_ptr<double>(), widened.data_ptr<double>() + widened.numel()};
  }

  /// The schedule of all `num_train_timesteps` training steps.
  [[nodiscard]] DiffusionSchedule training_schedule() const { return DiffusionSchedule(betas()); }

  /// The timesteps, in decreasing order, that diffusers' `set_timesteps(num_inference_steps)` chooses:
  /// `leading` (k * (N / n) + steps_offset), `trailing` (round(N - k N / n) - 1) or `linspace`
  /// (round(linspace(0, N - 1, n))).
  [[nodiscard]] std::vector<int64_t> timesteps(int64_t num_inference_steps) const {
    const int64_t n = num_inference_steps, total = num_train_timesteps;
    TORCH_CHECK(n >= 1 && n <= total, class_name, ": num_inference_steps ", n,
                " must be 1 to num_train_timesteps (", total, ")");
    std::vector<int64_t> steps;
    if (timestep_spacing == "linspace") {  // numpy.linspace: k * step, the last point exactly N - 1
      const double step = n == 1 ? 0.0 : static_cast<double>(total - 1) / static_cast<double>(n - 1);
      for (int64_t k = 0; k < n; ++k) {
        const double value = k == n - 1 ? static_cast<double>(total - 1) : static_cast<double>(k) * step;
        steps.push_back(static_cast<int64_t>(std::nearbyint(value)));  // round half to even, as numpy
      }
    } else if (timestep_spacing == "leading") {
      const int64_t ratio = total / n;
      for (int64_t k = 0; k < n; ++k) steps.push_back(k * ratio + steps_offset);
    } else {  // trailing: numpy.arange(N, 0, -N / n) (length ceil(N / (N / n)), start + k * delta), rounded,
              // minus 1
      const double step = static_cast<double>(total) / static_cast<double>(n);
      const auto count = static_cast<int64_t>(std::ceil(-static_cast<double>(total) / -step));
      const double delta = (static_cast<double>(total) - step) - static_cast<double>(total);
      for (int64_t k = 0; k < count; ++k)
        steps.push_back(static_cast<int64_t>(
                            std::nearbyint(static_cast<double>(total) + static_cast<double>(k) * delta)) -
                        1);
    }
    std::sort(steps.begin(), steps.end(), std::greater<>());
    for (const int64_t t : steps)
      TORCH_CHECK(t >= 0 && t < total, class_name, ": timestep_spacing '", timestep_spacing,
                  "' with steps_offset ", steps_offset, " gives timestep ", t, " for ", n,
                  " steps, outside [0, ", total, "); choose fewer steps");
    return steps;
  }

  /// The training schedule restricted to `timesteps(num_inference_steps)` (every step for
  /// num_inference_steps = N with the default spacing): abar at each kept step is unchanged and the previous
  /// step of each is the next kept one, as in DDPMScheduler.step. DDIMScheduler.step takes t - N / n as the
  /// previous step instead, which is the same step unless N / n is not an integer with `trailing` or
  /// `linspace` spacing; and with `set_alpha_to_one` false its last step ends at abar_0 where diffpost's ends
  /// at the clean image.
  [[nodiscard]] DiffusionSchedule schedule(int64_t num_inference_steps) const {
    auto steps = timesteps(num_inference_steps);
    std::sort(steps.begin(), steps.end());
    steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
    return training_schedule().restricted_to(steps);
  }

  /// DDPMSampler options: `clip_sample`, and the variance of `variance_type` (fixed_small and fixed_small_log
  /// are the posterior variance, fixed_large beta_t, learned_range the model's interpolation; DDIM configs
  /// have no variance type and leave it to the model output).
  [[nodiscard]] DDPMOptions ddpm_options() const {
    DDPMOptions options;
    options.clip_denoised(clip_sample);
    if (class_name == "DDPMScheduler") {
      if (variance_type == "fixed_small" || variance_type == "fixed_small_log")
        options.variance(VarianceType::fixed_small);
      if (variance_type == "fixed_large") options.variance(VarianceType::fixed_large);
      if (variance_type == "learned_range") options.variance(VarianceType::learned_range);
    }
    return options;
  }

  /// DDIMSampler options: `clip_sample` (eta is a sampling choice, 0 as in DDIMPipeline).
  [[nodiscard]] DDIMOptions ddim_options() const { return DDIMOptions{}.clip_denoised(clip_sample); }

  /// Whether the model must output variance channels (`learned_range`).
  [[nodiscard]] bool needs_variance_channels() const {
    return class_name == "DDPMScheduler" && variance_type == "learned_range";
  }

  /// One line for logs: the class, N, the beta schedule, variance, clipping, prediction, spacing.
  [[nodiscard]] std::string describe() const {
    std::ostringstream text;
    const char* prediction =
        prediction_type == DiffusersPrediction::epsilon
            ? "epsilon"
            : (prediction_type == DiffusersPrediction::sample ? "sample" : "v_prediction");
    text << class_name << "(num_train_timesteps=" << num_train_timesteps
         << ", beta_schedule=" << (trained_betas.empty() ? beta_schedule : "trained_betas")
         << ", beta_start=" << beta_start << ", beta_end=" << beta_end;
    if (class_name == "DDPMScheduler") text << ", variance_type=" << variance_type;
    text << ", clip_sample=" << (clip_sample ? "true" : "false") << ", prediction_type=" << prediction
         << ", timestep_spacing=" << timestep_spacing << ", steps_offset=" << steps_offset << ")";
    return text.str();
  }
};

/// Parses a `scheduler_config.json` (DDPMScheduler or DDIMScheduler; other `_class_name`s are refused by
/// name). Missing keys take the class's defaults; see DiffusersScheduler for what is refused.
inline DiffusersScheduler parse_diffusers_scheduler_config(const nlohmann::json& root,
                                                           const std::string& origin) {
  const detail::JsonConfig c(root, origin);
  DiffusersScheduler s;
  s.class_name = c.get<std::string>("_class_name", "DDPMScheduler");
  TORCH_CHECK(s.class_name == "DDPMScheduler" || s.class_name == "DDIMScheduler", origin,
              ": scheduler class '", s.class_name,
              "' is not supported; diffpost maps DDPMScheduler and DDIMScheduler onto its samplers");
  const bool ddpm = s.class_name == "DDPMScheduler";
  std::vector<std::string> known{"num_train_timesteps",
                                 "beta_start",
                                 "beta_end",
                                 "beta_schedule",
                                 "trained_betas",
                                 "clip_sample",
                                 "clip_sample_range",
                                 "prediction_type",
                                 "thresholding",
                                 "dynamic_thresholding_ratio",
                                 "sample_max_value",
                                 "timestep_spacing",
                                 "steps_offset",
                                 "rescale_betas_zero_snr"};
  known.emplace_back(ddpm ? "variance_type" : "set_alpha_to_one");
  c.check_keys(known);
  s.num_train_timesteps = c.get_int("num_train_timesteps", s.num_train_timesteps, 1, 100'000);
  s.beta_start = c.get<double>("beta_start", s.beta_start);
  s.beta_end = c.get<double>("beta_end", s.beta_end);
  s.beta_schedule = c.get<std::string>("beta_schedule", s.beta_schedule);
  if (c.has("trained_betas") && !c.is_null("trained_betas")) {
    const auto& node = c.at("trained_betas");
    TORCH_CHECK(node.is_array(), origin, ": 'trained_betas' must be a list of numbers or null");
    for (const auto& beta : node) {
      TORCH_CHECK(beta.is_number(), origin, ": 'trained_betas' must be a list of numbers, got ", beta.dump());
      s.trained_betas.push_back(beta.get<double>());
    }
    TORCH_CHECK(static_cast<int64_t>(s.trained_betas.size()) == s.num_train_timesteps ||
                    !c.has("num_train_timesteps"),
                origin, ": 'trained_betas' has ", s.trained_betas.size(),
                " entries but num_train_timesteps is ", s.num_train_timesteps);
    s.num_train_timesteps = static_cast<int64_t>(s.trained_betas.size());
    TORCH_CHECK(s.num_train_timesteps >= 1, origin, ": 'trained_betas' is empty");
  } else {
    TORCH_CHECK(s.beta_schedule == "linear" || s.beta_schedule == "scaled_linear" ||
                    s.beta_schedule == "squaredcos_cap_v2",
                origin, ": beta_schedule '", s.beta_schedule,
                "' is not supported (linear, scaled_linear, squaredcos_cap_v2, or trained_betas)");
    TORCH_CHECK(s.beta_start > 0.0 && s.beta_end > 0.0 && s.beta_start < 1.0 && s.beta_end < 1.0, origin,
                ": beta_start and beta_end must lie in (0, 1), got ", s.beta_start, " and ", s.beta_end);
  }
  if (ddpm) {
    s.variance_type = c.get<std::string>("variance_type", s.variance_type);
    TORCH_CHECK(s.variance_type == "fixed_small" || s.variance_type == "fixed_small_log" ||
                    s.variance_type == "fixed_large" || s.variance_type == "learned_range",
                origin, ": variance_type '", s.variance_type,
                "' is not supported (fixed_small, fixed_small_log, fixed_large, learned_range)");
  } else {
    s.set_alpha_to_one = c.get<bool>("set_alpha_to_one", true);
  }
  s.clip_sample = c.get<bool>("clip_sample", true);
  s.clip_sample_range = c.get<double>("clip_sample_range", 1.0);
  TORCH_CHECK(!s.clip_sample || s.clip_sample_range == 1.0, origin, ": clip_sample_range ",
              s.clip_sample_range,
              " is not supported: diffpost clips x0 to [-1, 1], the range its images live in; use 1.0 or "
              "clip_sample false");
  const auto prediction = c.get<std::string>("prediction_type", "epsilon");
  TORCH_CHECK(prediction == "epsilon" || prediction == "sample" || prediction == "v_prediction", origin,
              ": prediction_type '", prediction, "' is not supported (epsilon, sample, v_prediction)");
  s.prediction_type = prediction == "epsilon" ? DiffusersPrediction::epsilon
                                              : (prediction == "sample" ? DiffusersPrediction::sample
                                                                        : DiffusersPrediction::v_prediction);
  TORCH_CHECK(!c.get<bool>("thresholding", false), origin,
              ": thresholding (dynamic thresholding of x0) is not supported; set it to false");
  TORCH_CHECK(
      !c.get<bool>("rescale_betas_zero_snr", false), origin,
      ": rescale_betas_zero_snr is not supported (zero terminal SNR makes abar_N = 0); set it to false");
  (void)c.get<double>("dynamic_thresholding_ratio", 0.995);  // read for its type; used by thresholding only
  (void)c.get<double>("sample_max_value", 1.0);
  s.timestep_spacing = c.get<std::string>("timestep_spacing", "leading");
  TORCH_CHECK(
      s.timestep_spacing == "leading" || s.timestep_spacing == "trailing" || s.timestep_spacing == "linspace",
      origin, ": timestep_spacing '", s.timestep_spacing, "' is not supported (leading, trailing, linspace)");
  s.steps_offset = c.get_int("steps_offset", 0, 0, s.num_train_timesteps - 1);
  // The betas must make a valid schedule (each in (0, 1]).
  try {
    (void)s.training_schedule();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, origin, ": the betas do not form a schedule: ", e.what_without_backtrace());
  }
  return s;
}

/// Reads a `scheduler_config.json` file (parse_diffusers_scheduler_config).
inline DiffusersScheduler read_diffusers_scheduler(const std::filesystem::path& path) {
  return parse_diffusers_scheduler_config(detail::read_json_config(path, "scheduler config"),
                                          "'" + path.string() + "'");
}

/// Reads a UNet2DModel `config.json` file (parse_diffusers_unet_config).
inline DiffusersUNetOptions read_diffusers_unet_config(const std::filesystem::path& path) {
  return parse_diffusers_unet_config(detail::read_json_config(path, "UNet2DModel config"),
                                     "'" + path.string() + "'");
}

/// Where the parts of a diffusers folder are: the UNet's folder, its `config.json`, its weights
/// (`diffusion_pytorch_model.safetensors`, else `.bin`, as diffusers prefers), and the scheduler config if
/// the folder has one.
struct DiffusersFolder {
  std::filesystem::path unet_folder;
  std::filesystem::path config;
  std::filesystem::path weights;
  std::optional<std::filesystem::path> scheduler_config;
};

namespace detail {

inline std::optional<std::filesystem::path> diffusers_weights_in(const std::filesystem::path& folder) {
  std::error_code error;
  for (const char* name : {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"})
    if (std::filesystem::is_regular_file(folder / name, error)) return folder / name;
  return std::nullopt;
}

}  // namespace detail

/// Whether `path` is a folder diffpost reads as diffusers': a pipeline folder (`model_index.json` with a
/// `unet/` holding `config.json`) or a model folder (`config.json` and `diffusion_pytorch_model.safetensors`
/// or
/// `.bin`). For the tool's `--model PATH`: a diffusers folder loads with load_diffusers_pipeline, anything
/// else as before.
inline bool is_diffusers_folder(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::is_directory(path, error)) return false;
  if (std::filesystem::is_regular_file(path / "model_index.json", error) &&
      std::filesystem::is_regular_file(path / "unet" / "config.json", error))
    return true;
  return std::filesystem::is_regular_file(path / "config.json", error) &&
         detail::diffusers_weights_in(path).has_value();
}

/// The parts of the diffusers folder at `path` (see is_diffusers_folder). A pipeline folder's
/// `model_index.json` must name a UNet2DModel `unet` and a DDPMScheduler or DDIMScheduler `scheduler`; its
/// scheduler config is `scheduler/scheduler_config.json`. A model folder's is `scheduler_config.json` beside
/// `config.json` (as in the google/ddpm-* repositories), if there. Errors say what is missing.
inline DiffusersFolder locate_diffusers_folder(const std::filesystem::path& path) {
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_directory(path, error), "diffusers folder '", path.string(),
              "' is not a folder");
  DiffusersFolder folder;
  if (std::filesystem::is_regular_file(path / "model_index.json", error) &&
      std::filesystem::is_directory(path / "unet", error)) {
    const auto index = detail::read_json_config(path / "model_index.json", "pipeline index");
    const std::string origin = "'" + (path / "model_index.json").string() + "'";
    auto component = [&](const char* name) -> std::string {
      if (!index.contains(name)) return "";
      const auto& entry = index[name];
      TORCH_CHECK(entry.is_array() && entry.size() == 2 && entry[1].is_string(), origin, ": '", name,
                  "' must be [library, class]");
      return entry[1].get<std::string>();
    };
    const auto unet = component("unet");
    TORCH_CHECK(unet.empty() || unet == "UNet2DModel", origin, ": its unet is a ", unet,
                "; diffpost reads UNet2DModel pipelines");
    const auto scheduler = component("scheduler");
    TORCH_CHECK(scheduler.empty() || scheduler == "DDPMScheduler" || scheduler == "DDIMScheduler", origin,
                ": scheduler class '", scheduler,
                "' is not supported; diffpost maps DDPMScheduler and DDIMScheduler onto its samplers");
    folder.unet_folder = path / "unet";
    if (std::filesystem::is_regular_file(path / "scheduler" / "scheduler_config.json", error))
      folder.scheduler_config = path / "scheduler" / "scheduler_config.json";
  } else {
    folder.unet_folder = path;
    if (std::filesystem::is_regular_file(path / "scheduler_config.json", error))
      folder.scheduler_config = path / "scheduler_config.json";
  }
  folder.config = folder.unet_folder / "config.json";
  TORCH_CHECK(std::filesystem::is_regular_file(folder.config, error), "diffusers folder '", path.string(),
              "' has no ", folder.config.string());
  const auto weights = detail::diffusers_weights_in(folder.unet_folder);
  TORCH_CHECK(
      weights.has_value(), "diffusers folder '", path.string(), "': '", folder.unet_folder.string(),
      "' holds neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.bin",
      std::filesystem::exists(folder.unet_folder / "diffusion_pytorch_model.safetensors.index.json", error)
          ? " (sharded weights are not supported)"
          : "");
  folder.weights = *weights;
  return folder;
}

/// Renames the attention parameters of early diffusers checkpoints (`query`, `key`, `value`, `proj_attn`,
/// still in google/ddpm-cifar10-32) to today's (`to_q`, `to_k`, `to_v`, `to_out.0`), as diffusers'
/// `_fix_state_dict_keys_on_load` does for its attention blocks; other keys are kept.
inline StateDict rename_deprecated_attention_keys(const StateDict& state) {
  static const std::regex old_name(R"(^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$)");
  StateDict renamed(state.origin());
  for (const auto& [name, tensor] : state) {
    std::smatch match;
    if (!std::regex_match(name, match, old_name)) {
      renamed.insert(name, tensor);
      continue;
    }
    const std::string part = match[2].str();
    const std::string now =
        part == "query" ? "to_q" : (part == "key" ? "to_k" : (part == "value" ? "to_v" : "to_out.0"));
    renamed.insert(match[1].str() + "." + now + "." + match[3].str(), tensor);
  }
  return renamed;
}

/// How load_diffusers_unet / load_diffusers_pipeline place the model: device (default CPU) and the dtype of
/// its parameters (default float32, as diffusers loads).
struct DiffusersLoadOptions {
  TORCH_ARG(torch::Device, device) = torch::kCPU;
  TORCH_ARG(torch::ScalarType, dtype) = torch::kFloat32;
};

/// A diffusers folder loaded for diffpost: the UNet (a ScoreModel giving eps), its scheduler (DDPMScheduler
/// defaults when the folder has none) and what it was read from.
struct DiffusersPipeline {
  DiffusersUNet unet{nullptr};
  DiffusersScheduler scheduler;
  DiffusersFolder folder;
  bool scheduler_from_file = false;

  /// [C, H, W] of the images the model was trained on (`in_channels`, `sample_size`); H and W are 0 when the
  /// config has no sample_size.
  [[nodiscard]] Shape image_shape() const {
    const auto& o = unet->options();
    const auto& size = o.sample_size();
    const int64_t height = size.empty() ? 0 : size[0];
    const int64_t width = size.empty() ? 0 : size.back();
    return {o.in_channels(), height, width};
  }

  /// A few lines for logs and `describe`: the folder, the weights file, the UNet options, the scheduler.
  [[nodiscard]] std::string describe() const {
    std::ostringstream text;
    text << "diffusers UNet2DModel from " << folder.weights.string() << "\n  " << unet->options() << "\n  "
         << scheduler.describe()
         << (scheduler_from_file ? "" : " (defaults: the folder has no scheduler config)");
    return text.str();
  }
};

/// Loads the diffusers folder at `path` (pipeline or model folder, see is_diffusers_folder): builds the
/// UNet2DModel of its `config.json`, loads its weights strictly from `diffusion_pytorch_model.safetensors`
/// (or the `.bin`, a torch.save of the state dict) with the old attention names renamed, reads the scheduler
/// (DDPMScheduler defaults without one), checks that they agree (a `learned_range` scheduler needs
/// out_channels = 2 * in_channels), sets the model's prediction type from the scheduler so that `unet(x, t)`
/// gives eps, and puts the model in eval mode on `options.device()` in `options.dtype()`.
inline DiffusersPipeline load_diffusers_pipeline(const std::filesystem::path& path,
                                                 const DiffusersLoadOptions& options = {}) {
  DiffusersPipeline pipeline;
  pipeline.folder = locate_diffusers_folder(path);
  const auto unet_options = read_diffusers_unet_config(pipeline.folder.config);
  if (pipeline.folder.scheduler_config) {
    pipeline.scheduler = read_diffusers_scheduler(*pipeline.folder.scheduler_config);
    pipeline.scheduler_from_file = true;
  }
  const auto& s = pipeline.scheduler;
  const bool variance_channels = unet_options.out_channels() == 2 * unet_options.in_channels();
  TORCH_CHECK(
      !s.needs_variance_channels() || variance_channels, "diffusers folder '", path.string(),
      "': the scheduler's variance_type learned_range needs a model with out_channels = 2 * in_channels (",
      2 * unet_options.in_channels(), "), but config.json has out_channels ", unet_options.out_channels());
  TORCH_CHECK(variance_channels || unet_options.out_channels() == unet_options.in_channels(),
              "diffusers folder '", path.string(), "': out_channels ", unet_options.out_channels(),
              " is neither in_channels (", unet_options.in_channels(),
              ") nor twice it; a score model outputs eps, or eps and variance");
  pipeline.unet = DiffusersUNet(unet_options);
  load_state_dict(*pipeline.unet, rename_deprecated_attention_keys(read_state_dict(pipeline.folder.weights)));
  pipeline.unet->set_prediction(s.prediction_type, s.prediction_type == DiffusersPrediction::epsilon
                                                       ? std::vector<double>{}
                                                       : s.training_schedule().alphas_cumprod());
  pipeline.unet->eval();
  pipeline.unet->to(options.device(), options.dtype());
  return pipeline;
}

/// The UNet of the diffusers folder at `path` (load_diffusers_pipeline(path, options).unet):
/// `unet->forward(x, t)` returns what diffusers' `UNet2DModel(x, t).sample` returns, `unet(x, t)` eps for
/// diffpost's samplers.
inline DiffusersUNet load_diffusers_unet(const std::filesystem::path& path,
                                         const DiffusersLoadOptions& options = {}) {
  return load_diffusers_pipeline(path, options).unet;
}

}  // namespace diffpost
