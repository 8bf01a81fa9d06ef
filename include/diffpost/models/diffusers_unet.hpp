// diffusers' `UNet2DModel` (huggingface/diffusers `models/unets/unet_2d.py` with the blocks of
// `unet_2d_blocks.py`, `resnet.py`, `attention_processor.py`, `embeddings.py`): the network of Ho et al.'s
// DDPM checkpoints on the Hugging Face hub (`google/ddpm-cifar10-32`, `-celebahq-256`, `-church-256`, ...)
// and of every model trained with diffusers' unconditional training script.
//
// The module tree keeps diffusers' parameter names (`conv_in.weight`, `time_embedding.linear_1.weight`,
// `down_blocks.1.attentions.0.to_q.weight`, `mid_block.resnets.1.conv2.bias`,
// `up_blocks.2.upsamplers.0.conv.weight`, `conv_norm_out.weight`, ...) in diffusers' `state_dict()` order, so
// that a user's file loads strictly and the code reads side by side with the original. The numerics follow
// diffusers: sinusoidal timestep embedding with `flip_sin_to_cos` and `freq_shift`, GroupNorm with
// `norm_num_groups` and `norm_eps`, residual blocks with the embedding added (`default`) or as FiLM
// (`scale_shift`), multi-head self-attention with heads of `attention_head_dim` channels, softmax in float32
// (diffusers' `upcast_softmax`), output scaling by `mid_block_scale_factor`. No file is read here:
// `<diffpost/io/diffusers.hpp>` builds the model from a diffusers folder (`config.json`, safetensors or
// `.bin` weights, the scheduler) and sets how its output becomes eps. docs/models.md ("diffusers folders").
#pragma once

#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// The `config.json` fields of diffusers' `UNet2DModel` that define the network, named and defaulted as in
/// `UNet2DModel.__init__` (a field missing from a file takes this default, as in diffusers). Supported
/// values: `time_embedding_type` "positional"; block types DownBlock2D, AttnDownBlock2D (down), UpBlock2D,
/// AttnUpBlock2D (up), each optionally prefixed "UNetRes" as diffusers allows; `mid_block_type`
/// "UNetMidBlock2D" or none; `downsample_type` / `upsample_type` "conv" or "resnet" (used by the attention
/// blocks, as in diffusers); `act_fn` silu / swish, mish, gelu, relu; `resnet_time_scale_shift` "default" or
/// "scale_shift". `validate()` refuses anything else naming the field. Class embeddings and Fourier or
/// learned time embeddings are not fields here: the config reader refuses them.
struct DiffusersUNetOptions {
  /// Height and width the model was trained on (informative: any size divisible by 2^(levels-1) runs);
  /// empty when the file has none, one entry for square images.
  TORCH_ARG(std::vector<int64_t>, sample_size) = {};
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, out_channels) = 3;
  /// Maps the input from [0, 1] to [-1, 1] first (`2 * sample - 1`).
  TORCH_ARG(bool, center_input_sample) = false;
  TORCH_ARG(std::string, time_embedding_type) = "positional";
  /// Width of the timestep embedding MLP; unset means 4 * block_out_channels[0].
  TORCH_ARG(std::optional<int64_t>, time_embedding_dim) = std::nullopt;
  /// `downscale_freq_shift` of the sinusoidal embedding: frequencies exp(-ln(10000) i / (half - freq_shift)).
  TORCH_ARG(double, freq_shift) = 0.0;
  /// Cosines first (true) or sines first (false, Ho et al.'s embedding).
  TORCH_ARG(bool, flip_sin_to_cos) = true;
  TORCH_ARG(std::vector<std::string>, down_block_types) = {"DownBlock2D", "AttnDownBlock2D",
                                                           "AttnDownBlock2D", "AttnDownBlock2D"};
  /// "UNetMidBlock2D", or unset for no middle block.
  TORCH_ARG(std::optional<std::string>, mid_block_type) = std::string("UNetMidBlock2D");
  TORCH_ARG(std::vector<std::string>, up_block_types) = {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                                         "UpBlock2D"};
  TORCH_ARG(std::vector<int64_t>, block_out_channels) = {224, 448, 672, 896};
  TORCH_ARG(int64_t, layers_per_block) = 2;
  /// Output divisor of the middle block's residual blocks and attention (`output_scale_factor`).
  TORCH_ARG(double, mid_block_scale_factor) = 1.0;
  /// Padding of the strided downsampling convolutions; 0 pads one zero row and column at the bottom and right
  /// first (TensorFlow's "SAME", as in Ho et al.'s checkpoints).
  TORCH_ARG(int64_t, downsample_padding) = 1;
  TORCH_ARG(std::string, downsample_type) = "conv";
  TORCH_ARG(std::string, upsample_type) = "conv";
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(std::string, act_fn) = "silu";
  /// Channels per attention head; unset means one head over all channels of the block.
  TORCH_ARG(std::optional<int64_t>, attention_head_dim) = int64_t{8};
  TORCH_ARG(int64_t, norm_num_groups) = 32;
  /// Groups of the middle block's attention GroupNorm; unset means norm_num_groups with the "default"
  /// time scale-shift and no GroupNorm there with "scale_shift", as diffusers does.
  TORCH_ARG(std::optional<int64_t>, attn_norm_num_groups) = std::nullopt;
  TORCH_ARG(double, norm_eps) = 1e-5;
  TORCH_ARG(std::string, resnet_time_scale_shift) = "default";
  /// Attention in the middle block.
  TORCH_ARG(bool, add_attention) = true;

 public:
  /// Width of the timestep embedding: `time_embedding_dim`, or 4 * block_out_channels[0].
  [[nodiscard]] int64_t time_embed_dim() const {
    return time_embedding_dim_.value_or(4 * block_out_channels_.at(0));
  }

  /// A block type without diffusers' optional "UNetRes" prefix.
  static std::string block_kind(const std::string& type) {
    return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type;
  }

  /// Attention heads and channels per head of a block with `channels` channels: heads = channels /
  /// attention_head_dim (integer division, as diffusers), or one head of all channels when unset.
  [[nodiscard]] std::pair<int64_t, int64_t> heads_and_dim(int64_t channels) const {
    const int64_t dim = attention_head_dim_.value_or(channels);
    return {channels / dim, dim};
  }

  /// Throws c10::Error naming the first unsupported or inconsistent field: block lists of different lengths,
  /// unknown block types or activation, non-positive sizes, widths not divisible into norm_num_groups, an
  /// attention head wider than its block.
  void validate() const {
    const auto fail_unless = [](bool ok, const auto&... message) {
      TORCH_CHECK(ok, "UNet2DModel config: ", message...);
    };
    fail_unless(time_embedding_type_ == "positional", "time_embedding_type '", time_embedding_type_,
                "' is not supported (only 'positional'; Fourier and learned time embeddings are not)");
    fail_unless(in_channels_ > 0 && out_channels_ > 0, "in_channels and out_channels must be positive, got ",
                in_channels_, " and ", out_channels_);
    fail_unless(!block_out_channels_.empty() && block_out_channels_.size() <= 16,
                "block_out_channels must list 1 to 16 widths, got ", block_out_channels_.size());
    fail_unless(down_block_types_.size() == block_out_channels_.size(), "down_block_types has ",
                down_block_types_.size(), " entries but block_out_channels has ", block_out_channels_.size());
    fail_unless(up_block_types_.size() == down_block_types_.size(), "up_block_types has ",
                up_block_types_.size(), " entries but down_block_types has ", down_block_types_.size());
    fail_unless(layers_per_block_ >= 1 && layers_per_block_ <= 16, "layers_per_block must be 1 to 16, got ",
                layers_per_block_);
    fail_unless(norm_num_groups_ > 0, "norm_num_groups must be positive, got ", norm_num_groups_);
    fail_unless(norm_eps_ > 0.0, "norm_eps must be positive, got ", norm_eps_);
    fail_unless(dropout_ >= 0.0 && dropout_ < 1.0, "dropout must be in [0, 1), got ", dropout_);
    fail_unless(mid_block_scale_factor_ != 0.0, "mid_block_scale_factor must not be 0");
    fail_unless(downsample_padding_ >= 0 && downsample_padding_ <= 2,
                "downsample_padding must be 0, 1 or 2, got ", downsample_padding_);
    fail_unless(!time_embedding_dim_ || (*time_embedding_dim_ > 0 && *time_embedding_dim_ <= 65536),
                "time_embedding_dim must be positive, got ", time_embedding_dim_.value_or(0));
    fail_unless(std::abs(freq_shift_) < 1e6, "freq_shift ", freq_shift_, " is out of range");
    const int64_t half = block_out_channels_[0] / 2;
    fail_unless(half >= 1 && static_cast<double>(half) != freq_shift_, "freq_shift ", freq_shift_,
                " makes the timestep frequencies divide by zero for block_out_channels[0] = ",
                block_out_channels_[0]);
    for (const auto& type : down_block_types_) {
      const auto kind = block_kind(type);
      fail_unless(kind == "DownBlock2D" || kind == "AttnDownBlock2D", "down block type '", type,
                  "' is not supported (DownBlock2D, AttnDownBlock2D)");
    }
    for (const auto& type : up_block_types_) {
      const auto kind = block_kind(type);
      fail_unless(kind == "UpBlock2D" || kind == "AttnUpBlock2D", "up block type '", type,
                  "' is not supported (UpBlock2D, AttnUpBlock2D)");
    }
    fail_unless(!mid_block_type_ || *mid_block_type_ == "UNetMidBlock2D", "mid_block_type '",
                mid_block_type_.value_or(""), "' is not supported (UNetMidBlock2D or null)");
    fail_unless(downsample_type_ == "conv" || downsample_type_ == "resnet", "downsample_type '",
                downsample_type_, "' is not supported (conv, resnet)");
    fail_unless(upsample_type_ == "conv" || upsample_type_ == "resnet", "upsample_type '", upsample_type_,
                "' is not supported (conv, resnet)");
    fail_unless(resnet_time_scale_shift_ == "default" || resnet_time_scale_shift_ == "scale_shift",
                "resnet_time_scale_shift '", resnet_time_scale_shift_,
                "' is not supported (default, scale_shift)");
    std::string act = act_fn_;
    std::transform(act.begin(), act.end(), act.begin(), [](unsigned char c) { return std::tolower(c); });
    fail_unless(act == "silu" || act == "swish" || act == "mish" || act == "gelu" || act == "relu",
                "act_fn '", act_fn_, "' is not supported (silu, swish, mish, gelu, relu)");
    fail_unless(!attention_head_dim_ || *attention_head_dim_ > 0,
                "attention_head_dim must be positive or null, got ", attention_head_dim_.value_or(0));
    fail_unless(!attn_norm_num_groups_ || *attn_norm_num_groups_ > 0,
                "attn_norm_num_groups must be positive or null");
    for (const int64_t width : block_out_channels_) {
      fail_unless(width > 0 && width <= 16384, "block_out_channels entries must be 1 to 16384, got ", width);
      fail_unless(width % norm_num_groups_ == 0, "block_out_channels entry ", width,
                  " is not divisible by norm_num_groups ", norm_num_groups_);
      fail_unless(heads_and_dim(width).first >= 1, "attention_head_dim ", attention_head_dim_.value_or(0),
                  " is wider than the block of ", width, " channels");
    }
    if (attn_norm_num_groups_)
      fail_unless(block_out_channels_.back() % *attn_norm_num_groups_ == 0, "block_out_channels entry ",
                  block_out_channels_.back(), " is not divisible by attn_norm_num_groups ",
                  *attn_norm_num_groups_);
  }
};

/// Prints the options as `UNet2DModel(block_out_channels=[128, 256, 256, 256], down_block_types=[...], ...)`.
inline std::ostream& operator<<(std::ostream& os, const DiffusersUNetOptions& o) {
  auto list = [&](const auto& values) {
    os << "[";
    for (size_t i = 0; i < values.size(); ++i) os << (i ? ", " : "") << values[i];
    os << "]";
  };
  os << "UNet2DModel(sample_size=";
  list(o.sample_size());
  os << ", in_channels=" << o.in_channels() << ", out_channels=" << o.out_channels()
     << ", block_out_channels=";
  list(o.block_out_channels());
  os << ", down_block_types=";
  list(o.down_block_types());
  os << ", mid_block_type=" << o.mid_block_type().value_or("null") << ", up_block_types=";
  list(o.up_block_types());
  os << ", layers_per_block=" << o.layers_per_block() << ", attention_head_dim=";
  if (o.attention_head_dim())
    os << *o.attention_head_dim();
  else
    os << "null";
  os << ", norm_num_groups=" << o.norm_num_groups() << ", norm_eps=" << o.norm_eps()
     << ", act_fn=" << o.act_fn() << ", resnet_time_scale_shift=" << o.resnet_time_scale_shift()
     << ", flip_sin_to_cos=" << (o.flip_sin_to_cos() ? "true" : "false") << ", freq_shift=" << o.freq_shift()
     << ", downsample_padding=" << o.downsample_padding() << ", downsample_type=" << o.downsample_type()
     << ", upsample_type=" << o.upsample_type() << ", mid_block_scale_factor=" << o.mid_block_scale_factor()
     << ", add_attention=" << (o.add_attention() ? "true" : "false")
     << ", center_input_sample=" << (o.center_input_sample() ? "true" : "false") << ")";
  return os;
}

/// How the raw output of a diffusers model is turned into eps for diffpost's samplers (the scheduler's
/// `prediction_type`): eps itself, the clean sample x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans &
/// Ho 2022, sec. 4; diffusers' `get_velocity`).
enum class DiffusersPrediction { epsilon, sample, v_prediction };

/// Building blocks of UNet2DModel, each registering diffusers' parameter names.
namespace diffusers {

/// The residual blocks' nonlinearity (`act_fn`).
enum class Activation { silu, mish, gelu, relu };

inline Activation activation_from(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "mish") return Activation::mish;
  if (name == "gelu") return Activation::gelu;
  TORCH_CHECK(name == "relu", "UNet2DModel config: act_fn '", name,
              "' is not supported (silu, swish, mish, gelu, relu)");
  return Activation::relu;
}

inline torch::Tensor activate(const torch::Tensor& x, Activation activation) {
  const bool reduced = x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
  switch (activation) {
    case Activation::silu:
      return torch::silu(x);
    case Activation::mish:  // LibTorch 1.13's CPU has no bfloat16 mish or gelu: 16-bit inputs in float32
      return reduced ? torch::mish(x.to(torch::kFloat32)).to(x.scalar_type()) : torch::mish(x);
    case Activation::gelu:
      return reduced ? torch::gelu(x.to(torch::kFloat32)).to(x.scalar_type()) : torch::gelu(x);
    case Activation::relu:
      return torch::relu(x);
  }
  return x;
}

/// GroupNorm with the module's groups, eps and affine parameters, normalising in float32 whatever the input
/// dtype and returning the input dtype (as the ADM UNet's GroupNorm32; a no-op cast in float32).
inline torch::Tensor group_norm(const torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  const auto& o = norm->options;
  if (x.scalar_type() == norm->weight.scalar_type())
    return torch::group_norm(x, o.num_groups(), norm->weight, norm->bias, o.eps());
  return torch::group_norm(x.to(torch::kFloat32), o.num_groups(), norm->weight.to(torch::kFloat32),
                           norm->bias.to(torch::kFloat32), o.eps())
      .to(x.scalar_type());
}

/// The frequencies exp(-ln(10000) i / (half - freq_shift)), i < half, in float32 on the CPU, in diffusers'
/// operation order (`get_timestep_embedding`), so that float32 rounding matches.
inline torch::Tensor timestep_frequencies(int64_t half, double freq_shift) {
  const auto exponent =
      -std::log(10000.0) * torch::arange(0, half, torch::TensorOptions().dtype(torch::kFloat32));
  return torch::exp(exponent / (static_cast<double>(half) - freq_shift));
}

/// Sinusoidal embedding [B, dim] of timesteps [B] (diffusers `Timesteps`): sin(t f) then cos(t f), swapped
/// when `flip_sin_to_cos`; a zero column for odd dim. `freqs` [dim / 2] float32 on the timesteps' device.
inline torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                        const torch::Tensor& freqs) {
  const auto args = timesteps.unsqueeze(1).to(torch::kFloat32) * freqs.unsqueeze(0);
  auto embedding = flip_sin_to_cos ? torch::cat({torch::cos(args), torch::sin(args)}, -1)
                                   : torch::cat({torch::sin(args), torch::cos(args)}, -1);
  if (dim % 2) embedding = torch::constant_pad_nd(embedding, {0, 1, 0, 0});
  return embedding;
}

/// How a residual block changes the resolution (diffusers ResnetBlock2D `up` / `down`, with the default
/// kernel: nearest upsampling or 2x2 average pooling of both paths).
enum class Resample { none, down, up };

/// diffusers `ResnetBlock2D`: `norm1`, `conv1`, `time_emb_proj` (to out or 2*out channels for
/// "scale_shift"), `norm2`, dropout, `conv2`, and a 1x1 `conv_shortcut` when the width changes;
/// out = (shortcut(x) + h) / output_scale_factor.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  struct Options {
    int64_t in_channels;
    int64_t out_channels;
    int64_t temb_channels;
    int64_t groups;
    double eps;
    Activation activation;
    bool scale_shift;
    double output_scale_factor = 1.0;
    double dropout = 0.0;
    Resample resample = Resample::none;
  };

  explicit ResnetBlock2DImpl(const Options& o) : options_(o) {
    namespace nn = torch::nn;
    norm1_ =
        register_module("norm1", nn::GroupNorm(nn::GroupNormOptions(o.groups, o.in_channels).eps(o.eps)));
    conv1_ =
        register_module("conv1", nn::Conv2d(nn::Conv2dOptions(o.in_channels, o.out_channels, 3).padding(1)));
    time_emb_proj_ = register_module(
        "time_emb_proj", nn::Linear(o.temb_channels, o.scale_shift ? 2 * o.out_channels : o.out_channels));
    norm2_ =
        register_module("norm2", nn::GroupNorm(nn::GroupNormOptions(o.groups, o.out_channels).eps(o.eps)));
    conv2_ =
        register_module("conv2", nn::Conv2d(nn::Conv2dOptions(o.out_channels, o.out_channels, 3).padding(1)));
    if (o.in_channels != o.out_channels)
      conv_shortcut_ =
          register_module("conv_shortcut", nn::Conv2d(nn::Conv2dOptions(o.in_channels, o.out_channels, 1)));
  }

  /// The block for x [B, in, H, W] and the timestep embedding temb [B, temb_channels].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb) {
    const auto& o = options_;
    auto input = x;
    auto h = activate(group_norm(norm1_, x), o.activation);
    if (o.resample == Resample::up) {
      input = torch::upsample_nearest2d(input, {input.size(2) * 2, input.size(3) * 2});
      h = torch::upsample_nearest2d(h, {h.size(2) * 2, h.size(3) * 2});
    } else if (o.resample == Resample::down) {
      input = torch::avg_pool2d(input, {2, 2}, {2, 2});
      h = torch::avg_pool2d(h, {2, 2}, {2, 2});
    }
    h = conv1_(h);
    const auto projected =
        time_emb_proj_(activate(temb, o.activation)).to(h.scalar_type()).unsqueeze(-1).unsqueeze(-1);
    if (o.scale_shift) {
      const auto scale_shift = projected.chunk(2, 1);  // scale first, then shift
      h = group_norm(norm2_, h) * (1 + scale_shift[0]) + scale_shift[1];
    } else {
      h = group_norm(norm2_, h + projected);
    }
    h = conv2_(torch::dropout(activate(h, o.activation), o.dropout, is_training()));
    if (conv_shortcut_) input = conv_shortcut_(input);
    auto out = input + h;
    return o.output_scale_factor == 1.0 ? out : out / o.output_scale_factor;
  }

 private:
  Options options_;
  torch::nn::GroupNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv_shortcut_{nullptr};
  torch::nn::Linear time_emb_proj_{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

/// diffusers `Attention` as the UNet2D blocks build it (`_from_deprecated_attn_block`, self-attention over
/// all positions, residual connection, biases): `group_norm` (when `groups` is set), `to_q`, `to_k`, `to_v`
/// (Linear channels -> heads * head_dim), `to_out.0` (Linear back); logits scaled by head_dim^-1/2, softmax
/// in float32; out = (x + attention) / rescale_output_factor. The projections run as 1x1 convolutions on the
/// [B, C, H*W] layout and the products as `adm::attend`, which on the CPU in float32 avoids the generic BLAS
/// that Debian's LibTorch uses for batched matrix products (docs/performance.md).
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t channels, int64_t heads, int64_t head_dim, std::optional<int64_t> groups, double eps,
                double rescale_output_factor)
      : channels_(channels), heads_(heads), head_dim_(head_dim), rescale_(rescale_output_factor) {
    namespace nn = torch::nn;
    if (groups)
      group_norm_ =
          register_module("group_norm", nn::GroupNorm(nn::GroupNormOptions(*groups, channels).eps(eps)));
    const int64_t inner = heads * head_dim;
    to_q_ = register_module("to_q", nn::Linear(channels, inner));
    to_k_ = register_module("to_k", nn::Linear(channels, inner));
    to_v_ = register_module("to_v", nn::Linear(channels, inner));
    to_out_ = nn::Linear(inner, channels);
    register_module("to_out", nn::ModuleList(to_out_, nn::Dropout(0.0)));
  }

  /// (x + attention(x)) / rescale_output_factor for x [B, C, H, W].
  torch::Tensor forward(const torch::Tensor& x) {
    namespace F = torch::nn::functional;
    const auto batch = x.size(0);
    const auto length = x.size(2) * x.size(3);
    const auto flat = (group_norm_ ? group_norm(group_norm_, x) : x).reshape({batch, channels_, length});
    // A Linear over channels is a 1x1 convolution over the positions; heads are contiguous channel groups.
    auto project = [&](const torch::nn::Linear& linear) {
      return F::conv1d(flat, linear->weight.unsqueeze(-1), F::Conv1dFuncOptions().bias(linear->bias))
          .reshape({batch * heads_, head_dim_, length});
    };
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
    const auto attended = adm::attend(project(to_q_) * scale, project(to_k_), project(to_v_));
    const auto out = F::conv1d(attended.reshape({batch, heads_ * head_dim_, length}),
                               to_out_->weight.unsqueeze(-1), F::Conv1dFuncOptions().bias(to_out_->bias));
    auto result = x + out.reshape(x.sizes());
    return rescale_ == 1.0 ? result : result / rescale_;
  }

 private:
  int64_t channels_, heads_, head_dim_;
  double rescale_;
  torch::nn::GroupNorm group_norm_{nullptr};
  torch::nn::Linear to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr}, to_out_{nullptr};
};
TORCH_MODULE(Attention);

/// diffusers `Downsample2D` with a convolution (registered as `conv`): stride 2, 3x3, `padding`; padding 0
/// pads one zero row and column at the bottom and right first.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t padding) : padding_(padding) {
    conv_ = register_module(
        "conv",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(padding)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return conv_(padding_ == 0 ? torch::constant_pad_nd(x, {0, 1, 0, 1}, 0) : x);
  }

 private:
  int64_t padding_;
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Downsample2D);

/// diffusers `Upsample2D` with a convolution (`conv`): nearest x2, then 3x3 - the ADM UNet's module, whose
/// parameter has the same name.
using Upsample2D = adm::Upsample;

/// What resamples at the end of a down or up block: nothing, a convolution (Downsample2D / Upsample2D) or a
/// residual block (`downsample_type` / `upsample_type` "resnet").
enum class Resampler { none, conv, resnet };

/// One entry of `down_blocks` or `up_blocks`, or the `mid_block`: its residual blocks and attentions in
/// diffusers' registration order (`attentions` before `resnets`), then the resampler (`downsamplers.0` or
/// `upsamplers.0`).
struct BlockLayout {
  std::vector<ResnetBlock2DImpl::Options> resnets;
  bool attention = false;
  Resampler resampler = Resampler::none;
  int64_t resample_channels = 0;
};

/// DownBlock2D / AttnDownBlock2D (`down = true`), UpBlock2D / AttnUpBlock2D and UNetMidBlock2D, which differ
/// only in how their layers are wired: down blocks keep every output for the skips, up blocks eat one skip
/// per residual block, the middle block alternates resnet, attention, resnet.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const BlockLayout& layout, const DiffusersUNetOptions& o, bool up,
            std::optional<int64_t> attention_groups, double output_scale_factor) {
    namespace nn = torch::nn;
    if (layout.attention) {
      auto attentions = register_module("attentions", nn::ModuleList());
      const size_t count = layout.resnets.size() - (layout.resnets.size() > 1 && mid(layout) ? 1 : 0);
      for (size_t i = 0; i < count; ++i) {
        const int64_t channels = layout.resnets[i].out_channels;
        const auto [heads, dim] = o.heads_and_dim(channels);
        attentions_.emplace_back(channels, heads, dim, attention_groups, o.norm_eps(), output_scale_factor);
        attentions->push_back(attentions_.back());
      }
    }
    auto resnets = register_module("resnets", nn::ModuleList());
    for (const auto& spec : layout.resnets) {
      resnets_.emplace_back(spec);
      resnets->push_back(resnets_.back());
    }
    const int64_t c = layout.resample_channels;
    const std::string name = up ? "upsamplers" : "downsamplers";
    switch (layout.resampler) {
      case Resampler::none:
        break;
      case Resampler::conv:
        if (up)
          upsample_ = Upsample2D(c);
        else
          downsample_ = Downsample2D(c, o.downsample_padding());
        register_module(name, up ? nn::ModuleList(upsample_) : nn::ModuleList(downsample_));
        break;
      case Resampler::resnet: {
        auto spec = layout.resnets.back();
        spec.in_channels = spec.out_channels = c;
        spec.resample = up ? Resample::up : Resample::down;
        resample_resnet_ = ResnetBlock2D(spec);
        register_module(name, nn::ModuleList(resample_resnet_));
        break;
      }
    }
  }

  /// A down block: h through each residual block (and attention), every output kept in `skips`, then the
  /// downsampler, whose output is kept too.
  torch::Tensor down(torch::Tensor h, const torch::Tensor& temb, std::vector<torch::Tensor>& skips) {
    for (size_t i = 0; i < resnets_.size(); ++i) {
      h = resnets_[i]->forward(h, temb);
      if (!attentions_.empty()) h = attentions_[i]->forward(h);
      skips.push_back(h);
    }
    if (has_resampler()) {
      h = resample(h, temb);
      skips.push_back(h);
    }
    return h;
  }

  /// An up block: each residual block takes h concatenated with the last skip (popped), then attention; then
  /// the upsampler.
  torch::Tensor up(torch::Tensor h, const torch::Tensor& temb, std::vector<torch::Tensor>& skips) {
    for (size_t i = 0; i < resnets_.size(); ++i) {
      h = resnets_[i]->forward(torch::cat({h, skips.back()}, 1), temb);
      skips.pop_back();
      if (!attentions_.empty()) h = attentions_[i]->forward(h);
    }
    return has_resampler() ? resample(h, temb) : h;
  }

  /// The middle block: resnets[0], then (attention i, resnets[i + 1]) for each further residual block.
  torch::Tensor middle(torch::Tensor h, const torch::Tensor& temb) {
    h = resnets_[0]->forward(h, temb);
    for (size_t i = 1; i < resnets_.size(); ++i) {
      if (!attentions_.empty()) h = attentions_[i - 1]->forward(h);
      h = resnets_[i]->forward(h, temb);
    }
    return h;
  }

 private:
  // The middle block has one attention fewer than residual blocks; the layout marks it by its resampler
  // channels of -1.
  static bool mid(const BlockLayout& layout) { return layout.resample_channels < 0; }
  bool has_resampler() const { return upsample_ || downsample_ || resample_resnet_; }
  torch::Tensor resample(const torch::Tensor& h, const torch::Tensor& temb) {
    if (upsample_) return upsample_(h);
    if (downsample_) return downsample_(h);
    return resample_resnet_(h, temb);
  }

  std::vector<ResnetBlock2D> resnets_;
  std::vector<Attention> attentions_;
  Upsample2D upsample_{nullptr};
  Downsample2D downsample_{nullptr};
  ResnetBlock2D resample_resnet_{nullptr};
};
TORCH_MODULE(Block);

/// The block layouts of a configuration (validated first): down blocks, the middle block (unset when
/// `mid_block_type` is null) and up blocks, with every residual block's widths, as `UNet2DModel.__init__`
/// and `get_down_block` / `get_up_block` compute them.
struct UNetLayout {
  std::vector<BlockLayout> down;
  std::optional<BlockLayout> mid;
  std::vector<BlockLayout> up;
};

inline UNetLayout make_layout(const DiffusersUNetOptions& o) {
  o.validate();
  const auto& widths = o.block_out_channels();
  const auto levels = widths.size();
  const auto activation = activation_from(o.act_fn());
  const bool scale_shift = o.resnet_time_scale_shift() == "scale_shift";
  const auto resnet = [&](int64_t in, int64_t out) {
    return ResnetBlock2DImpl::Options{in,           out,        o.time_embed_dim(), o.norm_num_groups(),
                                      o.norm_eps(), activation, scale_shift,        1.0,
                                      o.dropout()};
  };
  UNetLayout layout;
  int64_t output_channel = widths[0];
  for (size_t i = 0; i < levels; ++i) {
    const int64_t input_channel = output_channel;
    output_channel = widths[i];
    const bool final_block = i + 1 == levels;
    BlockLayout block;
    block.attention = DiffusersUNetOptions::block_kind(o.down_block_types()[i]) == "AttnDownBlock2D";
    for (int64_t j = 0; j < o.layers_per_block(); ++j)
      block.resnets.push_back(resnet(j == 0 ? input_channel : output_channel, output_channel));
    // DownBlock2D always downsamples by convolution; AttnDownBlock2D as downsample_type says.
    if (!final_block)
      block.resampler =
          block.attention && o.downsample_type() == "resnet" ? Resampler::resnet : Resampler::conv;
    block.resample_channels = output_channel;
    layout.down.push_back(block);
  }
  if (o.mid_block_type()) {
    BlockLayout mid;
    mid.attention = o.add_attention();
    auto spec = resnet(widths.back(), widths.back());
    spec.output_scale_factor = o.mid_block_scale_factor();
    mid.resnets = {spec, spec};
    mid.resample_channels = -1;  // marks the middle block (one attention between two residual blocks)
    layout.mid = mid;
  }
  std::vector<int64_t> reversed(widths.rbegin(), widths.rend());
  output_channel = reversed[0];
  for (size_t i = 0; i < levels; ++i) {
    const int64_t prev_output_channel = output_channel;
    output_channel = reversed[i];
    const int64_t input_channel = reversed[std::min(i + 1, levels - 1)];
    const bool final_block = i + 1 == levels;
    BlockLayout block;
    block.attention = DiffusersUNetOptions::block_kind(o.up_block_types()[i]) == "AttnUpBlock2D";
    const int64_t layers = o.layers_per_block() + 1;
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip = j == layers - 1 ? input_channel : output_channel;
      const int64_t in = j == 0 ? prev_output_channel : output_channel;
      block.resnets.push_back(resnet(in + skip, output_channel));
    }
    if (!final_block)
      block.resampler =
          block.attention && o.upsample_type() == "resnet" ? Resampler::resnet : Resampler::conv;
    block.resample_channels = output_channel;
    layout.up.push_back(block);
  }
  return layout;
}

}  // namespace diffusers

/// diffusers' `UNet2DModel`: `forward(sample, timestep)` returns what `UNet2DModel(sample, timestep).sample`
/// returns in Python. Submodules are registered under diffusers' names and in its order (`conv_in`,
/// `time_embedding`, `down_blocks`, `up_blocks`, `mid_block`, `conv_norm_out`, `conv_out`), so
/// `named_parameters()` equals diffusers' `state_dict()` key for key. Parameters are initialised with
/// LibTorch's defaults (load weights before use). Mixed precision as the ADM UNet (`set_compute_dtype`), and
/// the conversion of the output to eps that makes it a ScoreModel (`set_prediction`, DiffusersUNet).
class DiffusersUNetImpl : public torch::nn::Module {
 public:
  /// Builds the network; throws c10::Error when `options.validate()` does.
  explicit DiffusersUNetImpl(DiffusersUNetOptions options) : options_(std::move(options)) {
    namespace nn = torch::nn;
    const auto layout = diffusers::make_layout(options_);
    const auto& o = options_;
    const int64_t width0 = o.block_out_channels()[0];
    conv_in_ =
        register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(o.in_channels(), width0, 3).padding(1)));
    linear_1_ = nn::Linear(width0, o.time_embed_dim());
    linear_2_ = nn::Linear(o.time_embed_dim(), o.time_embed_dim());
    auto time_embedding = std::make_shared<nn::Module>();
    time_embedding->register_module("linear_1", linear_1_);
    time_embedding->register_module("linear_2", linear_2_);
    register_module("time_embedding", time_embedding);
    auto down_blocks = register_module("down_blocks", nn::ModuleList());
    for (const auto& block : layout.down) {
      down_.emplace_back(block, o, false, o.norm_num_groups(), 1.0);
      down_blocks->push_back(down_.back());
    }
    auto up_blocks = register_module("up_blocks", nn::ModuleList());
    for (const auto& block : layout.up) {
      up_.emplace_back(block, o, true, o.norm_num_groups(), 1.0);
      up_blocks->push_back(up_.back());
    }
    if (layout.mid) {
      // UNetMidBlock2D: attn_norm_num_groups, else norm_num_groups with "default" and none with
      // "scale_shift".
      std::optional<int64_t> groups = o.attn_norm_num_groups();
      if (!groups && o.resnet_time_scale_shift() == "default") groups = o.norm_num_groups();
      mid_ = register_module("mid_block",
                             diffusers::Block(*layout.mid, o, false, groups, o.mid_block_scale_factor()));
    }
    conv_norm_out_ = register_module(
        "conv_norm_out", nn::GroupNorm(nn::GroupNormOptions(o.norm_num_groups(), width0).eps(o.norm_eps())));
    conv_out_ =
        register_module("conv_out", nn::Conv2d(nn::Conv2dOptions(width0, o.out_channels(), 3).padding(1)));
  }

  /// UNet2DModel's `.sample` for `sample` [B, in_channels, H, W] (H and W divisible by 2^(levels-1)) and
  /// `timestep`: [B], [1] or a scalar (broadcast to the batch, as diffusers does), integer or floating.
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep) {
    const auto& o = options_;
    TORCH_CHECK(sample.dim() == 4 && sample.size(1) == o.in_channels(),
                "UNet2DModel: expected a sample of shape [B, ", o.in_channels(), ", H, W], got ",
                sample.sizes());
    const int64_t factor = int64_t{1} << (o.block_out_channels().size() - 1);
    TORCH_CHECK(sample.size(2) % factor == 0 && sample.size(3) % factor == 0,
                "UNet2DModel: H and W must be divisible by ", factor, " (2^(levels-1)), got ",
                sample.sizes());
    TORCH_CHECK(timestep.dim() == 0 ||
                    (timestep.dim() == 1 && (timestep.size(0) == sample.size(0) || timestep.size(0) == 1)),
                "UNet2DModel: expected timesteps of shape [", sample.size(0), "], [1] or [], got ",
                timestep.sizes());
    const auto batch = sample.size(0);
    const auto timesteps = timestep.reshape({-1}).to(sample.device()).expand({batch});
    const int64_t width0 = o.block_out_channels()[0];
    auto temb =
        diffusers::timestep_embedding(timesteps, width0, o.flip_sin_to_cos(), frequencies(sample.device()));
    temb = linear_2_(torch::silu(linear_1_(temb.to(linear_1_->weight.scalar_type()))));

    auto x = o.center_input_sample() ? 2 * sample - 1.0 : sample;
    auto h = conv_in_(mixed_precision() ? x.to(compute_dtype_) : x.to(conv_in_->weight.scalar_type()));
    std::vector<torch::Tensor> skips{h};
    for (auto& block : down_) h = block->down(h, temb, skips);
    if (mid_) h = mid_->middle(h, temb);
    for (auto& block : up_) h = block->up(h, temb, skips);
    h = h.to(conv_out_->weight.scalar_type());
    return conv_out_(torch::silu(diffusers::group_norm(conv_norm_out_, h)));
  }

  /// The configuration the model was built with.
  const DiffusersUNetOptions& options() const { return options_; }

  /// Runs the convolutions and attention projections of `conv_in`, `down_blocks`, `mid_block` and `up_blocks`
  /// in `dtype`, as AdmUNetImpl::set_compute_dtype does for the ADM UNet: torch::kBFloat16 or torch::kHalf
  /// converts their weights and biases, and `forward` casts the input to it before `conv_in` and back to the
  /// parameter dtype before `conv_norm_out`. The timestep embedding MLP, the residual blocks'
  /// `time_emb_proj`, every GroupNorm (which normalises in float32) and the output layers stay in the other
  /// parameters' dtype; the attention softmax runs in float32. The other parameters' dtype (torch::kFloat32)
  /// converts back (the dropped bits stay dropped: reload the weights for exact ones). float16 needs CUDA.
  void set_compute_dtype(torch::ScalarType dtype) {
    const auto float_dtype = conv_out_->weight.scalar_type();
    TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kHalf || dtype == float_dtype,
                "DiffusersUNet::set_compute_dtype: expected torch::kBFloat16, torch::kHalf or the dtype of "
                "the model's "
                "other parameters (",
                float_dtype, "), got ", dtype);
    torch::NoGradGuard no_grad;
    std::vector<std::shared_ptr<torch::nn::Module>> parts{conv_in_.ptr()};
    for (auto& block : down_) parts.push_back(block.ptr());
    for (auto& block : up_) parts.push_back(block.ptr());
    if (mid_) parts.push_back(mid_.ptr());
    for (const auto& part : parts) {
      for (const auto& item : part->named_modules()) {
        const auto& name = item.key();
        const auto& module = item.value();
        const bool convolution = module->as<torch::nn::Conv2d>() != nullptr;
        const bool attention_projection =
            module->as<torch::nn::Linear>() != nullptr && name.find("time_emb_proj") == std::string::npos;
        if (!convolution && !attention_projection) continue;
        for (auto& parameter : module->parameters(/*recurse=*/false)) parameter.set_data(parameter.to(dtype));
      }
    }
    compute_dtype_ = dtype;
  }

  /// The dtype the blocks compute in: the parameters' unless `set_compute_dtype` chose a 16-bit one.
  torch::ScalarType compute_dtype() const {
    return mixed_precision() ? compute_dtype_ : conv_out_->weight.scalar_type();
  }

  /// How `epsilon` turns the output into eps: the scheduler's `prediction_type` and, for "sample" and
  /// "v_prediction", its alphas_cumprod over the training timesteps (abar_t for t = 0 ... N-1, float64).
  void set_prediction(DiffusersPrediction prediction, std::vector<double> alphas_cumprod = {}) {
    TORCH_CHECK(prediction == DiffusersPrediction::epsilon || !alphas_cumprod.empty(),
                "DiffusersUNet::set_prediction: 'sample' and 'v_prediction' outputs need the scheduler's "
                "alphas_cumprod");
    for (const double abar : alphas_cumprod)
      TORCH_CHECK(abar > 0.0 && abar < 1.0,
                  "DiffusersUNet::set_prediction: alphas_cumprod must lie in (0, 1), got ", abar);
    prediction_ = prediction;
    alphas_cumprod_ = std::move(alphas_cumprod);
    constants_ = detail::make_tensor_cache();
  }

  DiffusersPrediction prediction() const { return prediction_; }

  /// Whether the output carries the learned-variance channels after eps (out_channels = 2 * in_channels,
  /// diffusers' `learned_range` layout, which is improved DDPM's and diffpost's).
  bool learns_variance() const { return options_.out_channels() == 2 * options_.in_channels(); }

  /// eps (then the variance channels, if any) for x_t [B, C, H, W] and original integer timesteps t [B]:
  /// the output itself for "epsilon"; for "sample" (x0) eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t); for
  /// "v_prediction" eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t (diffusers' DDIMScheduler.step).
  torch::Tensor epsilon(const torch::Tensor& x_t, const torch::Tensor& t) {
    auto output = forward(x_t, t);
    const int64_t channels = options_.in_channels();
    TORCH_CHECK(output.size(1) == channels || output.size(1) == 2 * channels,
                "DiffusersUNet: the model outputs ", output.size(1), " channels for ", channels,
                " input channels; a score model must output eps (C channels) or eps and variance (2C)");
    if (prediction_ == DiffusersPrediction::epsilon) return output;
    TORCH_CHECK(!at::isFloatingType(t.scalar_type()) || torch::equal(t, t.round()),
                "DiffusersUNet: converting '",
                prediction_ == DiffusersPrediction::sample ? "sample" : "v_prediction",
                "' outputs to eps needs integer timesteps, got ", t);
    const auto steps = t.reshape({-1}).to(torch::kLong).expand({x_t.size(0)});
    const auto n = static_cast<int64_t>(alphas_cumprod_.size());
    TORCH_CHECK(steps.min().item<int64_t>() >= 0 && steps.max().item<int64_t>() < n,
                "DiffusersUNet: timesteps must lie in [0, ", n, ") of the scheduler's training steps, got ",
                t);
    const auto table = constants_->get(
        {"alphas_cumprod", {n}, torch::TensorOptions().dtype(torch::kFloat64).device(x_t.device())},
        [&] { return torch::tensor(alphas_cumprod_, torch::kFloat64).to(x_t.device()); });
    const auto abar =
        table.index_select(0, steps.to(x_t.device())).to(output.scalar_type()).view({-1, 1, 1, 1});
    const auto prediction = output.narrow(1, 0, channels);
    const auto x = x_t.to(output.scalar_type());
    const auto eps = prediction_ == DiffusersPrediction::v_prediction
                         ? abar.sqrt() * prediction + (1 - abar).sqrt() * x
                         : (x - abar.sqrt() * prediction) / (1 - abar).sqrt();
    return output.size(1) == channels ? eps : torch::cat({eps, output.narrow(1, channels, channels)}, 1);
  }

  void pretty_print(std::ostream& os) const override { os << "diffpost::DiffusersUNet(" << options_ << ")"; }

 private:
  bool mixed_precision() const {
    return compute_dtype_ == torch::kBFloat16 || compute_dtype_ == torch::kHalf;
  }

  /// The timestep frequencies on `device`, computed on the CPU once and kept per device.
  torch::Tensor frequencies(const torch::Device& device) {
    const int64_t half = options_.block_out_channels()[0] / 2;
    return constants_->get(
        {"timestep_frequencies", {half}, torch::TensorOptions().device(device).dtype(torch::kFloat32)},
        [&] { return diffusers::timestep_frequencies(half, options_.freq_shift()).to(device); });
  }

  DiffusersUNetOptions options_;
  torch::ScalarType compute_dtype_ = torch::kFloat;
  DiffusersPrediction prediction_ = DiffusersPrediction::epsilon;
  std::vector<double> alphas_cumprod_;
  detail::TensorCache constants_ = detail::make_tensor_cache();
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  torch::nn::Linear linear_1_{nullptr}, linear_2_{nullptr};
  std::vector<diffusers::Block> down_, up_;
  diffusers::Block mid_{nullptr};
  torch::nn::GroupNorm conv_norm_out_{nullptr};
};

/// Module holder for DiffusersUNetImpl that models diffpost::ScoreModel: `model(x_t, t)` returns eps (then
/// the variance channels when `learns_variance()`), converted from the model's `prediction()`;
/// `model->forward(x, t)` returns UNet2DModel's raw `.sample`. Copies share the module.
class DiffusersUNet : public torch::nn::ModuleHolder<DiffusersUNetImpl> {
 public:
  using torch::nn::ModuleHolder<DiffusersUNetImpl>::ModuleHolder;

  /// A model with LibTorch's default initialisation for `options`.
  explicit DiffusersUNet(const DiffusersUNetOptions& options)
      : ModuleHolder(std::make_shared<DiffusersUNetImpl>(options)) {}

  /// True when the output carries variance channels after eps (out_channels = 2 * in_channels).
  [[nodiscard]] bool learns_variance() const { return impl_->learns_variance(); }

  /// eps (and the variance channels) for x_t [B, C, H, W] and original integer timesteps t [B].
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) {
    return impl_->epsilon(x_t, t);
  }
};

}  // namespace diffpost
