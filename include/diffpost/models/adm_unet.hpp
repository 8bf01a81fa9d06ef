// The ADM UNet of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (2021), as published in
// openai/guided-diffusion and used by DPS (Chung et al. 2023) for its FFHQ and ImageNet priors.
//
// The module tree is built so that `named_parameters()` equals the reference `state_dict()` key for key and
// shape for shape (`time_embed.0.weight`, `input_blocks.3.0.in_layers.2.weight`, `out.2.bias`, ...):
// published checkpoints load without any renaming. The numerics follow the reference: GroupNorm with 32
// groups computed in float32, SiLU, FiLM-style scale-shift conditioning, multi-head self-attention with q and
// k each scaled by ch^-1/4 and the softmax in float32, and a sinusoidal timestep embedding with the cosines
// first. Two run-time choices of the reference's are options here, off by default: mixed precision
// (guided-diffusion's `use_fp16`: the blocks' convolutions in bfloat16 or float16, `set_compute_dtype`) and
// gradient checkpointing of the blocks (`use_checkpoint`, `set_gradient_checkpointing`), which trades a
// second forward pass of each block in the backward pass for the memory of its activations. The reference
// hard-wires checkpointing on for its attention blocks, which costs time and changes no number; diffpost does
// not.
#pragma once

#include <torch/torch.h>

#include <diffpost/detail/constant_cache.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/ostream.h>
#include <fmt/ranges.h>

namespace diffpost {

/// Hyper-parameters of an ADM UNet, named after the arguments of the reference `create_model`
/// (guided-diffusion `script_util.py`), with its defaults. `image_size`, `num_channels` and `num_res_blocks`
/// have no default there and are constructor arguments here. Differences from the reference: `in_channels` is
/// configurable (the reference hard-codes 3 colour channels), `attention_resolutions` is a list of
/// feature-map sizes (the reference's comma string), `num_classes` replaces `class_cond` (0 means
/// unconditional, the reference's class-conditional models use 1000), and `use_checkpoint` and `use_fp16`
/// are run-time choices of the built model (`AdmUNetImpl::set_gradient_checkpointing`,
/// `AdmUNetImpl::set_compute_dtype`), since they change how it runs, not what it is. Use the presets
/// `ffhq256()` and `imagenet256_uncond()` for the published DPS priors; `validate()` checks the combination.
struct AdmUNetOptions {
  /// Options for a UNet on `image_size` x `image_size` images with `num_channels` base channels and
  /// `num_res_blocks` residual blocks per resolution level.
  AdmUNetOptions(int64_t image_size, int64_t num_channels, int64_t num_res_blocks)
      : image_size_(image_size), num_channels_(num_channels), num_res_blocks_(num_res_blocks) {}

  /// Side length of the (square) training images; the input H and W must be divisible by 2^(levels-1).
  TORCH_ARG(int64_t, image_size);
  /// Image channels of x_t (the reference hard-codes 3).
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Channels of the raw output when given (CompVis ldm's `out_channels`, e.g. a latent UNet whose output
  /// differs from its input); -1 derives them as guided-diffusion does (see out_channels()). Config key
  /// `out_channels`.
  TORCH_ARG(int64_t, explicit_out_channels) = -1;
  /// Base channel count (`model_channels` in UNetModel); the timestep embedding has 4x this width.
  TORCH_ARG(int64_t, num_channels);
  /// Residual blocks per resolution level on the way down (one more on the way up).
  TORCH_ARG(int64_t, num_res_blocks);
  /// Channel multiplier per resolution level; empty selects the reference default for `image_size`
  /// (256: 1,1,2,2,4,4; 128: 1,1,2,3,4; 64: 1,2,3,4).
  TORCH_ARG(std::vector<int64_t>, channel_mult) = {};
  /// Feature-map sizes at which self-attention follows each residual block, e.g. {32, 16, 8}; the reference
  /// converts them to downsample rates image_size / resolution.
  TORCH_ARG(std::vector<int64_t>, attention_resolutions) = {16};
  /// Attention heads when `num_head_channels` is -1.
  TORCH_ARG(int64_t, num_heads) = 1;
  /// Channels per attention head; when not -1 it overrides `num_heads` (heads = channels /
  /// num_head_channels).
  TORCH_ARG(int64_t, num_head_channels) = -1;
  /// Attention heads in the upsampling path when `num_head_channels` is -1; -1 means `num_heads`.
  TORCH_ARG(int64_t, num_heads_upsample) = -1;
  /// FiLM conditioning `GN(h) * (1 + scale) + shift` instead of adding the embedding before the norm.
  TORCH_ARG(bool, use_scale_shift_norm) = false;
  /// Residual blocks with built-in average-pool / nearest-upsample instead of strided / plain convolutions.
  TORCH_ARG(bool, resblock_updown) = false;
  /// Output 2 * in_channels channels: eps, then the `learned_range` variance interpolation v.
  TORCH_ARG(bool, learn_sigma) = false;
  /// Dropout rate inside the residual blocks (active in training mode only).
  TORCH_ARG(double, dropout) = 0.0;
  /// Split q, k, v before the heads (QKVAttention) instead of the legacy heads-first order.
  TORCH_ARG(bool, use_new_attention_order) = false;
  /// Number of classes of a class-conditional model (the reference's class_cond uses 1000); 0 =
  /// unconditional.
  TORCH_ARG(int64_t, num_classes) = 0;

 public:
  /// The DPS FFHQ 256x256 prior (`ffhq_10m.pt`, 93.56 M parameters; DPS configs/model_config.yaml).
  static AdmUNetOptions ffhq256() {
    return AdmUNetOptions(256, 128, 1)
        .attention_resolutions({16})
        .num_heads(4)
        .num_head_channels(64)
        .learn_sigma(true)
        .use_scale_shift_norm(true)
        .resblock_updown(true);
  }

  /// The guided-diffusion ImageNet 256x256 unconditional prior (`256x256_diffusion_uncond.pt`, 552.8 M
  /// parameters).
  static AdmUNetOptions imagenet256_uncond() {
    return AdmUNetOptions(256, 256, 2)
        .attention_resolutions({32, 16, 8})
        .num_heads(4)
        .num_head_channels(64)
        .learn_sigma(true)
        .use_scale_shift_norm(true)
        .resblock_updown(true);
  }

  /// Channels of the raw output: `explicit_out_channels` when given, else in_channels, or twice that when the
  /// model learns its variance.
  [[nodiscard]] int64_t out_channels() const {
    if (explicit_out_channels_ != -1) return explicit_out_channels_;
    return learn_sigma_ ? 2 * in_channels_ : in_channels_;
  }

  /// The reference's default channel_mult per image size (guided-diffusion `create_model`), for an empty
  /// `channel_mult`: 256: 1,1,2,2,4,4; 128: 1,1,2,3,4; 64: 1,2,3,4.
  static const std::vector<std::pair<int64_t, std::vector<int64_t>>>& default_channel_mults() {
    static const std::vector<std::pair<int64_t, std::vector<int64_t>>> defaults{
        {256, {1, 1, 2, 2, 4, 4}}, {128, {1, 1, 2, 3, 4}}, {64, {1, 2, 3, 4}}};
    return defaults;
  }

  /// `channel_mult`, or the reference default for `image_size` when it is empty.
  [[nodiscard]] std::vector<int64_t> resolved_channel_mult() const {
    if (!channel_mult_.empty()) return channel_mult_;
    for (const auto& [size, mult] : default_channel_mults())
      if (size == image_size_) return mult;
    TORCH_CHECK(image_size_ != 512,
                "AdmUNetOptions: the reference default channel_mult for image_size 512 is "
                "(0.5,1,1,2,2,4,4), whose half multiplier is not supported; set channel_mult "
                "explicitly");
    TORCH_CHECK(
        false, "AdmUNetOptions: no default channel_mult for image_size ", image_size_,
        " (defaults exist for 64, 128 and 256); set channel_mult explicitly, e.g. .channel_mult({1, 2, 2})");
  }

  /// Attention downsample rates image_size / resolution, as the reference `create_model` computes them.
  [[nodiscard]] std::vector<int64_t> attention_downsample_rates() const {
    std::vector<int64_t> rates;
    for (int64_t resolution : attention_resolutions_) {
      TORCH_CHECK(resolution > 0 && image_size_ % resolution == 0, "AdmUNetOptions: attention resolution ",
                  resolution, " does not divide image_size ", image_size_,
                  "; give feature-map sizes such as 16 for attention at 16x16");
      rates.push_back(image_size_ / resolution);
    }
    return rates;
  }

  /// Attention heads of a block with `channels` channels; `upsample` selects `num_heads_upsample`.
  [[nodiscard]] int64_t heads_for(int64_t channels, bool upsample) const {
    if (num_head_channels_ != -1) return channels / num_head_channels_;
    return (upsample && num_heads_upsample_ != -1) ? num_heads_upsample_ : num_heads_;
  }

  /// Throws c10::Error naming the first inconsistent option: sizes that do not halve down to the last level,
  /// widths not divisible into 32 normalisation groups, attention widths not divisible into heads, attention
  /// at a resolution the UNet never reaches.
  void validate() const {
    TORCH_CHECK(image_size_ > 0, "AdmUNetOptions: image_size must be positive, got ", image_size_);
    TORCH_CHECK(in_channels_ > 0, "AdmUNetOptions: in_channels must be positive, got ", in_channels_);
    TORCH_CHECK(num_channels_ > 0, "AdmUNetOptions: num_channels must be positive, got ", num_channels_);
    TORCH_CHECK(explicit_out_channels_ == -1 || explicit_out_channels_ > 0,
                "AdmUNetOptions: explicit_out_channels (out_channels) must be -1 (derived) or positive, got ",
                explicit_out_channels_);
    TORCH_CHECK(!learn_sigma_ || explicit_out_channels_ == -1 || explicit_out_channels_ == 2 * in_channels_,
                "AdmUNetOptions: learn_sigma needs 2 * in_channels = ", 2 * in_channels_,
                " output channels (eps and the variance interpolation), but explicit_out_channels is ",
                explicit_out_channels_, "; drop out_channels or set learn_sigma false");
    TORCH_CHECK(num_res_blocks_ > 0, "AdmUNetOptions: num_res_blocks must be positive, got ",
                num_res_blocks_);
    TORCH_CHECK(dropout_ >= 0.0 && dropout_ < 1.0, "AdmUNetOptions: dropout must be in [0, 1), got ",
                dropout_);
    TORCH_CHECK(num_classes_ >= 0, "AdmUNetOptions: num_classes must be >= 0 (0 = unconditional), got ",
                num_classes_);
    const auto mult = resolved_channel_mult();
    const auto levels = static_cast<int64_t>(mult.size());
    TORCH_CHECK(levels <= 32, "AdmUNetOptions: channel_mult has ", levels,
                " levels; at most 32 are supported");
    const int64_t coarsest_factor = int64_t{1} << (levels - 1);
    TORCH_CHECK(image_size_ % coarsest_factor == 0, "AdmUNetOptions: image_size ", image_size_,
                " is not divisible by 2^(levels-1) = ", coarsest_factor, " for ", levels,
                " channel_mult levels; use fewer levels or a multiple of ", coarsest_factor);
    for (int64_t m : mult) {
      TORCH_CHECK(m > 0, "AdmUNetOptions: channel_mult entries must be positive, got ", m);
      TORCH_CHECK(m <= std::numeric_limits<int64_t>::max() / num_channels_, "AdmUNetOptions: level width ", m,
                  " * num_channels ", num_channels_, " overflows int64");
      TORCH_CHECK((m * num_channels_) % 32 == 0, "AdmUNetOptions: level width ", m, " * num_channels ",
                  num_channels_, " = ", m * num_channels_,
                  " is not divisible by the 32 GroupNorm groups; use num_channels a multiple of 32");
    }
    TORCH_CHECK(num_head_channels_ == -1 || num_head_channels_ > 0,
                "AdmUNetOptions: num_head_channels must be -1 (use num_heads) or positive, got ",
                num_head_channels_);
    TORCH_CHECK(num_head_channels_ != -1 || num_heads_ > 0,
                "AdmUNetOptions: num_heads must be positive when num_head_channels is -1, got ", num_heads_);
    TORCH_CHECK(num_heads_upsample_ == -1 || num_heads_upsample_ > 0,
                "AdmUNetOptions: num_heads_upsample must be -1 (same as num_heads) or positive, got ",
                num_heads_upsample_);
    auto check_heads = [&](int64_t channels, bool upsample) {
      if (num_head_channels_ != -1) {
        TORCH_CHECK(channels % num_head_channels_ == 0, "AdmUNetOptions: attention width ", channels,
                    " is not divisible by num_head_channels ", num_head_channels_);
      } else {
        const int64_t heads = heads_for(channels, upsample);
        TORCH_CHECK(channels % heads == 0, "AdmUNetOptions: attention width ", channels,
                    " is not divisible by ", heads, upsample ? " num_heads_upsample" : " num_heads");
      }
    };
    const auto rates = attention_downsample_rates();
    for (size_t r = 0; r < rates.size(); ++r) {
      bool reached = false;
      for (int64_t level = 0; level < levels; ++level) {
        if ((int64_t{1} << level) != rates[r]) continue;
        reached = true;
        check_heads(mult[level] * num_channels_, false);
        check_heads(mult[level] * num_channels_, true);
      }
      TORCH_CHECK(reached, "AdmUNetOptions: attention resolution ", attention_resolutions_[r],
                  " is never reached: the feature maps are ", image_size_, " down to ",
                  image_size_ / coarsest_factor, " in ", levels, " halvings");
    }
    check_heads(mult.back() * num_channels_, false);  // the middle block always has attention
  }
};

/// One field of AdmUNetOptions as a configuration file names it, with the integers a file may give it: what a
/// network diffpost can build and run may use (the reference models use image_size 64 to 512, num_channels
/// 128 to 256, num_res_blocks 1 to 3), so that `num_channels: 4000000000` is a range error naming the key,
/// not a failed multi-terabyte allocation. For lists the range holds per entry; `unset_allowed` admits -1,
/// the reference's "not given"; `required` fields are the constructor arguments.
struct AdmOptionField {
  const char* name = nullptr;
  int64_t min = 0;
  int64_t max = 0;
  bool unset_allowed = false;
  bool required = false;
};

/// Calls `visit(field, value)` for every field of `options` (an AdmUNetOptions, const or not; `value` is a
/// reference to the member: int64_t, bool, double or std::vector<int64_t>), in the order `operator<<`
/// prints them. The one list of fields behind printing, reading configuration files (`io/model_config.hpp`)
/// and writing them.
template <class Options, class Visitor>
requires std::same_as<std::remove_const_t<Options>, AdmUNetOptions>
void for_each_adm_option(Options& options, Visitor&& visit) {
  visit(AdmOptionField{.name = "image_size", .min = 1, .max = 4096, .required = true}, options.image_size());
  visit(AdmOptionField{.name = "in_channels", .min = 1, .max = 64}, options.in_channels());
  visit(AdmOptionField{.name = "out_channels", .min = 1, .max = 128, .unset_allowed = true},
        options.explicit_out_channels());
  visit(AdmOptionField{.name = "num_channels", .min = 1, .max = 4096, .required = true},
        options.num_channels());
  visit(AdmOptionField{.name = "num_res_blocks", .min = 1, .max = 16, .required = true},
        options.num_res_blocks());
  visit(AdmOptionField{.name = "channel_mult", .min = 1, .max = 64}, options.channel_mult());
  visit(AdmOptionField{.name = "attention_resolutions", .min = 1, .max = 4096},
        options.attention_resolutions());
  visit(AdmOptionField{.name = "num_heads", .min = 1, .max = 1024}, options.num_heads());
  visit(AdmOptionField{.name = "num_head_channels", .min = 1, .max = 4096, .unset_allowed = true},
        options.num_head_channels());
  visit(AdmOptionField{.name = "num_heads_upsample", .min = 1, .max = 1024, .unset_allowed = true},
        options.num_heads_upsample());
  visit(AdmOptionField{.name = "use_scale_shift_norm"}, options.use_scale_shift_norm());
  visit(AdmOptionField{.name = "resblock_updown"}, options.resblock_updown());
  visit(AdmOptionField{.name = "learn_sigma"}, options.learn_sigma());
  visit(AdmOptionField{.name = "dropout"}, options.dropout());
  visit(AdmOptionField{.name = "use_new_attention_order"}, options.use_new_attention_order());
  visit(AdmOptionField{.name = "num_classes", .min = 0, .max = 1'000'000}, options.num_classes());
}

/// An option value as configuration files and messages write it: integers and numbers as such, true / false,
/// lists as a quoted comma string ("1,1,2,2,4,4"), as in the reference's config files.
inline std::string adm_option_text(int64_t value) {
  return std::to_string(value);
}
inline std::string adm_option_text(bool value) {
  return value ? "true" : "false";
}
inline std::string adm_option_text(double value) {
  std::ostringstream text;
  text << value;
  return text.str();
}
inline std::string adm_option_text(const std::vector<int64_t>& values) {
  return fmt::format("\"{}\"", fmt::join(values, ","));
}

/// Prints the options as `AdmUNetOptions(image_size=256, in_channels=3, out_channels=6, ...)`, one field per
/// argument (for_each_adm_option), out_channels with its effective value, for logs and error messages.
inline std::ostream& operator<<(std::ostream& os, const AdmUNetOptions& o) {
  os << "AdmUNetOptions(";
  const char* separator = "";
  for_each_adm_option(o, [&](const AdmOptionField& field, const auto& value) {
    os << separator << field.name << "=";
    // out_channels prints its effective value, also when derived (-1)
    if (std::string_view(field.name) == "out_channels")
      os << o.out_channels();
    else
      os << adm_option_text(value);
    separator = ", ";
  });
  return os << ")";
}

/// Building blocks of the ADM UNet, exposed for tests and for models that reuse them. Each registers its
/// submodules under the reference names.
namespace adm {

/// The frequencies of the sinusoidal timestep embedding, f_i = exp(-ln(max_period) i / half) for i < half,
/// float32 on the CPU, computed in the reference's operation order so that float32 rounding matches.
inline torch::Tensor timestep_frequencies(int64_t half, double max_period = 10000.0) {
  return torch::exp(-std::log(max_period) *
                    torch::arange(0, half, torch::TensorOptions().dtype(torch::kFloat32)) / half);
}

/// Sinusoidal timestep embedding [B, dim] of timesteps [B] from frequencies `freqs` [dim / 2] (float32, on
/// the timesteps' device; `timestep_frequencies`): cos(t f_i) then sin(t f_i), in float32. Odd dim gets a
/// zero column.
inline torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim,
                                        const torch::Tensor& freqs) {
  TORCH_CHECK(timesteps.dim() == 1, "timestep_embedding: timesteps must be 1-D [B], got shape ",
              timesteps.sizes());
  TORCH_CHECK(freqs.dim() == 1 && freqs.size(0) == dim / 2, "timestep_embedding: expected ", dim / 2,
              " frequencies for dim ", dim, ", got shape ", freqs.sizes());
  auto args = timesteps.unsqueeze(1).to(torch::kFloat32) * freqs.unsqueeze(0);
  auto embedding = torch::cat({torch::cos(args), torch::sin(args)}, -1);
  if (dim % 2) embedding = torch::cat({embedding, torch::zeros_like(embedding.narrow(1, 0, 1))}, -1);
  return embedding;
}

/// Sinusoidal timestep embedding [B, dim] of integer (or fractional) timesteps [B]: cos(t f_i) then sin(t
/// f_i), with f_i = exp(-ln(10000) i / half), i < half = dim / 2, computed in float32 (guided-diffusion
/// nn.py; the transformer position encoding of Vaswani et al. 2017 sec. 3.5 with the halves swapped). Odd dim
/// gets a zero column. The frequencies are computed on the CPU and copied to the timesteps' device on every
/// call, as the reference does; AdmUNet keeps them on its device instead.
inline torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim,
                                        double max_period = 10000.0) {
  return timestep_embedding(timesteps, dim, timestep_frequencies(dim / 2, max_period).to(timesteps.device()));
}

/// The attention products for q, k, v [B * heads, ch, T] (already scaled): weight[b, t, s] = softmax_s(sum_c
/// q[b, c, t] k[b, c, s]) with the softmax in float32, and a[b, c, t] = sum_s weight[b, t, s] v[b, c, s]
/// (guided-diffusion `QKVAttentionLegacy` after its head split), with two bmm calls.
inline torch::Tensor attend_by_bmm(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  auto weight = torch::bmm(q.transpose(1, 2), k);
  weight = torch::softmax(weight.to(torch::kFloat32), -1).to(weight.scalar_type());
  return torch::bmm(v, weight.transpose(1, 2));
}

/// The same products as `attend_by_bmm`, as two grouped 1x1 convolutions with one group per head. The logits
/// come out transposed, logits[b, s, t] = sum_c k[b, c, s] q[b, c, t] (q is the input, k the kernel), so the
/// softmax runs over dim 1 and leaves the weights in the input layout of the second product, a[b, c, t] =
/// sum_s v[b, c, s] weight[b, s, t] (the weights are the input, v the kernel). The softmax runs in the
/// input's dtype; `attend` uses this path for float32 only, where it equals the reference's float32 softmax.
inline torch::Tensor attend_by_convolution(const torch::Tensor& q, const torch::Tensor& k,
                                           const torch::Tensor& v) {
  namespace F = torch::nn::functional;
  const auto heads = q.size(0), ch = q.size(1), length = q.size(2);
  const auto per_head = F::Conv1dFuncOptions().groups(heads);
  auto logits = F::conv1d(q.reshape({1, heads * ch, length}),
                          k.transpose(1, 2).reshape({heads * length, ch, 1}), per_head);
  auto weight = torch::softmax(logits.view({heads, length, length}), 1);
  return F::conv1d(weight.view({1, heads * length, length}), v.reshape({heads * ch, length, 1}), per_head)
      .view({heads, ch, length});
}

/// The attention products, by convolution for float32 CPU tensors when LibTorch has oneDNN, else by bmm.
/// Debian's LibTorch sends float32 bmm to the generic reference BLAS: at FFHQ 256's 16x16 attention (8 heads
/// x 256 x 256 x 64) bmm took 27 ms forward and 80 ms with the gradient, the convolutions, which oneDNN runs,
/// 1.3 and 2.8 ms (docs/performance.md, benchmarks/kernel_benchmark).
inline torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const bool by_convolution = q.is_cpu() && q.scalar_type() == torch::kFloat32 && at::hasMKLDNN();
  return by_convolution ? attend_by_convolution(q, k, v) : attend_by_bmm(q, k, v);
}

/// GroupNorm with 32 groups and eps 1e-5 that normalises in float32 whatever the input dtype, and returns the
/// input dtype (guided-diffusion `GroupNorm32`). Parameters `weight` and `bias`, one per channel.
class GroupNorm32Impl : public torch::nn::Module {
 public:
  explicit GroupNorm32Impl(int64_t channels) : channels_(channels) {
    weight = register_parameter("weight", torch::ones({channels}));
    bias = register_parameter("bias", torch::zeros({channels}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::group_norm(x.to(torch::kFloat32), 32, weight.to(torch::kFloat32), bias.to(torch::kFloat32),
                             1e-5)
        .to(x.scalar_type());
  }
  void pretty_print(std::ostream& os) const override {
    os << "diffpost::adm::GroupNorm32(" << channels_ << ")";
  }

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  int64_t channels_;
};
TORCH_MODULE(GroupNorm32);

/// How a residual block changes the resolution.
enum class Resample { none, down, up };

/// Residual block with timestep conditioning (guided-diffusion `ResBlock`): `in_layers` (GroupNorm, SiLU, 3x3
/// conv), `emb_layers` (SiLU, Linear to out or 2*out channels), `out_layers` (GroupNorm, SiLU, Dropout, 3x3
/// conv, zero-initialised), and a 1x1 `skip_connection` when the width changes. With `resample` the block
/// average-pools or nearest-upsamples both paths by 2 between the first norm and the first conv.
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels,
               bool use_scale_shift_norm, Resample resample = Resample::none)
      : use_scale_shift_norm_(use_scale_shift_norm), resample_(resample) {
    namespace nn = torch::nn;
    in_norm_ = GroupNorm32(channels);
    in_conv_ = nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 3).padding(1));
    register_module("in_layers", nn::Sequential(in_norm_, nn::SiLU(), in_conv_));
    emb_linear_ = nn::Linear(emb_channels, use_scale_shift_norm ? 2 * out_channels : out_channels);
    register_module("emb_layers", nn::Sequential(nn::SiLU(), emb_linear_));
    out_norm_ = GroupNorm32(out_channels);
    dropout_ = nn::Dropout(dropout);
    out_conv_ = nn::Conv2d(nn::Conv2dOptions(out_channels, out_channels, 3).padding(1));
    {
      torch::NoGradGuard no_grad;  // zero_module in the reference: each block starts as the identity
      out_conv_->weight.zero_();
      out_conv_->bias.zero_();
    }
    register_module("out_layers", nn::Sequential(out_norm_, nn::SiLU(), dropout_, out_conv_));
    if (out_channels == channels) {
      register_module("skip_connection", nn::Identity());
    } else {
      skip_conv_ =
          register_module("skip_connection", nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 1)));
    }
  }

  /// h = skip(x) + out_layers(FiLM(in_layers(x), emb)) for x [B, C, H, W] and emb [B, emb_channels].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb) {
    auto h = torch::silu(in_norm_(x));
    auto skip = x;
    if (resample_ != Resample::none) {
      h = resampled(h);
      skip = resampled(x);
    }
    h = in_conv_(h);
    auto emb_out = emb_linear_(torch::silu(emb)).to(h.scalar_type()).unsqueeze(-1).unsqueeze(-1);
    if (use_scale_shift_norm_) {
      auto scale_shift = emb_out.chunk(2, 1);  // scale first, then shift
      h = out_norm_(h) * (1 + scale_shift[0]) + scale_shift[1];
      h = out_conv_(dropout_(torch::silu(h)));
    } else {
      h = out_conv_(dropout_(torch::silu(out_norm_(h + emb_out))));
    }
    return (skip_conv_ ? skip_conv_(skip) : skip) + h;
  }

 private:
  torch::Tensor resampled(const torch::Tensor& x) const {
    if (resample_ == Resample::down) return torch::avg_pool2d(x, {2, 2}, {2, 2});
    return torch::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2});
  }

  bool use_scale_shift_norm_;
  Resample resample_;
  GroupNorm32 in_norm_{nullptr};
  torch::nn::Conv2d in_conv_{nullptr};
  torch::nn::Linear emb_linear_{nullptr};
  GroupNorm32 out_norm_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
  torch::nn::Conv2d skip_conv_{nullptr};
};
TORCH_MODULE(ResBlock);

/// Multi-head self-attention over all spatial positions with a residual connection (guided-diffusion
/// `AttentionBlock`): `norm` (GroupNorm), `qkv` (1x1 Conv1d to 3C), `proj_out` (1x1 Conv1d,
/// zero-initialised). Legacy order splits the heads before q, k, v (`QKVAttentionLegacy`, what the published
/// checkpoints use); the new order splits q, k, v first (`QKVAttention`). q and k are each scaled by ch^-1/4
/// before the product (Vaswani et al. eq. 1's 1/sqrt(ch), split for float16 range) and the softmax runs in
/// float32.
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(int64_t channels, int64_t num_heads, bool use_new_attention_order)
      : channels_(channels), num_heads_(num_heads), use_new_attention_order_(use_new_attention_order) {
    namespace nn = torch::nn;
    TORCH_CHECK(num_heads > 0 && channels % num_heads == 0, "AttentionBlock: ", channels,
                " channels are not divisible into ", num_heads, " heads");
    norm_ = register_module("norm", GroupNorm32(channels));
    qkv_ = register_module("qkv", nn::Conv1d(nn::Conv1dOptions(channels, 3 * channels, 1)));
    proj_out_ = register_module("proj_out", nn::Conv1d(nn::Conv1dOptions(channels, channels, 1)));
    torch::NoGradGuard no_grad;  // zero_module in the reference
    proj_out_->weight.zero_();
    proj_out_->bias.zero_();
  }

  /// x + proj_out(attention(qkv(norm(x)))) for x [B, C, H, W].
  torch::Tensor forward(const torch::Tensor& x) {
    const auto batch = x.size(0);
    const auto sizes = x.sizes().vec();
    auto flat = x.reshape({batch, channels_, -1});
    const auto length = flat.size(2);
    auto qkv = qkv_(norm_(flat));
    const int64_t ch = channels_ / num_heads_;
    torch::Tensor q, k, v;
    if (use_new_attention_order_) {
      auto parts = qkv.chunk(3, 1);
      q = parts[0].reshape({batch * num_heads_, ch, length});
      k = parts[1].reshape({batch * num_heads_, ch, length});
      v = parts[2].reshape({batch * num_heads_, ch, length});
    } else {
      auto parts = qkv.reshape({batch * num_heads_, 3 * ch, length}).split(ch, 1);
      q = parts[0];
      k = parts[1];
      v = parts[2];
    }
    const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
    auto attended = attend(q * scale, k * scale, v);
    return (flat + proj_out_(attended.reshape({batch, channels_, length}))).reshape(sizes);
  }

 private:
  int64_t channels_;
  int64_t num_heads_;
  bool use_new_attention_order_;
  GroupNorm32 norm_{nullptr};
  torch::nn::Conv1d qkv_{nullptr};
  torch::nn::Conv1d proj_out_{nullptr};
};
TORCH_MODULE(AttentionBlock);

/// Strided 3x3 convolution halving the resolution (guided-diffusion `Downsample` with conv_resample),
/// parameter `op`.
class DownsampleImpl : public torch::nn::Module {
 public:
  explicit DownsampleImpl(int64_t channels) {
    op_ = register_module(
        "op", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return op_(x); }

 private:
  torch::nn::Conv2d op_{nullptr};
};
TORCH_MODULE(Downsample);

/// Nearest-neighbour x2 upsampling followed by a 3x3 convolution (guided-diffusion `Upsample` with
/// conv_resample), parameter `conv`.
class UpsampleImpl : public torch::nn::Module {
 public:
  explicit UpsampleImpl(int64_t channels) {
    conv_ = register_module("conv",
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).padding(1)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return conv_(torch::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}));
  }

 private:
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Upsample);

/// What a layer of an ADM UNet block is.
enum class LayerKind { input_conv, resblock, attention, downsample, upsample };

/// One layer of a block as planned from the options: its kind, its widths, and for residual blocks the
/// resampling, for attention the number of heads.
struct LayerSpec {
  LayerKind kind;
  int64_t in_channels;
  int64_t out_channels;
  Resample resample = Resample::none;
  int64_t heads = 0;
};

/// The layers of one `input_blocks.N`, `middle_block` or `output_blocks.N` entry, in registration order.
using BlockSpec = std::vector<LayerSpec>;

/// The architecture an AdmUNetOptions describes, block by block: the single place where the reference
/// `UNetModel.__init__` walk (levels, residual blocks, attention at the listed downsample rates, skip widths)
/// is reproduced. The module is built from it, and `adm_state_dict_shapes` reads the parameter shapes off it.
struct UNetPlan {
  int64_t model_channels = 0;
  int64_t time_embed_dim = 0;
  std::vector<BlockSpec> input_blocks;
  BlockSpec middle_block;
  std::vector<BlockSpec> output_blocks;
  int64_t output_channels_in = 0;  ///< width entering `out` (= channel_mult[0] * num_channels)
};

/// Plans the blocks of the UNet for `options` (validated first; throws c10::Error like `validate()`).
inline UNetPlan make_plan(const AdmUNetOptions& options) {
  options.validate();
  const auto mult = options.resolved_channel_mult();
  const auto rates = options.attention_downsample_rates();
  auto has_attention = [&](int64_t ds) { return std::find(rates.begin(), rates.end(), ds) != rates.end(); };
  auto resblock = [](int64_t in, int64_t out, Resample resample = Resample::none) {
    return LayerSpec{LayerKind::resblock, in, out, resample};
  };
  auto attention = [&](int64_t channels, bool upsample) {
    return LayerSpec{LayerKind::attention, channels, channels, Resample::none,
                     options.heads_for(channels, upsample)};
  };
  UNetPlan plan;
  plan.model_channels = options.num_channels();
  plan.time_embed_dim = 4 * options.num_channels();

  int64_t ch = mult[0] * options.num_channels();
  plan.output_channels_in = ch;
  plan.input_blocks.push_back({LayerSpec{LayerKind::input_conv, options.in_channels(), ch}});
  std::vector<int64_t> skip_channels{ch};
  int64_t ds = 1;  // downsample rate of the current level
  for (size_t level = 0; level < mult.size(); ++level) {
    const int64_t width = mult[level] * options.num_channels();
    for (int64_t i = 0; i < options.num_res_blocks(); ++i) {
      BlockSpec block{resblock(ch, width)};
      ch = width;
      if (has_attention(ds)) block.push_back(attention(ch, false));
      plan.input_blocks.push_back(block);
      skip_channels.push_back(ch);
    }
    if (level + 1 != mult.size()) {
      plan.input_blocks.push_back({options.resblock_updown() ? resblock(ch, ch, Resample::down)
                                                             : LayerSpec{LayerKind::downsample, ch, ch}});
      skip_channels.push_back(ch);
      ds *= 2;
    }
  }
  plan.middle_block = {resblock(ch, ch), attention(ch, false), resblock(ch, ch)};
  for (size_t level = mult.size(); level-- > 0;) {
    const int64_t width = mult[level] * options.num_channels();
    for (int64_t i = 0; i <= options.num_res_blocks(); ++i) {
      // Each output block eats the matching input block's activation, concatenated on the channels.
      BlockSpec block{resblock(ch + skip_channels.back(), width)};
      skip_channels.pop_back();
      ch = width;
      if (has_attention(ds)) block.push_back(attention(ch, true));
      if (level > 0 && i == options.num_res_blocks()) {
        block.push_back(options.resblock_updown() ? resblock(ch, ch, Resample::up)
                                                  : LayerSpec{LayerKind::upsample, ch, ch});
        ds /= 2;
      }
      plan.output_blocks.push_back(block);
    }
  }
  return plan;
}

/// A sequence of layers registered as "0", "1", ... that passes the timestep embedding to the layers taking
/// one (guided-diffusion `TimestepEmbedSequential`).
class TimestepSequenceImpl : public torch::nn::Module {
 public:
  /// Appends `module` (a ModuleHolder whose forward takes (x) or (x, emb)) under the next numeric name.
  template <class Holder>
  void push_back(Holder module) {
    auto impl = register_module(std::to_string(layers_.size()), std::move(module));
    layers_.emplace_back([impl](const torch::Tensor& x, const torch::Tensor& emb) -> torch::Tensor {
      if constexpr (requires { impl->forward(x, emb); }) {
        return impl->forward(x, emb);
      } else {
        return impl->forward(x);
      }
    });
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb) {
    for (auto& layer : layers_) x = layer(x, emb);
    return x;
  }

 private:
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> layers_;
};
TORCH_MODULE(TimestepSequence);

/// Keeps the block of a checkpointed forward pass alive until its backward pass recomputes it.
struct CheckpointedBlock : torch::CustomClassHolder {
  explicit CheckpointedBlock(std::shared_ptr<TimestepSequenceImpl> b) : block(std::move(b)) {}
  std::shared_ptr<TimestepSequenceImpl> block;
};

/// Gradient checkpointing of one block (guided-diffusion `nn.checkpoint` / `CheckpointFunction`): the
/// forward pass keeps only the block's inputs, and the backward pass runs the block again with its graph and
/// backpropagates through that. The block's parameters are inputs of the function, so that
/// `torch::autograd::grad` with respect to x (DPS) and training's backward pass (parameter gradients) both
/// work. The recomputation runs the same kernels on the same inputs, so the output is the plain block's bit
/// for bit and the gradients agree with the plain ones to rounding: where an activation feeds several
/// layers, its gradient contributions are summed in another order ((a + b) + c instead of a + (b + c);
/// tests/models: 4e-16 relative in float64). A block with active dropout would draw new masks, which
/// `AdmUNetImpl` refuses.
class BlockCheckpoint : public torch::autograd::Function<BlockCheckpoint> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const std::shared_ptr<TimestepSequenceImpl>& block, const torch::Tensor& x,
                               const torch::Tensor& emb, at::TensorList parameters) {
    (void)parameters;  // inputs only so that their gradients come out of backward
    ctx->saved_data["block"] = c10::IValue::make_capsule(c10::make_intrusive<CheckpointedBlock>(block));
    ctx->save_for_backward({x, emb});
    // With grad mode on, as the plain forward pass runs, so that both take the same kernels; the graph is
    // dropped at once.
    torch::AutoGradMode enable_grad(true);
    return block->forward(x.detach().requires_grad_(x.requires_grad()), emb.detach()).detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto holder =
        c10::static_intrusive_pointer_cast<CheckpointedBlock>(ctx->saved_data["block"].toCapsule());
    const auto& block = holder->block;
    // The variable inputs, in forward's order: x, emb, then the block's parameters.
    const auto x = saved[0].detach().requires_grad_(ctx->needs_input_grad(0));
    const auto emb = saved[1].detach().requires_grad_(ctx->needs_input_grad(1));
    const auto parameters = block->parameters();
    std::vector<torch::Tensor> wanted;
    std::vector<size_t> slots;  // where each wanted gradient goes among forward's arguments
    auto want = [&](const torch::Tensor& input, size_t edge) {
      if (!ctx->needs_input_grad(edge)) return;
      wanted.push_back(input);
      slots.push_back(edge + 1);  // argument 0 is the block
    };
    want(x, 0);
    want(emb, 1);
    for (size_t i = 0; i < parameters.size(); ++i) want(parameters[i], 2 + i);
    torch::autograd::variable_list result(3 + parameters.size());  // block, x, emb, parameters
    if (wanted.empty()) return result;
    torch::Tensor out;
    {
      torch::AutoGradMode enable_grad(true);
      out = block->forward(x, emb);
    }
    const auto grads = torch::autograd::grad({out}, wanted, {grad_outputs[0]}, /*retain_graph=*/false,
                                             /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) result[slots[i]] = grads[i];
    return result;
  }
};

}  // namespace adm

/// The ADM UNet eps(x_t, t) (guided-diffusion `UNetModel`). Submodules are registered under the reference
/// names (`time_embed`, `label_emb`, `input_blocks`, `middle_block`, `output_blocks`, `out`) so that a
/// published `state_dict` loads key for key. Parameters are initialised as the reference does (PyTorch
/// defaults, with the last convolution of every residual block, every attention projection and the output
/// convolution zeroed). Two run-time options, both off by default: `set_compute_dtype` (mixed precision) and
/// `set_gradient_checkpointing` (memory).
class AdmUNetImpl : public torch::nn::Module {
 public:
  /// Builds the UNet; throws c10::Error when `options.validate()` does.
  explicit AdmUNetImpl(AdmUNetOptions options) : options_(std::move(options)) {
    namespace nn = torch::nn;
    const auto plan = adm::make_plan(options_);
    const auto& o = options_;
    time_embed_ = register_module(
        "time_embed", nn::Sequential(nn::Linear(plan.model_channels, plan.time_embed_dim), nn::SiLU(),
                                     nn::Linear(plan.time_embed_dim, plan.time_embed_dim)));
    if (o.num_classes() > 0)
      label_emb_ = register_module("label_emb", nn::Embedding(o.num_classes(), plan.time_embed_dim));

    auto build = [&](const adm::BlockSpec& spec) {
      adm::TimestepSequence block;
      for (const auto& layer : spec) {
        switch (layer.kind) {
          case adm::LayerKind::input_conv:
            block->push_back(
                nn::Conv2d(nn::Conv2dOptions(layer.in_channels, layer.out_channels, 3).padding(1)));
            break;
          case adm::LayerKind::resblock:
            block->push_back(adm::ResBlock(layer.in_channels, plan.time_embed_dim, o.dropout(),
                                           layer.out_channels, o.use_scale_shift_norm(), layer.resample));
            break;
          case adm::LayerKind::attention:
            block->push_back(
                adm::AttentionBlock(layer.in_channels, layer.heads, o.use_new_attention_order()));
            break;
          case adm::LayerKind::downsample:
            block->push_back(adm::Downsample(layer.in_channels));
            break;
          case adm::LayerKind::upsample:
            block->push_back(adm::Upsample(layer.in_channels));
            break;
        }
      }
      return block;
    };
    input_blocks_ = register_module("input_blocks", nn::ModuleList());
    for (const auto& spec : plan.input_blocks) add_block(input_blocks_, inputs_, build(spec));
    middle_ = register_module("middle_block", build(plan.middle_block));
    output_blocks_ = register_module("output_blocks", nn::ModuleList());
    for (const auto& spec : plan.output_blocks) add_block(output_blocks_, outputs_, build(spec));

    out_norm_ = adm::GroupNorm32(plan.output_channels_in);
    out_conv_ = nn::Conv2d(nn::Conv2dOptions(plan.output_channels_in, o.out_channels(), 3).padding(1));
    {
      torch::NoGradGuard no_grad;  // zero_module in the reference: the untrained model predicts eps = 0
      out_conv_->weight.zero_();
      out_conv_->bias.zero_();
    }
    register_module("out", nn::Sequential(out_norm_, nn::SiLU(), out_conv_));
  }

  /// Raw output [B, out_channels, H, W] for x [B, in_channels, H, W], timesteps t [B] (the original,
  /// un-respaced integers) and, for a class-conditional model, labels y [B] (int64); leave y undefined
  /// otherwise.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y = {}) {
    const auto& o = options_;
    TORCH_CHECK(x.dim() == 4 && x.size(1) == o.in_channels(), "AdmUNet: expected x of shape [B, ",
                o.in_channels(), ", H, W], got ", x.sizes());
    const int64_t coarsest_factor = int64_t{1} << (o.resolved_channel_mult().size() - 1);
    TORCH_CHECK(x.size(2) % coarsest_factor == 0 && x.size(3) % coarsest_factor == 0,
                "AdmUNet: H and W must be ", "divisible by ", coarsest_factor, " (2^(levels-1)), got ",
                x.sizes());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0), "AdmUNet: expected timesteps of shape [", x.size(0),
                "], got ", t.sizes());
    TORCH_CHECK(y.defined() == (o.num_classes() > 0),
                o.num_classes() > 0 ? "AdmUNet: this model is class-conditional; pass labels y of shape [B]"
                                    : "AdmUNet: this model is unconditional; do not pass labels y");
    auto emb = time_embed_->forward(
        adm::timestep_embedding(t, o.num_channels(), timestep_frequencies(t.device())).to(x.scalar_type()));
    if (y.defined()) {
      TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0), "AdmUNet: expected labels of shape [", x.size(0),
                  "], got ", y.sizes());
      emb = emb + label_emb_(y);
    }
    TORCH_CHECK(
        !checkpointing_ || !is_training() || o.dropout() == 0.0,
        "AdmUNet: gradient checkpointing recomputes every block in the backward pass, which would draw "
        "new dropout masks; train with dropout 0 or call set_gradient_checkpointing(false)");
    std::vector<torch::Tensor> skips;
    skips.reserve(inputs_.size());
    // Mixed precision (guided-diffusion UNetModel.forward with use_fp16): the blocks run in the compute
    // dtype, the embedding and the output layers in the caller's.
    auto h = mixed_precision() ? x.to(compute_dtype_) : x;
    for (auto& block : inputs_) {
      h = run_block(block, h, emb);
      skips.push_back(h);
    }
    h = run_block(middle_, h, emb);
    for (auto& block : outputs_) {
      h = run_block(block, torch::cat({h, skips.back()}, 1), emb);
      skips.pop_back();
    }
    if (mixed_precision()) h = h.to(x.scalar_type());
    return out_conv_(torch::silu(out_norm_(h)));
  }

  /// The options the model was built with.
  const AdmUNetOptions& options() const { return options_; }

  /// Runs the convolutions of the input, middle and output blocks in `dtype` (guided-diffusion's
  /// `convert_to_fp16` with use_fp16): torch::kBFloat16 or torch::kHalf converts their weights and biases to
  /// it, and `forward` then casts the input to it before the first block and back to the input's dtype
  /// before the output layers. Everything else stays in the dtype of the model's other parameters (float32
  /// for the published models): the timestep embedding and its MLP, the blocks' embedding projections
  /// (Linear), every GroupNorm (which also normalises in float32 whatever its input) and the output layers;
  /// the attention softmax runs in float32. Input and output are in the caller's dtype, so DPS's gradient and
  /// iterate stay float32. The dtype of the other parameters (torch::kFloat32) restores full precision, but
  /// the bits the conversion dropped stay dropped: load the checkpoint again for exact weights. Call it after
  /// loading a checkpoint (loading converts into whatever dtype the model holds), before or after moving the
  /// model to its device. float16 needs CUDA: LibTorch's CPU has no float16 convolutions.
  void set_compute_dtype(torch::ScalarType dtype) {
    const auto float_dtype = out_conv_->weight.scalar_type();
    TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kHalf || dtype == float_dtype,
                "AdmUNet::set_compute_dtype: expected torch::kBFloat16, torch::kHalf or the dtype of the "
                "model's other parameters (",
                float_dtype, "), got ", dtype);
    torch::NoGradGuard no_grad;
    const std::vector<std::shared_ptr<torch::nn::Module>> blocks_of_unet{input_blocks_.ptr(), middle_.ptr(),
                                                                         output_blocks_.ptr()};
    for (const auto& blocks : blocks_of_unet) {
      for (const auto& module : blocks->modules(/*include_self=*/false)) {
        const bool convolution =
            module->as<torch::nn::Conv2d>() != nullptr || module->as<torch::nn::Conv1d>() != nullptr;
        if (!convolution) continue;
        for (auto& parameter : module->parameters(/*recurse=*/false)) parameter.set_data(parameter.to(dtype));
      }
    }
    compute_dtype_ = dtype;
  }

  /// The dtype the blocks' convolutions compute in: the model's parameter dtype unless `set_compute_dtype`
  /// chose a 16-bit one.
  torch::ScalarType compute_dtype() const {
    return mixed_precision() ? compute_dtype_ : out_conv_->weight.scalar_type();
  }

  /// Gradient checkpointing of the input, middle and output blocks (guided-diffusion's `use_checkpoint`):
  /// when on, a forward pass that builds a graph keeps only each block's input and output, and the backward
  /// pass recomputes the block. That costs about one more forward pass per backward pass and saves the
  /// activations inside the blocks, which is what bounds the batch size of DPS on a GPU (and of training).
  /// Outputs are the same bit for bit, gradients to rounding (adm::BlockCheckpoint). Off by default; forward
  /// passes without a graph (NoGradGuard) are not affected. Training with dropout > 0 is refused, because
  /// recomputing would draw new dropout masks.
  void set_gradient_checkpointing(bool on) { checkpointing_ = on; }

  /// Whether `set_gradient_checkpointing` is on.
  bool gradient_checkpointing() const { return checkpointing_; }

  void pretty_print(std::ostream& os) const override { os << "diffpost::AdmUNet(" << options_ << ")"; }

 private:
  static void add_block(torch::nn::ModuleList& list, std::vector<adm::TimestepSequence>& typed,
                        adm::TimestepSequence block) {
    list->push_back(block);
    typed.push_back(std::move(block));
  }

  /// Whether `set_compute_dtype` chose a 16-bit dtype for the blocks.
  bool mixed_precision() const {
    return compute_dtype_ == torch::kBFloat16 || compute_dtype_ == torch::kHalf;
  }

  /// One block, checkpointed when that is on and the pass builds a graph.
  torch::Tensor run_block(adm::TimestepSequence& block, const torch::Tensor& h, const torch::Tensor& emb) {
    if (!checkpointing_ || !torch::GradMode::is_enabled()) return block->forward(h, emb);
    const auto parameters = block->parameters();
    return adm::BlockCheckpoint::apply(block.ptr(), h, emb, at::TensorList(parameters));
  }

  /// The timestep embedding's frequencies on `device`, computed on the CPU once (as the reference computes
  /// them) and kept there, so that a forward pass copies nothing from the host.
  torch::Tensor timestep_frequencies(const torch::Device& device) {
    const auto options = torch::TensorOptions().device(device).dtype(torch::kFloat32);
    const int64_t half = options_.num_channels() / 2;
    return constants_->get({"timestep_frequencies", {half}, options},
                           [&] { return adm::timestep_frequencies(half).to(device); });
  }

  AdmUNetOptions options_;
  torch::ScalarType compute_dtype_ =
      torch::kFloat;  ///< kBFloat16 or kHalf when the blocks compute in 16 bits
  bool checkpointing_ = false;
  detail::TensorCache constants_ = detail::make_tensor_cache();
  torch::nn::Sequential time_embed_{nullptr};
  torch::nn::Embedding label_emb_{nullptr};
  torch::nn::ModuleList input_blocks_{nullptr};
  torch::nn::ModuleList output_blocks_{nullptr};
  std::vector<adm::TimestepSequence> inputs_;
  std::vector<adm::TimestepSequence> outputs_;
  adm::TimestepSequence middle_{nullptr};
  adm::GroupNorm32 out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
};

/// Module holder for AdmUNetImpl that also models diffpost::ScoreModel: `model(x_t, t)` returns the raw
/// output and `learns_variance()` tells whether its second half is the `learned_range` variance. Copies share
/// the same module, like every LibTorch module holder.
class AdmUNet : public torch::nn::ModuleHolder<AdmUNetImpl> {
 public:
  using torch::nn::ModuleHolder<AdmUNetImpl>::ModuleHolder;

  /// A UNet with freshly initialised parameters for `options`.
  explicit AdmUNet(const AdmUNetOptions& options) : ModuleHolder(std::make_shared<AdmUNetImpl>(options)) {}

  /// True when the output has 2C channels (eps, then the variance interpolation v of improved DDPM).
  [[nodiscard]] bool learns_variance() const { return impl_->options().learn_sigma(); }

  /// eps (and v) for x_t [B, C, H, W] and original timesteps t [B]; for unconditional models.
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) {
    return impl_->forward(x_t, t);
  }

  /// eps (and v) for x_t, t and class labels y [B]; for class-conditional models.
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& y) {
    return impl_->forward(x_t, t, y);
  }
};

/// Name and shape of one state-dict entry.
using ParameterShape = std::pair<std::string, std::vector<int64_t>>;

/// The state-dict keys and shapes of an AdmUNet built with `options`, in `named_parameters()` order, computed
/// from the plan without allocating a single parameter: for checking which configuration a checkpoint was
/// made for, and for counting the parameters of configurations too big to build casually.
inline std::vector<ParameterShape> adm_state_dict_shapes(const AdmUNetOptions& options) {
  const auto plan = adm::make_plan(options);
  const bool scale_shift = options.use_scale_shift_norm();
  std::vector<ParameterShape> shapes;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    shapes.emplace_back(name, std::move(shape));
  };
  auto add_affine = [&](const std::string& prefix, std::vector<int64_t> weight_shape) {
    const int64_t rows = weight_shape[0];
    add(prefix + ".weight", std::move(weight_shape));
    add(prefix + ".bias", {rows});
  };
  auto add_block = [&](const std::string& prefix, const adm::BlockSpec& block) {
    for (size_t i = 0; i < block.size(); ++i) {
      const auto& layer = block[i];
      const std::string p = prefix + "." + std::to_string(i);
      const int64_t in = layer.in_channels, out = layer.out_channels;
      switch (layer.kind) {
        case adm::LayerKind::input_conv:
          add_affine(p, {out, in, 3, 3});
          break;
        case adm::LayerKind::resblock:
          add_affine(p + ".in_layers.0", {in});
          add_affine(p + ".in_layers.2", {out, in, 3, 3});
          add_affine(p + ".emb_layers.1", {scale_shift ? 2 * out : out, plan.time_embed_dim});
          add_affine(p + ".out_layers.0", {out});
          add_affine(p + ".out_layers.3", {out, out, 3, 3});
          if (in != out) add_affine(p + ".skip_connection", {out, in, 1, 1});
          break;
        case adm::LayerKind::attention:
          add_affine(p + ".norm", {in});
          add_affine(p + ".qkv", {3 * in, in, 1});
          add_affine(p + ".proj_out", {in, in, 1});
          break;
        case adm::LayerKind::downsample:
          add_affine(p + ".op", {out, in, 3, 3});
          break;
        case adm::LayerKind::upsample:
          add_affine(p + ".conv", {out, in, 3, 3});
          break;
      }
    }
  };
  add_affine("time_embed.0", {plan.time_embed_dim, plan.model_channels});
  add_affine("time_embed.2", {plan.time_embed_dim, plan.time_embed_dim});
  if (options.num_classes() > 0) add("label_emb.weight", {options.num_classes(), plan.time_embed_dim});
  for (size_t n = 0; n < plan.input_blocks.size(); ++n)
    add_block("input_blocks." + std::to_string(n), plan.input_blocks[n]);
  add_block("middle_block", plan.middle_block);
  for (size_t n = 0; n < plan.output_blocks.size(); ++n)
    add_block("output_blocks." + std::to_string(n), plan.output_blocks[n]);
  add_affine("out.0", {plan.output_channels_in});
  add_affine("out.2", {options.out_channels(), plan.output_channels_in, 3, 3});
  return shapes;
}

/// Number of parameters of an AdmUNet built with `options` (93,563,910 for `ffhq256()`), without building it.
inline int64_t adm_parameter_count(const AdmUNetOptions& options) {
  int64_t total = 0;
  for (const auto& [name, shape] : adm_state_dict_shapes(options)) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    total += n;
  }
  return total;
}

}  // namespace diffpost

/// `fmt::format("{}", options)` prints what `operator<<` prints.
template <>
struct fmt::formatter<diffpost::AdmUNetOptions> : fmt::ostream_formatter {};
