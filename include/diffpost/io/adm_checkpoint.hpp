// Loading published ADM UNet checkpoints (`ffhq_10m.pt`, `256x256_diffusion_uncond.pt`) into an AdmUNet, with
// errors that say which configuration the file was made for. The reference
// (DPS2022/diffusion-posterior-sampling, guided_diffusion/unet.py, create_model) loads with `load_state_dict`
// and, on any failure, prints "Randomly initialize" and samples noise; here a mismatch is an error naming the
// first mismatching key and shapes, the configuration read off the file's shapes, and the configuration of
// the model it was loaded into.
#pragma once

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace diffpost {

/// What the tensor shapes of an ADM UNet state dict reveal about its configuration. `options` carries
/// everything the shapes determine; `image_size` is a guess (the reference default channel_mult that matches,
/// else 0 and `options.image_size()` is the smallest size the levels allow), and attention heads, the
/// attention order and dropout are not recorded in the weights at all, so they keep their defaults.
struct AdmStateDictSummary {
  AdmUNetOptions options{0, 0, 0};
  std::vector<int64_t> attention_downsample_rates;  ///< downsample rates whose blocks hold attention
  bool image_size_known = false;                    ///< whether image_size came from a default channel_mult
};

/// Reads the configuration off the shapes of an ADM UNet state dict: num_channels from `time_embed.0.weight`,
/// in_channels from `input_blocks.0.0.weight`, out channels (hence learn_sigma) from `out.2.weight`, the
/// levels from the upsampling layers of the output blocks, channel_mult from their widths, num_res_blocks
/// from the number of output blocks per level, attention from the `qkv` entries, scale-shift from the width
/// of `emb_layers.1`, resblock_updown from whether the resampling layers are residual blocks, num_classes
/// from `label_emb`. Returns nullopt when the state dict is not laid out like an ADM UNet.
inline std::optional<AdmStateDictSummary> summarize_adm_state_dict(const StateDict& state) {
  const auto* time_embed = state.find("time_embed.0.weight");
  const auto* first_conv = state.find("input_blocks.0.0.weight");
  const auto* out_conv = state.find("out.2.weight");
  const auto* middle = state.find("middle_block.0.emb_layers.1.weight");
  const auto* middle_conv = state.find("middle_block.0.in_layers.2.weight");
  if (!time_embed || !first_conv || !out_conv || !middle || !middle_conv || time_embed->dim() != 2 ||
      first_conv->dim() != 4 || out_conv->dim() != 4 || middle->dim() != 2 || middle_conv->dim() != 4)
    return std::nullopt;
  const int64_t model_channels = time_embed->size(1);
  const int64_t in_channels = first_conv->size(1);
  const int64_t out_channels = out_conv->size(0);
  if (model_channels <= 0) return std::nullopt;

  // Layers of each output block: which kinds sit at which index.
  std::map<int64_t, std::map<int64_t, std::string>> output_layers;
  for (const auto& [name, tensor] : state) {
    constexpr std::string_view prefix = "output_blocks.";
    if (name.rfind(prefix, 0) != 0) continue;
    std::stringstream rest(name.substr(prefix.size()));
    int64_t block = 0, layer = 0;
    char dot1 = 0, dot2 = 0;
    std::string field;
    if (!(rest >> block >> dot1 >> layer >> dot2) || dot1 != '.' || dot2 != '.') continue;
    std::getline(rest, field);
    auto& kind = output_layers[block][layer];
    if (field == "in_layers.2.weight") kind = "resblock";
    if (field == "qkv.weight") kind = "attention";
    if (field == "conv.weight") kind = "upsample";
  }
  if (output_layers.empty()) return std::nullopt;

  // Output blocks run from the deepest level to level 0; a level ends with the block holding the upsampler.
  std::vector<std::vector<int64_t>> levels(1);  // output block indices per level, deepest first
  bool resblock_updown = false;
  std::vector<bool> block_has_attention;
  for (const auto& [block, layers] : output_layers) {
    if (block != static_cast<int64_t>(block_has_attention.size())) return std::nullopt;  // gaps
    levels.back().push_back(block);
    bool attention = false, upsampler = false;
    for (const auto& [index, kind] : layers) {
      if (kind == "attention") attention = true;
      if (index > 0 && (kind == "upsample" || kind == "resblock")) {
        upsampler = true;
        resblock_updown = kind == "resblock";
      }
    }
    block_has_attention.push_back(attention);
    if (upsampler) levels.emplace_back();
  }
  const auto level_count = static_cast<int64_t>(levels.size());
  const auto blocks_per_level = static_cast<int64_t>(levels.front().size());
  if (blocks_per_level < 2) return std::nullopt;
  for (const auto& level : levels)
    if (static_cast<int64_t>(level.size()) != blocks_per_level) return std::nullopt;

  std::vector<int64_t> mult(level_count);
  std::vector<int64_t> rates;
  for (int64_t l = 0; l < level_count; ++l) {
    const int64_t first_block = levels[l].front();
    const auto* conv = state.find("output_blocks." + std::to_string(first_block) + ".0.in_layers.2.weight");
    if (!conv || conv->size(0) % model_channels != 0) return std::nullopt;
    const int64_t level = level_count - 1 - l;  // 0 = full resolution
    mult[level] = conv->size(0) / model_channels;
    if (block_has_attention[first_block]) rates.insert(rates.begin(), int64_t{1} << level);
  }

  AdmStateDictSummary summary;
  int64_t image_size = int64_t{1} << (level_count - 1);
  for (const auto& [size, default_mult] : AdmUNetOptions::default_channel_mults()) {
    if (default_mult == mult) {
      image_size = size;
      summary.image_size_known = true;
    }
  }
  std::vector<int64_t> resolutions;
  resolutions.reserve(rates.size());
  for (int64_t rate : rates) resolutions.push_back(image_size / rate);
  const auto* label_emb = state.find("label_emb.weight");
  summary.options = AdmUNetOptions(image_size, model_channels, blocks_per_level - 1)
                        .in_channels(in_channels)
                        .channel_mult(mult)
                        .attention_resolutions(resolutions)
                        .learn_sigma(out_channels == 2 * in_channels)
                        .use_scale_shift_norm(middle->size(0) == 2 * middle_conv->size(0))
                        .resblock_updown(resblock_updown)
                        .num_classes(label_emb ? label_emb->size(0) : 0);
  summary.attention_downsample_rates = rates;
  return summary;
}

/// Whether `state` has exactly the keys and shapes of an AdmUNet built with `options`.
inline bool adm_state_dict_matches(const StateDict& state, const AdmUNetOptions& options) {
  const auto expected = adm_state_dict_shapes(options);
  if (expected.size() != state.size()) return false;
  return std::ranges::all_of(expected, [&](const auto& entry) {
    const auto* tensor = state.find(entry.first);
    return tensor != nullptr && tensor->sizes().vec() == entry.second;
  });
}

/// One paragraph describing the configuration an ADM UNet state dict was made for, in the words of the
/// reference config files (num_channels, num_res_blocks, channel_mult, attention_resolutions, learn_sigma,
/// ...), naming the preset it matches exactly if any; used in load errors so that a user who pairs ImageNet
/// weights with the FFHQ config learns which config the file needs. Says so when the file does not look like
/// an ADM UNet.
inline std::string describe_adm_state_dict(const StateDict& state) {
  const auto summary = summarize_adm_state_dict(state);
  if (!summary) {
    std::ostringstream text;
    text << "The file does not look like an ADM UNet state dict (expected time_embed.0.weight, "
            "input_blocks.0.0.weight, middle_block.*, output_blocks.* and out.2.weight); its first keys:";
    size_t shown = 0;
    for (const auto& [name, tensor] : state) {
      if (shown++ == 5) break;
      text << " " << name << " " << tensor.sizes();
    }
    return text.str();
  }
  const auto& o = summary->options;
  std::ostringstream text;
  text << "The file looks like an ADM UNet with num_channels=" << adm_option_text(o.num_channels())
       << ", num_res_blocks=" << adm_option_text(o.num_res_blocks())
       << ", channel_mult=" << adm_option_text(o.channel_mult()) << ", attention at downsample rates "
       << fmt::format("{}", fmt::join(summary->attention_downsample_rates, ","));
  if (summary->image_size_known) {
    text << " (attention_resolutions=" << adm_option_text(o.attention_resolutions()) << " for image_size "
         << o.image_size() << ")";
  }
  text << ", learn_sigma=" << adm_option_text(o.learn_sigma()) << " (" << o.out_channels()
       << " output channels for in_channels=" << o.in_channels()
       << "), use_scale_shift_norm=" << adm_option_text(o.use_scale_shift_norm())
       << ", resblock_updown=" << adm_option_text(o.resblock_updown()) << ", "
       << (o.num_classes() > 0 ? "class-conditional with num_classes=" + adm_option_text(o.num_classes())
                               : std::string("unconditional"));
  const std::vector<std::pair<const char*, AdmUNetOptions>> presets{
      {"AdmUNetOptions::ffhq256()", AdmUNetOptions::ffhq256()},
      {"AdmUNetOptions::imagenet256_uncond()", AdmUNetOptions::imagenet256_uncond()}};
  bool matched = false;
  for (const auto& [name, preset] : presets) {
    if (adm_state_dict_matches(state, preset)) {
      text << "; it matches the preset " << name;
      matched = true;
    }
  }
  if (!matched) text << "; it matches no diffpost preset";
  text << ". Attention heads and the attention order are not recorded in the weights.";
  return text.str();
}

/// Loads `state` into `model` like `load_state_dict(torch::nn::Module&, ...)`, and on a mismatch appends to
/// the error the configuration read off the weights (describe_adm_state_dict) and the one the model was built
/// with, e.g. "'input_blocks.0.0.weight' has shape [256, 3, 3, 3] in the file but [128, 3, 3, 3] in the
/// model ... The file looks like an ADM UNet with num_channels=256 ...; it matches the preset
/// AdmUNetOptions::imagenet256_uncond(). The model was built with AdmUNetOptions(image_size=256, ...)".
inline LoadReport load_state_dict(AdmUNet& model, const StateDict& state, LoadOptions options = {}) {
  const auto user_describer = options.describe_file();
  const AdmUNetOptions built_with = model->options();
  options.describe_file([user_describer, built_with](const StateDict& file_state) {
    std::ostringstream text;
    text << describe_adm_state_dict(file_state) << "\nThe model was built with " << built_with << ".";
    if (user_describer) text << "\n" << user_describer(file_state);
    return text.str();
  });
  return load_state_dict(*model, state, options);
}

/// Reads the checkpoint at `path` and loads it into `model`: `load_state_dict(model, read_state_dict(path,
/// read_options), options)`, with the ADM description of a mismatch.
inline LoadReport load_checkpoint(AdmUNet& model, const std::filesystem::path& path, LoadOptions options = {},
                                  const ReadOptions& read_options = {}) {
  return load_state_dict(model, read_state_dict(path, read_options), std::move(options));
}

}  // namespace diffpost
