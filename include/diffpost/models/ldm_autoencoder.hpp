// The first-stage autoencoders of latent diffusion (Rombach et al., "High-Resolution Image Synthesis with
// Latent Diffusion Models", CVPR 2022), as published in CompVis/latent-diffusion: the encoder and decoder of
// `ldm/modules/diffusionmodules/model.py` (`Encoder`, `Decoder`) with either
// - taming-transformers' codebook (`VectorQuantizer2` of `taming/modules/vqvae/quantize.py`) behind a 1x1
//   `quant_conv`: ldm's `VQModelInterface`, the `vq-f4` model of the FFHQ/CelebA-HQ/LSUN LDMs; or
// - a diagonal Gaussian posterior (`ldm/modules/distributions/distributions.py`): ldm's `AutoencoderKL`, the
//   `kl-f8` model that Stable Diffusion uses.
//
// The module tree keeps ldm's parameter names in its `state_dict()` order
// (`encoder.down.1.block.0.nin_shortcut. weight`, `decoder.up.2.upsample.conv.bias`,
// `encoder.mid.attn_1.q.weight`, `quantize.embedding.weight`, `quant_conv.weight`, `post_quant_conv.bias`,
// ...), so the `first_stage_model.*` entries of an LDM checkpoint, with that prefix removed, load strictly
// with `load_checkpoint` / `load_state_dict`. The numerics follow ldm: GroupNorm(32, eps 1e-6), swish,
// residual blocks without a timestep embedding, single-head attention over all channels (GroupNorm and
// softmax in float32 when the model runs in bfloat16 or float16), downsampling by a stride-2 3x3 convolution
// after padding one zero row and column at the bottom and right, nearest x2 upsampling followed by a 3x3
// convolution, and the decoder's num_res_blocks + 1 blocks per level. No file is read here. docs/models.md
// ("Latent diffusion autoencoders").
#pragma once

#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// Which bottleneck an LDM autoencoder has: ldm's `VQModelInterface` (a codebook) or `AutoencoderKL` (a
/// diagonal Gaussian posterior).
enum class LdmAutoencoderKind { vq, kl };

/// Hyper-parameters of an LDM autoencoder, named after the `model.params` of ldm's first-stage configs
/// (`embed_dim`, `n_embed`) and their `ddconfig` (the other fields), with `vq_f4()` and `kl_f8()` for the
/// published `models/first_stage_models/vq-f4/config.yaml` and `kl-f8/config.yaml`. Not options: the
/// reference's `resamp_with_conv` (always true in its configs) and `attn_type` (vanilla attention only).
/// `validate()` checks the combination.
struct LdmAutoencoderOptions {
  TORCH_ARG(LdmAutoencoderKind, kind) = LdmAutoencoderKind::vq;
  /// Channels of the latent that the diffusion model sees (the output of `quant_conv`).
  TORCH_ARG(int64_t, embed_dim) = 3;
  /// Codebook size (VQ only).
  TORCH_ARG(int64_t, n_embed) = 8192;
  /// Whether the encoder outputs 2 * z_channels (mean and log-variance): true for KL, false for VQ.
  TORCH_ARG(bool, double_z) = false;
  /// Channels between the encoder/decoder and the 1x1 `quant_conv` / `post_quant_conv`.
  TORCH_ARG(int64_t, z_channels) = 3;
  /// Training resolution: only decides at which levels `attn_resolutions` puts attention (any input size
  /// divisible by 2^(levels-1) runs).
  TORCH_ARG(int64_t, resolution) = 256;
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, out_ch) = 3;
  /// Base width; level i has ch * ch_mult[i] channels (all multiples of the 32 GroupNorm groups).
  TORCH_ARG(int64_t, ch) = 128;
  TORCH_ARG(std::vector<int64_t>, ch_mult) = {1, 2, 4};
  /// Residual blocks per level in the encoder (the decoder has one more).
  TORCH_ARG(int64_t, num_res_blocks) = 2;
  /// Feature-map sizes (relative to `resolution`) with attention after each residual block; the middle block
  /// always has one.
  TORCH_ARG(std::vector<int64_t>, attn_resolutions) = {};
  TORCH_ARG(double, dropout) = 0.0;

 public:
  /// ldm's `vq-f4`: 3 x 64 x 64 latents for 256 x 256 images, codebook 8192 x 3 (the first stage of the
  /// FFHQ, CelebA-HQ and LSUN bedrooms LDMs).
  static LdmAutoencoderOptions vq_f4() { return LdmAutoencoderOptions{}; }

  /// ldm's `kl-f8` (Stable Diffusion's VAE): 4 x 32 x 32 latents for 256 x 256 images.
  static LdmAutoencoderOptions kl_f8() {
    return LdmAutoencoderOptions{}
        .kind(LdmAutoencoderKind::kl)
        .embed_dim(4)
        .double_z(true)
        .z_channels(4)
        .ch_mult({1, 2, 4, 4});
  }

  /// Number of resolution levels (len(ch_mult)); images are downsampled by 2^(levels-1).
  [[nodiscard]] int64_t levels() const { return static_cast<int64_t>(ch_mult_.size()); }

  /// The factor between image and latent sizes, 2^(levels-1).
  [[nodiscard]] int64_t downsampling_factor() const { return int64_t{1} << (levels() - 1); }

  /// Throws c10::Error naming the first unsupported or inconsistent field.
  void validate() const {
    const auto fail_unless = [](bool ok, const auto&... message) {
      TORCH_CHECK(ok, "LdmAutoencoderOptions: ", message...);
    };
    const bool vq = kind_ == LdmAutoencoderKind::vq;
    fail_unless(vq != double_z_,
                vq ? "a VQ autoencoder needs double_z false (ldm's VQModel)"
                   : "a KL autoencoder needs double_z true (ldm's AutoencoderKL asserts it)");
    fail_unless(embed_dim_ > 0 && z_channels_ > 0 && in_channels_ > 0 && out_ch_ > 0,
                "embed_dim, z_channels, in_channels and out_ch must be positive, got ", embed_dim_, ", ",
                z_channels_, ", ", in_channels_, ", ", out_ch_);
    fail_unless(!vq || n_embed_ > 0, "n_embed (the codebook size) must be positive, got ", n_embed_);
    fail_unless(levels() >= 1 && levels() <= 16, "ch_mult must list 1 to 16 multipliers, got ", levels());
    fail_unless(num_res_blocks_ >= 1 && num_res_blocks_ <= 16, "num_res_blocks must be 1 to 16, got ",
                num_res_blocks_);
    fail_unless(resolution_ > 0, "resolution must be positive, got ", resolution_);
    fail_unless(dropout_ >= 0.0 && dropout_ < 1.0, "dropout must be in [0, 1), got ", dropout_);
    fail_unless(ch_ > 0 && ch_ % 32 == 0,
                "ch must be a positive multiple of 32 (GroupNorm's 32 groups), got ", ch_);
    for (const int64_t mult : ch_mult_)
      fail_unless(mult > 0 && ch_ * mult <= 65536, "ch_mult entries must be positive, got ", mult);
  }
};

/// Prints the options as `LdmAutoencoder(kind=vq, embed_dim=3, n_embed=8192, z_channels=3, ch=128, ...)`.
inline std::ostream& operator<<(std::ostream& os, const LdmAutoencoderOptions& o) {
  auto list = [&](const std::vector<int64_t>& values) {
    os << "[";
    for (size_t i = 0; i < values.size(); ++i) os << (i ? ", " : "") << values[i];
    os << "]";
  };
  const bool vq = o.kind() == LdmAutoencoderKind::vq;
  os << "LdmAutoencoder(kind=" << (vq ? "vq" : "kl") << ", embed_dim=" << o.embed_dim();
  if (vq) os << ", n_embed=" << o.n_embed();
  os << ", double_z=" << (o.double_z() ? "true" : "false") << ", z_channels=" << o.z_channels()
     << ", resolution=" << o.resolution() << ", in_channels=" << o.in_channels() << ", out_ch=" << o.out_ch()
     << ", ch=" << o.ch() << ", ch_mult=";
  list(o.ch_mult());
  os << ", num_res_blocks=" << o.num_res_blocks() << ", attn_resolutions=";
  list(o.attn_resolutions());
  return os << ", dropout=" << o.dropout() << ")";
}

namespace ldm {

/// ldm's `nonlinearity`: x * sigmoid(x).
inline torch::Tensor swish(const torch::Tensor& x) {
  return x * torch::sigmoid(x);
}

/// float32 for the 16-bit floating types, the dtype itself otherwise (where normalisation and softmax run).
inline torch::ScalarType at_least_float32(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 || dtype == torch::kHalf ? torch::kFloat32 : dtype;
}

/// ldm's `Normalize`: GroupNorm(32 groups, eps 1e-6, affine), computed in float32 for 16-bit inputs and
/// returned in the input's dtype (keeps half-precision statistics out of bfloat16 / float16 runs).
class NormalizeImpl : public torch::nn::Module {
 public:
  explicit NormalizeImpl(int64_t channels) : channels_(channels) {
    weight = register_parameter("weight", torch::ones({channels}));
    bias = register_parameter("bias", torch::zeros({channels}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto dtype = at_least_float32(x.scalar_type());
    return torch::group_norm(x.to(dtype), 32, weight.to(dtype), bias.to(dtype), 1e-6).to(x.scalar_type());
  }
  void pretty_print(std::ostream& os) const override {
    os << "diffpost::ldm::Normalize(" << channels_ << ")";
  }

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  int64_t channels_;
};
TORCH_MODULE(Normalize);

inline torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1, int64_t padding = 1) {
  // NOLINTNEXTLINE(modernize-return-braced-init-list): Conv2d's constructor from options is explicit
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(padding));
}

inline torch::nn::Conv2d conv1x1(int64_t in, int64_t out) {
  // NOLINTNEXTLINE(modernize-return-braced-init-list): Conv2d's constructor from options is explicit
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1));
}

/// ldm's `ResnetBlock` without a timestep embedding (`temb_channels=0`): norm1, swish, conv1, norm2, swish,
/// dropout, conv2, plus the input through a 1x1 `nin_shortcut` when the width changes.
class ResnetBlockImpl : public torch::nn::Module {
 public:
  ResnetBlockImpl(int64_t in_channels, int64_t out_channels, double dropout) {
    norm1_ = register_module("norm1", Normalize(in_channels));
    conv1_ = register_module("conv1", conv3x3(in_channels, out_channels));
    norm2_ = register_module("norm2", Normalize(out_channels));
    dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
    conv2_ = register_module("conv2", conv3x3(out_channels, out_channels));
    if (in_channels != out_channels)
      nin_shortcut_ = register_module("nin_shortcut", conv1x1(in_channels, out_channels));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = conv1_(swish(norm1_(x)));
    h = conv2_(dropout_(swish(norm2_(h))));
    return (nin_shortcut_ ? nin_shortcut_(x) : x) + h;
  }

 private:
  Normalize norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, nin_shortcut_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(ResnetBlock);

/// ldm's `AttnBlock`: one head over all C channels with 1x1 convolutions q, k, v, proj_out, weights
/// softmax(q^T k / sqrt(C)) over the keys (in float32 for 16-bit inputs), and a residual connection.
class AttnBlockImpl : public torch::nn::Module {
 public:
  explicit AttnBlockImpl(int64_t channels) {
    norm_ = register_module("norm", Normalize(channels));
    q_ = register_module("q", conv1x1(channels, channels));
    k_ = register_module("k", conv1x1(channels, channels));
    v_ = register_module("v", conv1x1(channels, channels));
    proj_out_ = register_module("proj_out", conv1x1(channels, channels));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto h = norm_(x);
    const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
    const auto q = q_(h).reshape({batch, channels, height * width}).transpose(1, 2);  // B, HW, C
    const auto k = k_(h).reshape({batch, channels, height * width});                  // B, C, HW
    const auto v = v_(h).reshape({batch, channels, height * width});                  // B, C, HW
    const auto logits = torch::bmm(q, k) * std::pow(static_cast<double>(channels), -0.5);
    const auto weights = torch::softmax(logits.to(at_least_float32(logits.scalar_type())), 2)
                             .to(v.scalar_type());  // B, HW_q, HW_k
    const auto attended = torch::bmm(v, weights.transpose(1, 2)).reshape({batch, channels, height, width});
    return x + proj_out_(attended);
  }

 private:
  Normalize norm_{nullptr};
  torch::nn::Conv2d q_{nullptr}, k_{nullptr}, v_{nullptr}, proj_out_{nullptr};
};
TORCH_MODULE(AttnBlock);

/// ldm's `Downsample` with a convolution: pad (0, 1, 0, 1) with zeros, then a stride-2 3x3 convolution.
class DownsampleImpl : public torch::nn::Module {
 public:
  explicit DownsampleImpl(int64_t channels) {
    conv_ = register_module("conv", conv3x3(channels, channels, /*stride=*/2, /*padding=*/0));
  }
  torch::Tensor forward(const torch::Tensor& x) { return conv_(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0)); }

 private:
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Downsample);

/// ldm's `Upsample` with a convolution: nearest-neighbour x2, then a 3x3 convolution - the ADM UNet's module,
/// whose parameter has the same name.
using Upsample = adm::Upsample;

/// Whether a level of the encoder or decoder ends by halving, doubling or keeping its size.
enum class Resample { none, down, up };

/// One resolution level of the encoder or decoder (ldm's `down[i]` / `up[i]`): residual blocks `block.j`, an
/// attention block `attn.j` after each when the level's size is in `attn_resolutions`, then `downsample` or
/// `upsample` unless it is the last level visited.
class LevelImpl : public torch::nn::Module {
 public:
  LevelImpl(int64_t in_channels, int64_t out_channels, int64_t blocks, bool attention, Resample resample,
            double dropout) {
    block_ = register_module("block", torch::nn::ModuleList());
    attn_ = register_module("attn", torch::nn::ModuleList());
    for (int64_t j = 0; j < blocks; ++j) {
      block_->push_back(ResnetBlock(j == 0 ? in_channels : out_channels, out_channels, dropout));
      if (attention) attn_->push_back(AttnBlock(out_channels));
    }
    if (resample == Resample::down) downsample_ = register_module("downsample", Downsample(out_channels));
    if (resample == Resample::up) upsample_ = register_module("upsample", Upsample(out_channels));
  }
  torch::Tensor forward(torch::Tensor h) {
    for (size_t j = 0; j < block_->size(); ++j) {
      h = block_[j]->as<ResnetBlock>()->forward(h);
      if (!attn_->is_empty()) h = attn_[j]->as<AttnBlock>()->forward(h);
    }
    if (downsample_) h = downsample_(h);
    if (upsample_) h = upsample_(h);
    return h;
  }

 private:
  torch::nn::ModuleList block_{nullptr}, attn_{nullptr};
  Downsample downsample_{nullptr};
  Upsample upsample_{nullptr};
};
TORCH_MODULE(Level);

/// The middle of the encoder and decoder (ldm's `mid`): block_1, attn_1, block_2 at the lowest resolution.
class MidImpl : public torch::nn::Module {
 public:
  MidImpl(int64_t channels, double dropout) {
    block_1_ = register_module("block_1", ResnetBlock(channels, channels, dropout));
    attn_1_ = register_module("attn_1", AttnBlock(channels));
    block_2_ = register_module("block_2", ResnetBlock(channels, channels, dropout));
  }
  torch::Tensor forward(const torch::Tensor& x) { return block_2_(attn_1_(block_1_(x))); }

 private:
  ResnetBlock block_1_{nullptr}, block_2_{nullptr};
  AttnBlock attn_1_{nullptr};
};
TORCH_MODULE(Mid);

inline bool has_attention(const LdmAutoencoderOptions& o, int64_t size) {
  const auto& sizes = o.attn_resolutions();
  return std::find(sizes.begin(), sizes.end(), size) != sizes.end();
}

/// ldm's `Encoder`: conv_in, the levels from the finest down (downsampling after all but the last), mid,
/// norm_out, swish, conv_out to z_channels (2 * z_channels with double_z).
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const LdmAutoencoderOptions& o) {
    const auto& mult = o.ch_mult();
    conv_in_ = register_module("conv_in", conv3x3(o.in_channels(), o.ch()));
    down_ = register_module("down", torch::nn::ModuleList());
    int64_t size = o.resolution();
    for (int64_t i = 0; i < o.levels(); ++i) {
      const bool last = i == o.levels() - 1;
      down_->push_back(Level(o.ch() * (i == 0 ? 1 : mult[i - 1]), o.ch() * mult[i], o.num_res_blocks(),
                             has_attention(o, size), last ? Resample::none : Resample::down, o.dropout()));
      if (!last) size /= 2;
    }
    const int64_t top = o.ch() * mult.back();
    mid_ = register_module("mid", Mid(top, o.dropout()));
    norm_out_ = register_module("norm_out", Normalize(top));
    conv_out_ = register_module("conv_out", conv3x3(top, o.double_z() ? 2 * o.z_channels() : o.z_channels()));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = conv_in_(x);
    for (const auto& level : *down_) h = level->as<Level>()->forward(h);
    return conv_out_(swish(norm_out_(mid_(h))));
  }

  /// The dtype of the convolutions' weights (LdmAutoencoderImpl::set_compute_dtype).
  torch::ScalarType conv_dtype() const { return conv_in_->weight.scalar_type(); }

 private:
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  torch::nn::ModuleList down_{nullptr};
  Mid mid_{nullptr};
  Normalize norm_out_{nullptr};
};
TORCH_MODULE(Encoder);

/// ldm's `Decoder`: conv_in from z_channels, mid, the levels from the coarsest up with num_res_blocks + 1
/// blocks each (upsampling after all but level 0), norm_out, swish, conv_out to out_ch. `up.i` is level i, as
/// in ldm, which builds them coarsest first and prepends each.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const LdmAutoencoderOptions& o) {
    const auto& mult = o.ch_mult();
    const int64_t levels = o.levels(), top = o.ch() * mult.back();
    conv_in_ = register_module("conv_in", conv3x3(o.z_channels(), top));
    mid_ = register_module("mid", Mid(top, o.dropout()));
    up_ = register_module("up", torch::nn::ModuleList());
    const int64_t coarsest = o.resolution() / (int64_t{1} << (levels - 1));
    for (int64_t i = 0; i < levels; ++i) {
      const int64_t in_channels = o.ch() * (i == levels - 1 ? mult.back() : mult[i + 1]);
      const int64_t size = coarsest << (levels - 1 - i);
      up_->push_back(Level(in_channels, o.ch() * mult[i], o.num_res_blocks() + 1, has_attention(o, size),
                           i == 0 ? Resample::none : Resample::up, o.dropout()));
    }
    norm_out_ = register_module("norm_out", Normalize(o.ch() * mult[0]));
    conv_out_ = register_module("conv_out", conv3x3(o.ch() * mult[0], o.out_ch()));
  }
  torch::Tensor forward(const torch::Tensor& z) {
    auto h = mid_(conv_in_(z));
    for (int64_t i = static_cast<int64_t>(up_->size()) - 1; i >= 0; --i) h = up_[i]->as<Level>()->forward(h);
    return conv_out_(swish(norm_out_(h)));
  }

  /// The dtype of the convolutions' weights (LdmAutoencoderImpl::set_compute_dtype).
  torch::ScalarType conv_dtype() const { return conv_in_->weight.scalar_type(); }

 private:
  torch::nn::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  torch::nn::ModuleList up_{nullptr};
  Mid mid_{nullptr};
  Normalize norm_out_{nullptr};
};
TORCH_MODULE(Decoder);

/// taming's `VectorQuantizer2` at inference (no index remapping): each latent vector is replaced by its
/// nearest codebook entry `embedding.weight[k]` (squared distances |z|^2 + |e|^2 - 2 z.e as in the reference,
/// computed in float32), and the result carries the straight-through gradient z + (z_q - z).detach().
class VectorQuantizerImpl : public torch::nn::Module {
 public:
  VectorQuantizerImpl(int64_t n_embed, int64_t embed_dim) {
    embedding = register_module("embedding", torch::nn::Embedding(n_embed, embed_dim));
    torch::NoGradGuard no_grad;
    embedding->weight.uniform_(-1.0 / static_cast<double>(n_embed), 1.0 / static_cast<double>(n_embed));
  }

  /// Index of the nearest codebook entry for each position of z [B, embed_dim, H, W]: int64 [B, H, W].
  torch::Tensor indices(const torch::Tensor& z) {
    torch::NoGradGuard no_grad;
    const int64_t dim = embedding->weight.size(1);
    const auto flat = z.permute({0, 2, 3, 1}).reshape({-1, dim}).to(torch::kFloat32);
    const auto codebook = embedding->weight.to(torch::kFloat32);
    const auto distances =
        flat.pow(2).sum(1, /*keepdim=*/true) + codebook.pow(2).sum(1) - 2 * torch::matmul(flat, codebook.t());
    return distances.argmin(1).reshape({z.size(0), z.size(2), z.size(3)});
  }

  /// The codebook entries of `indices` [B, H, W] as a latent [B, embed_dim, H, W] (taming's
  /// `get_codebook_entry` without remapping).
  torch::Tensor lookup(const torch::Tensor& indices) { return embedding(indices).permute({0, 3, 1, 2}); }

  /// The quantized latent with the straight-through estimator: its value is the nearest codebook entry, its
  /// gradient with respect to z the identity.
  torch::Tensor forward(const torch::Tensor& z) {
    const auto z_q = lookup(indices(z)).to(z.scalar_type());
    return z + (z_q - z).detach();
  }

  torch::nn::Embedding embedding{nullptr};
};
TORCH_MODULE(VectorQuantizer);

}  // namespace ldm

/// ldm's `DiagonalGaussianDistribution` over latents: `mean` and `logvar` (clamped to [-30, 20]) each
/// [B, embed_dim, h, w].
struct LdmPosterior {
  torch::Tensor mean;
  torch::Tensor logvar;

  /// exp(logvar / 2).
  [[nodiscard]] torch::Tensor stddev() const { return torch::exp(0.5 * logvar); }

  /// mean + std * N(0, I), the noise drawn from `generator` on its own device (the reference draws on the
  /// CPU and moves it, so a CPU generator reproduces its samples).
  [[nodiscard]] torch::Tensor sample(const at::Generator& generator) const {
    const auto noise =
        at::randn(mean.sizes(), generator, mean.options().device(generator.device())).to(mean.device());
    return mean + stddev() * noise;
  }
};

/// A first-stage autoencoder of latent diffusion: ldm's `VQModelInterface` (kind vq) or `AutoencoderKL`
/// (kind kl), with their parameter names (`encoder.*`, `decoder.*`, `quantize.embedding.weight` for VQ,
/// `quant_conv.*`, `post_quant_conv.*`), so an LDM checkpoint's `first_stage_model.*` entries, prefix
/// removed, load strictly. Images are [B, in_channels, H, W] with H and W divisible by 2^(levels-1); latents
/// are [B, embed_dim, H / 2^(levels-1), W / 2^(levels-1)]. Encode and decode are differentiable (VQ decoding
/// through the straight-through estimator). They compute in the dtype of the model's parameters on the
/// input's device (which must be the model's) and return the input's dtype, so a model moved
/// `->to(torch::kBFloat16)` takes float32 images. The reference's losses, EMA and training steps are not part
/// of this module.
class LdmAutoencoderImpl : public torch::nn::Module {
 public:
  explicit LdmAutoencoderImpl(LdmAutoencoderOptions options) : options_(std::move(options)) {
    options_.validate();
    const auto& o = options_;
    const bool vq = o.kind() == LdmAutoencoderKind::vq;
    encoder_ = register_module("encoder", ldm::Encoder(o));
    decoder_ = register_module("decoder", ldm::Decoder(o));
    if (vq) quantize_ = register_module("quantize", ldm::VectorQuantizer(o.n_embed(), o.embed_dim()));
    const int64_t moments = vq ? 1 : 2;
    quant_conv_ =
        register_module("quant_conv", ldm::conv1x1(moments * o.z_channels(), moments * o.embed_dim()));
    post_quant_conv_ = register_module("post_quant_conv", ldm::conv1x1(o.embed_dim(), o.z_channels()));
  }

  /// `quant_conv(encoder(x))`: for VQ the latent before quantization, for KL the posterior's mean and
  /// log-variance stacked along channels (not yet clamped).
  torch::Tensor moments(const torch::Tensor& x) {
    const auto input = prepare(x, "moments", options_.in_channels(), /*image=*/true);
    const auto h = encoder_(input.to(encoder_->conv_dtype())).to(input.scalar_type());
    return quant_conv_(h).to(x.scalar_type());
  }

  /// The latent the diffusion model sees: for VQ the latent before quantization (ldm's
  /// `VQModelInterface.encode`, as `LatentDiffusion.encode_first_stage` returns it), for KL the posterior
  /// mean (`AutoencoderKL.encode(x).mode()`).
  torch::Tensor encode(const torch::Tensor& x) {
    if (options_.kind() == LdmAutoencoderKind::vq) return moments(x);
    return posterior(x).mean;
  }

  /// KL only: a sample of the posterior, `encode(x).sample()` in ldm, with the noise from `generator`.
  torch::Tensor encode(const torch::Tensor& x, const at::Generator& generator) {
    TORCH_CHECK(options_.kind() == LdmAutoencoderKind::kl,
                "LdmAutoencoder::encode(x, generator): a VQ autoencoder has no posterior to sample; call "
                "encode(x)");
    return posterior(x).sample(generator);
  }

  /// KL only: ldm's `DiagonalGaussianDistribution(quant_conv(encoder(x)))`.
  LdmPosterior posterior(const torch::Tensor& x) {
    TORCH_CHECK(
        options_.kind() == LdmAutoencoderKind::kl,
        "LdmAutoencoder::posterior: only a KL autoencoder has a Gaussian posterior (this one is VQ; its "
        "encode(x) is the latent before quantization)");
    auto chunks = moments(x).chunk(2, 1);
    return {chunks[0], chunks[1].clamp(-30.0, 20.0)};
  }

  /// VQ only: the nearest codebook entries of z [B, embed_dim, h, w] with the straight-through gradient
  /// (taming's `VectorQuantizer2.forward`, first output).
  torch::Tensor quantize(const torch::Tensor& z) {
    require_vq("quantize");
    const auto latent = prepare(z, "quantize", options_.embed_dim(), /*image=*/false);
    return quantize_(latent).to(z.scalar_type());
  }

  /// VQ only: the codebook index of each latent position, int64 [B, h, w].
  torch::Tensor codebook_indices(const torch::Tensor& z) {
    require_vq("codebook_indices");
    return quantize_->indices(prepare(z, "codebook_indices", options_.embed_dim(), /*image=*/false));
  }

  /// Images from latents z [B, embed_dim, h, w]: `decoder(post_quant_conv(z))`, for VQ after quantizing z
  /// (ldm's `VQModelInterface.decode`, with `quantize` false its `force_not_quantize`).
  torch::Tensor decode(const torch::Tensor& z, bool quantize = true) {
    auto latent = prepare(z, "decode", options_.embed_dim(), /*image=*/false);
    if (quantize && quantize_) latent = quantize_(latent);
    return decoder_(post_quant_conv_(latent).to(decoder_->conv_dtype())).to(z.scalar_type());
  }

  /// decode(encode(x)): the reconstruction through the latent the diffusion model sees.
  torch::Tensor forward(const torch::Tensor& x) { return decode(encode(x)); }

  const LdmAutoencoderOptions& options() const { return options_; }

  /// Mixed precision, as AdmUNetImpl::set_compute_dtype for the UNet: torch::kBFloat16 or torch::kHalf
  /// converts the weights and biases of every convolution of the encoder and the decoder to it, and encode
  /// and decode then cast the image (or the latent after post_quant_conv) to it before the encoder (decoder)
  /// and back after. Everything else keeps the dtype of the model's other parameters (float32 for the
  /// published models): every GroupNorm (which also normalises in float32 whatever its input), the attention
  /// softmax (float32), the 1x1 quant_conv and post_quant_conv, and the codebook, so the latent, the
  /// nearest-code search and the KL posterior stay in full precision. Inputs and outputs keep the caller's
  /// dtype, and gradients flow as before. The dtype of the other parameters restores full precision, but the
  /// bits the conversion dropped stay dropped: load the checkpoint again for exact weights. Call it after
  /// loading (loading converts into whatever dtype the model holds), before or after moving the model to its
  /// device. float16 needs CUDA: LibTorch's CPU has no float16 convolutions.
  void set_compute_dtype(torch::ScalarType dtype) {
    const auto float_dtype = post_quant_conv_->weight.scalar_type();
    TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kHalf || dtype == float_dtype,
                "LdmAutoencoder::set_compute_dtype: expected torch::kBFloat16, torch::kHalf or the dtype of "
                "the model's other parameters (",
                float_dtype, "), got ", dtype);
    torch::NoGradGuard no_grad;
    const std::vector<std::shared_ptr<torch::nn::Module>> halves{encoder_.ptr(), decoder_.ptr()};
    for (const auto& half : halves) {
      for (const auto& module : half->modules(/*include_self=*/false)) {
        if (module->as<torch::nn::Conv2d>() == nullptr) continue;
        for (auto& parameter : module->parameters(/*recurse=*/false)) parameter.set_data(parameter.to(dtype));
      }
    }
  }

  /// The dtype the encoder's and decoder's convolutions compute in: the model's parameter dtype unless
  /// `set_compute_dtype` chose a 16-bit one.
  torch::ScalarType compute_dtype() const { return encoder_->conv_dtype(); }

  void pretty_print(std::ostream& os) const override { os << "diffpost::" << options_; }

 private:
  void require_vq(const char* what) const {
    TORCH_CHECK(quantize_, "LdmAutoencoder::", what,
                ": only a VQ autoencoder has a codebook (this one is KL)");
  }

  // Checks a [B, C, H, W] input and returns it in the parameters' dtype.
  torch::Tensor prepare(const torch::Tensor& x, const char* what, int64_t channels, bool image) const {
    TORCH_CHECK(x.dim() == 4 && x.size(1) == channels, "LdmAutoencoder::", what, ": expected ",
                image ? "images [B, " : "latents [B, ", channels, ", H, W], got ", x.sizes(),
                " (the model's ", image ? "in_channels" : "embed_dim", " is ", channels, ")");
    TORCH_CHECK(x.is_floating_point(), "LdmAutoencoder::", what, ": expected a floating-point tensor, got ",
                x.scalar_type());
    const auto& weight = post_quant_conv_->weight;
    TORCH_CHECK(x.device() == weight.device(), "LdmAutoencoder::", what, ": the input is on ", x.device(),
                " but the model on ", weight.device(), "; move one with .to()");
    if (image) {
      const int64_t factor = options_.downsampling_factor();
      TORCH_CHECK(x.size(2) % factor == 0 && x.size(3) % factor == 0 && x.size(2) > 0 && x.size(3) > 0,
                  "LdmAutoencoder::", what, ": height and width must be positive multiples of ", factor,
                  " (2^(levels-1) for ", options_.levels(), " levels), got ", x.size(2), " x ", x.size(3),
                  "; crop or pad the images");
    }
    return x.to(weight.scalar_type());
  }

  LdmAutoencoderOptions options_;
  ldm::Encoder encoder_{nullptr};
  ldm::Decoder decoder_{nullptr};
  ldm::VectorQuantizer quantize_{nullptr};
  torch::nn::Conv2d quant_conv_{nullptr}, post_quant_conv_{nullptr};
};

/// Module holder of `LdmAutoencoderImpl`: `diffpost::LdmAutoencoder vae(LdmAutoencoderOptions::vq_f4());`.
TORCH_MODULE(LdmAutoencoder);

}  // namespace diffpost
