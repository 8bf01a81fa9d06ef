// The blur network of Tran, Nguyen, Tran, Nguyen & Bui, "Explore Image Deblurring via Encoded Blur Kernel
// Space" (CVPR 2021; VinAIResearch/blur-kernel-space-exploring, "bkse"), `KernelWizard` in
// models/kernel_encoding/kernel_wizard.py: a network G(x, k) that blurs a sharp image x with the blur encoded
// by a kernel latent k, and a network F(x_sharp, x_blur) that encodes the blur between two images. DPS
// (Chung et al. 2023) uses G with GOPRO_wVAE.pth as its non-uniform ("nonlinear") blur operator; see
// NonlinearBlurOperator in <diffpost/io/nonlinear_blur.hpp>.
//
// The module tree is built so that `named_parameters()` equals the reference `state_dict()` key for key and
// shape for shape (`feature_extractor.6.conv1.weight`, `kernel_extractor.model.19.conv_block.1.weight`,
// `adapter.model.submodule.down.1.weight`, `recon_trunk.28.bias`, ...), in the same order: the published
// files load strictly without renaming. Layers without parameters (activations, the reference's `Identity`
// stand-ins for norm "none", reflection paddings) sit at the same indices as in the reference so that the
// numbers in the keys agree. This header needs only LibTorch; loading weight files is in io/.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffpost {

/// Hyper-parameters of a KernelWizard, named after the `KernelWizard` section of bkse's options files, with
/// the values of `options/generate_blur/default.yml` (the configuration of GOPRO_wVAE.pth, which DPS uses) as
/// defaults: input_nc 3, nf 64, front_RBs 10, back_RBs 20, kernel_dim 512, use_vae true, and for the kernel
/// extractor n_blocks 4. The options that file fixes are fixed here: norm "none" in the extractor and the
/// adapter (so their convolutions have no bias), use_sharp true, reflect padding, no dropout.
struct KernelWizardOptions {
  /// Image channels.
  TORCH_ARG(int64_t, input_nc) = 3;
  /// Base width of the feature extractor, the adapter U-Net and the reconstruction trunk.
  TORCH_ARG(int64_t, nf) = 64;
  /// Residual blocks of the feature extractor, after its two stride-2 convolutions.
  TORCH_ARG(int64_t, front_RBs) = 10;
  /// Residual blocks of the reconstruction trunk, before its two pixel-shuffle upsamplings.
  TORCH_ARG(int64_t, back_RBs) = 20;
  /// Channels of the kernel code the extractor F produces (twice that with the VAE: mean and log-variance).
  TORCH_ARG(int64_t, kernel_dim) = 512;
  /// Whether F outputs a mean and a log-variance (GOPRO_wVAE) or a code alone.
  TORCH_ARG(bool, use_vae) = true;
  /// ResnetBlocks at the end of the kernel extractor (`KernelExtractor.n_blocks`).
  TORCH_ARG(int64_t, extractor_n_blocks) = 4;
  /// Whether to build the kernel extractor F (`kernel_extractor.*`). Applying a blur (`adapt_kernel`) never
  /// runs it; false builds only what that needs, whose state dict then lacks those keys.
  TORCH_ARG(bool, with_kernel_extractor) = true;

 public:
  /// Channels of the kernel latent that `adapt_kernel` takes: the width of the adapter's innermost level,
  /// 8 nf (512 for GOPRO_wVAE, its kernel_dim).
  [[nodiscard]] int64_t latent_channels() const { return 8 * nf_; }

  /// How much smaller than the image the kernel latent is on each side: the feature extractor halves twice
  /// and the adapter five times, so H and W must be multiples of 128 and the latent is [., 8 nf, H/128,
  /// W/128].
  static constexpr int64_t latent_stride = 128;

  /// Throws c10::Error naming the first option out of range.
  void validate() const {
    TORCH_CHECK(input_nc_ > 0, "KernelWizardOptions: input_nc must be positive, got ", input_nc_);
    TORCH_CHECK(nf_ > 0, "KernelWizardOptions: nf must be positive, got ", nf_);
    TORCH_CHECK(front_RBs_ >= 0 && back_RBs_ >= 0,
                "KernelWizardOptions: front_RBs and back_RBs must be >= 0, got ", front_RBs_, " and ",
                back_RBs_);
    TORCH_CHECK(kernel_dim_ > 0, "KernelWizardOptions: kernel_dim must be positive, got ", kernel_dim_);
    TORCH_CHECK(extractor_n_blocks_ >= 0, "KernelWizardOptions: extractor_n_blocks must be >= 0, got ",
                extractor_n_blocks_);
  }
};

inline std::ostream& operator<<(std::ostream& out, const KernelWizardOptions& o) {
  return out << "KernelWizard(input_nc " << o.input_nc() << ", nf " << o.nf() << ", front_RBs "
             << o.front_RBs() << ", back_RBs " << o.back_RBs() << ", kernel_dim " << o.kernel_dim()
             << ", use_vae " << (o.use_vae() ? "true" : "false") << ", extractor n_blocks "
             << o.extractor_n_blocks() << ")";
}

/// Fails unless `shape` is an image batch [B, C, H, W] that a KernelWizard built with `options` can blur: C
/// equal to input_nc, H and W positive multiples of 128 (the network downsamples seven times by 2 and
/// concatenates skip connections, which needs every level to halve exactly). `who` names the caller.
inline void check_kernel_wizard_image(c10::IntArrayRef shape, const KernelWizardOptions& options,
                                      std::string_view who) {
  TORCH_CHECK(shape.size() == 4, who, ": expected an image batch [B, C, H, W], got shape ", shape);
  TORCH_CHECK(shape[1] == options.input_nc(), who, ": the blur network takes ", options.input_nc(),
              "-channel images (input_nc), got ", shape[1], " channels in an image batch of shape ", shape,
              options.input_nc() == 3 && shape[1] == 1 ? "; repeat a gray image to 3 channels" : "");
  const int64_t stride = KernelWizardOptions::latent_stride;
  TORCH_CHECK(shape[2] > 0 && shape[3] > 0 && shape[2] % stride == 0 && shape[3] % stride == 0, who,
              ": the blur network needs height and width that are multiples of ", stride,
              " (it halves them seven times), got ", shape[2], "x", shape[3], "; crop or resize to ",
              std::max<int64_t>(stride, shape[2] / stride * stride), "x",
              std::max<int64_t>(stride, shape[3] / stride * stride));
}

/// Fails unless `latent` is a kernel latent [1 or B, 8 nf, H/128, W/128] for the image batch of `image_shape`
/// [B, C, H, W]. `who` names the caller.
inline void check_kernel_latent(const torch::Tensor& latent, c10::IntArrayRef image_shape,
                                const KernelWizardOptions& options, std::string_view who) {
  TORCH_CHECK(latent.defined(), who, ": the kernel latent is undefined");
  const int64_t stride = KernelWizardOptions::latent_stride;
  const std::vector<int64_t> expected{image_shape[0], options.latent_channels(), image_shape[2] / stride,
                                      image_shape[3] / stride};
  TORCH_CHECK(latent.dim() == 4 && latent.size(1) == expected[1], who, ": expected a kernel latent [1 or B, ",
              expected[1], ", H/128, W/128], got shape ", latent.sizes());
  TORCH_CHECK(latent.size(2) == expected[2] && latent.size(3) == expected[3], who, ": the kernel latent ",
              latent.sizes(), " is for ", latent.size(2) * stride, "x", latent.size(3) * stride,
              " images, but the images are ", image_shape[2], "x", image_shape[3], " (latent [., ",
              expected[1], ", ", expected[2], ", ", expected[3], "])");
  TORCH_CHECK(latent.size(0) == 1 || latent.size(0) == expected[0], who, ": a kernel latent of batch ",
              latent.size(0), " for an image batch of ", expected[0],
              "; give one latent (batch 1) for every image or one per image (batch B)");
}

namespace bkse {

/// Residual block without normalisation (bkse `ResidualBlock_noBN`): x + conv2(relu(conv1(x))), 3x3
/// convolutions with bias, nf channels.
class ResidualBlockNoBNImpl : public torch::nn::Module {
 public:
  explicit ResidualBlockNoBNImpl(int64_t nf) {
    namespace nn = torch::nn;
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(nf, nf, 3).padding(1)));
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(nf, nf, 3).padding(1)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + conv2_(torch::relu(conv1_(x))); }

 private:
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::Conv2d conv2_{nullptr};
};
TORCH_MODULE(ResidualBlockNoBN);

/// Residual block of the kernel extractor (bkse `ResnetBlock` with reflect padding and norm "none"):
/// x + conv_block(x), conv_block = [pad 1, 3x3 conv, -, relu, pad 1, 3x3 conv, -] without biases.
class ResnetBlockImpl : public torch::nn::Module {
 public:
  explicit ResnetBlockImpl(int64_t dim) {
    namespace nn = torch::nn;
    auto conv = [dim] { return nn::Conv2d(nn::Conv2dOptions(dim, dim, 3).bias(false)); };
    conv_block_ = register_module("conv_block",
                                  nn::Sequential(nn::ReflectionPad2d(1), conv(), nn::Identity(), nn::ReLU(),
                                                 nn::ReflectionPad2d(1), conv(), nn::Identity()));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + conv_block_->forward(x); }

 private:
  torch::nn::Sequential conv_block_{nullptr};
};
TORCH_MODULE(ResnetBlock);

/// The kernel extractor F (bkse `KernelExtractor`), `model` = [reflect pad 3, 7x7 conv 2 nf -> nf, -, relu,
/// then five stride-2 3x3 convolutions (each followed by -, relu) widening to 2 kernel_dim (kernel_dim
/// without the VAE), then extractor_n_blocks ResnetBlocks]; convolutions without bias. Its input is the sharp
/// and the blurred image's features side by side.
class KernelExtractorImpl : public torch::nn::Module {
 public:
  explicit KernelExtractorImpl(const KernelWizardOptions& o)
      : kernel_dim_(o.kernel_dim()), use_vae_(o.use_vae()) {
    namespace nn = torch::nn;
    const int64_t nf = o.nf();
    const int64_t output_nc = o.use_vae() ? 2 * o.kernel_dim() : o.kernel_dim();
    nn::Sequential model(nn::ReflectionPad2d(3), nn::Conv2d(nn::Conv2dOptions(2 * nf, nf, 7).bias(false)),
                         nn::Identity(), nn::ReLU());
    for (int64_t i = 0, mult = 1; i < 5; ++i, mult *= 2) {
      const int64_t in = std::min(nf * mult, output_nc), out = std::min(nf * mult * 2, output_nc);
      model->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(2).padding(1).bias(false)));
      model->push_back(nn::Identity());
      model->push_back(nn::ReLU());
    }
    for (int64_t i = 0; i < o.extractor_n_blocks(); ++i) model->push_back(ResnetBlock(output_nc));
    model_ = register_module("model", model);
  }

  /// (mean, log-variance) of the kernel code, each [B, kernel_dim, h, w], from the features of the sharp and
  /// the blurred image; without the VAE, (code, zeros).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& sharp_features,
                                                  const torch::Tensor& blur_features) {
    auto out = model_->forward(torch::cat({sharp_features, blur_features}, 1));
    if (!use_vae_) return {out, torch::zeros_like(out)};
    return {out.slice(1, 0, kernel_dim_), out.slice(1, kernel_dim_)};
  }

 private:
  int64_t kernel_dim_;
  bool use_vae_;
  torch::nn::Sequential model_{nullptr};
};
TORCH_MODULE(KernelExtractor);

/// Where a level sits in the adapter U-Net; the outermost and innermost levels differ (bkse
/// `UnetSkipConnectionBlock`).
enum class UnetLevel { outermost, middle, innermost };

/// One level of the adapter U-Net (bkse `UnetSkipConnectionBlock`, norm "none"): `down` = [leaky relu 0.2,
/// 4x4 stride-2 conv, -] (the outermost level has the convolution alone), then `submodule` (the next level;
/// none for the innermost), then `up` = [relu, 4x4 stride-2 transposed conv, -] (the outermost level ends
/// with tanh instead, and only its transposed convolution has a bias). The innermost level concatenates the
/// kernel latent to its downsampled input; every level but the outermost concatenates its (activated) input
/// to its output, the skip connection.
class UnetSkipConnectionBlockImpl : public torch::nn::Module {
 public:
  UnetSkipConnectionBlockImpl(int64_t outer_nc, int64_t inner_nc, int64_t input_nc,
                              std::shared_ptr<UnetSkipConnectionBlockImpl> submodule, UnetLevel level)
      : level_(level) {
    namespace nn = torch::nn;
    down_conv_ = nn::Conv2d(nn::Conv2dOptions(input_nc, inner_nc, 4).stride(2).padding(1).bias(false));
    up_conv_ = nn::ConvTranspose2d(nn::ConvTranspose2dOptions(2 * inner_nc, outer_nc, 4)
                                       .stride(2)
                                       .padding(1)
                                       .bias(level == UnetLevel::outermost));
    const auto leaky = nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2));
    switch (level) {
      case UnetLevel::outermost:
        register_module("down", nn::Sequential(down_conv_));
        submodule_ = register_module("submodule", std::move(submodule));
        register_module("up", nn::Sequential(nn::ReLU(), up_conv_, nn::Tanh()));
        break;
      case UnetLevel::middle:
        register_module("down", nn::Sequential(leaky, down_conv_, nn::Identity()));
        submodule_ = register_module("submodule", std::move(submodule));
        register_module("up", nn::Sequential(nn::ReLU(), up_conv_, nn::Identity()));
        break;
      case UnetLevel::innermost:
        register_module("down", nn::Sequential(leaky, down_conv_));
        register_module("up", nn::Sequential(nn::ReLU(), up_conv_, nn::Identity()));
        break;
    }
  }

  /// The level's output for its input x and the kernel latent (already of x's batch size). The reference's
  /// leaky relu runs in place on x, so its skip connections carry leaky_relu(x), not x; so do these.
  // NOLINTNEXTLINE(misc-no-recursion): each level calls the next inner one; the depth is the level count
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& latent) {
    if (level_ == UnetLevel::outermost)
      return torch::tanh(up_conv_(torch::relu(submodule_->forward(down_conv_(x), latent))));
    const auto activated = torch::leaky_relu(x, 0.2);
    const auto down = down_conv_(activated);
    const auto inner =
        level_ == UnetLevel::innermost ? torch::cat({down, latent}, 1) : submodule_->forward(down, latent);
    return torch::cat({up_conv_(torch::relu(inner)), activated}, 1);
  }

 private:
  UnetLevel level_;
  torch::nn::Conv2d down_conv_{nullptr};
  torch::nn::ConvTranspose2d up_conv_{nullptr};
  std::shared_ptr<UnetSkipConnectionBlockImpl> submodule_;
};
TORCH_MODULE(UnetSkipConnectionBlock);

/// The kernel adapter G's U-Net (bkse `KernelAdapter`), `model` = five levels of widths nf, nf, 2 nf, 4 nf,
/// 8 nf, 8 nf from the outside in; the kernel latent enters at the innermost level, at 1/32 of the feature
/// map's size.
class KernelAdapterImpl : public torch::nn::Module {
 public:
  explicit KernelAdapterImpl(int64_t nf) {
    using Block = UnetSkipConnectionBlockImpl;
    auto block = std::make_shared<Block>(8 * nf, 8 * nf, 8 * nf, nullptr, UnetLevel::innermost);
    block = std::make_shared<Block>(4 * nf, 8 * nf, 4 * nf, block, UnetLevel::middle);
    block = std::make_shared<Block>(2 * nf, 4 * nf, 2 * nf, block, UnetLevel::middle);
    block = std::make_shared<Block>(nf, 2 * nf, nf, block, UnetLevel::middle);
    model_ = register_module("model", std::make_shared<Block>(nf, nf, nf, block, UnetLevel::outermost));
  }
  torch::Tensor forward(const torch::Tensor& features, const torch::Tensor& latent) {
    return model_->forward(features, latent);
  }

 private:
  std::shared_ptr<UnetSkipConnectionBlockImpl> model_;
};
TORCH_MODULE(KernelAdapter);

}  // namespace bkse

/// The KernelWizard of bkse: `feature_extractor` (3x3 conv, then two stride-2 3x3 convs, each followed by a
/// leaky relu 0.1, then front_RBs residual blocks: features at H/4), `kernel_extractor` (F, optional: see
/// KernelWizardOptions::with_kernel_extractor), `adapter` (the U-Net of G) and `recon_trunk` (back_RBs
/// residual blocks, then two pixel-shuffle x2 upsamplings with leaky relus, a 3x3 conv with leaky relu and a
/// 3x3 conv to the image channels). Its images are in [0, 1], as bkse's.
class KernelWizardImpl : public torch::nn::Module {
 public:
  explicit KernelWizardImpl(KernelWizardOptions options = {}) : options_(std::move(options)) {
    namespace nn = torch::nn;
    options_.validate();
    const int64_t nf = options_.nf();
    const auto lrelu = [] { return nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.1)); };
    const auto conv3x3 = [](int64_t in, int64_t out, int64_t stride = 1) {
      return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1));
    };
    nn::Sequential features(conv3x3(options_.input_nc(), nf), lrelu(), conv3x3(nf, nf, 2), lrelu(),
                            conv3x3(nf, nf, 2), lrelu());
    for (int64_t i = 0; i < options_.front_RBs(); ++i) features->push_back(bkse::ResidualBlockNoBN(nf));
    feature_extractor_ = register_module("feature_extractor", features);
    if (options_.with_kernel_extractor())
      kernel_extractor_ = register_module("kernel_extractor", bkse::KernelExtractor(options_));
    adapter_ = register_module("adapter", bkse::KernelAdapter(nf));
    nn::Sequential trunk;
    for (int64_t i = 0; i < options_.back_RBs(); ++i) trunk->push_back(bkse::ResidualBlockNoBN(nf));
    // The reference fixes the widths after the first upsampling at 64, whatever nf is.
    trunk->push_back(conv3x3(nf, 4 * nf));
    trunk->push_back(nn::PixelShuffle(2));
    trunk->push_back(lrelu());
    trunk->push_back(conv3x3(nf, int64_t{64} * 4));
    trunk->push_back(nn::PixelShuffle(2));
    trunk->push_back(lrelu());
    trunk->push_back(conv3x3(64, 64));
    trunk->push_back(lrelu());
    trunk->push_back(conv3x3(64, options_.input_nc()));
    recon_trunk_ = register_module("recon_trunk", trunk);
  }

  /// G(x, k) (bkse `adaptKernel`): the sharp image batch `sharp` [B, input_nc, H, W] in [0, 1] blurred with
  /// the blur that `latent` [1 or B, 8 nf, H/128, W/128] encodes, x + recon_trunk(adapter(features(x), k)).
  /// A latent of batch 1 applies to every image. H and W must be multiples of 128
  /// (check_kernel_wizard_image). The result is not clamped.
  torch::Tensor adapt_kernel(const torch::Tensor& sharp, const torch::Tensor& latent) {
    check_kernel_wizard_image(sharp.sizes(), options_, "KernelWizard::adapt_kernel");
    check_kernel_latent(latent, sharp.sizes(), options_, "KernelWizard::adapt_kernel");
    const auto batch_latent =
        latent.to(sharp.device(), sharp.scalar_type()).expand({sharp.size(0), -1, -1, -1});
    const auto features = feature_extractor_->forward(sharp);
    return recon_trunk_->forward(adapter_(features, batch_latent)) + sharp;
  }

  /// F (bkse `KernelWizard.forward`): the kernel code of the blur that turns `sharp` into `blur` (both
  /// [B, input_nc, H, W] in [0, 1]), as (mean, log-variance), each [B, kernel_dim, H/128, W/128]; without the
  /// VAE, (code, zeros). Needs the kernel extractor, and H and W multiples of 128 of at least 256 when it
  /// has residual blocks (their reflect padding needs 2x2 maps).
  std::pair<torch::Tensor, torch::Tensor> extract_kernel(const torch::Tensor& sharp,
                                                         const torch::Tensor& blur) {
    TORCH_CHECK(!kernel_extractor_.is_empty(),
                "KernelWizard::extract_kernel: this network was built without its kernel "
                "extractor (KernelWizardOptions::with_kernel_extractor(false))");
    check_kernel_wizard_image(sharp.sizes(), options_, "KernelWizard::extract_kernel");
    TORCH_CHECK(blur.sizes() == sharp.sizes(), "KernelWizard::extract_kernel: the blurred images ",
                blur.sizes(), " must have the shape of the sharp ones ", sharp.sizes());
    const int64_t smallest = 2 * KernelWizardOptions::latent_stride;
    TORCH_CHECK(
        options_.extractor_n_blocks() == 0 || (sharp.size(2) >= smallest && sharp.size(3) >= smallest),
        "KernelWizard::extract_kernel: the kernel extractor's residual blocks need images of at least ",
        smallest, "x", smallest, ", got ", sharp.size(2), "x", sharp.size(3));
    return kernel_extractor_(feature_extractor_->forward(sharp), feature_extractor_->forward(blur));
  }

  [[nodiscard]] const KernelWizardOptions& options() const { return options_; }

  void pretty_print(std::ostream& os) const override { os << "diffpost::" << options_; }

 private:
  KernelWizardOptions options_;
  torch::nn::Sequential feature_extractor_{nullptr};
  bkse::KernelExtractor kernel_extractor_{nullptr};
  bkse::KernelAdapter adapter_{nullptr};
  torch::nn::Sequential recon_trunk_{nullptr};
};
TORCH_MODULE(KernelWizard);

/// A copy of `source` without its kernel extractor, in `options`' device and dtype, in eval mode, with
/// parameters that do not require grad: what applying the blur needs (NonlinearBlurOperator keeps one per
/// device and dtype). `source` may have its kernel extractor or not.
inline KernelWizard kernel_applier_copy(const KernelWizardImpl& source, const torch::TensorOptions& options) {
  KernelWizard copy(KernelWizardOptions(source.options()).with_kernel_extractor(false));
  copy->to(options.device(), c10::typeMetaToScalarType(options.dtype()));
  copy->eval();
  torch::NoGradGuard no_grad;
  const auto from = source.named_parameters();
  for (auto& item : copy->named_parameters()) {
    if (!item.value().defined()) continue;  // a convolution without bias registers an undefined one
    const auto* found = from.find(item.key());
    TORCH_CHECK(found != nullptr, "kernel_applier_copy: the source network has no '", item.key(), "'");
    item.value().copy_(*found);
    item.value().set_requires_grad(false);
  }
  return copy;
}

/// Fills every parameter of `network` with reproducible random values, for tests and tools without the
/// published weights. In state-dict order, each tensor is drawn N(0, 1) from one CPU generator seeded with
/// `seed` (the numbers of Python's `torch.Generator().manual_seed(seed)` and `torch.randn(shape,
/// generator=g)`), then scaled: 4-D weights by sqrt(2 / fan_in), fan_in = numel / size(0) (He et al.), times
/// 0.1 in the residual blocks (`conv1`, `conv2`; bkse initialises them so) and times 0.25 in the last
/// convolution of `recon_trunk`; every other tensor (the biases) by 0.01. With the published configuration
/// the network then changes a [0, 1] image by about 0.12 (standard deviation) and the kernel latent matters,
/// as with trained weights. Tensors of the kernel extractor are drawn when it is there, so a network with
/// and one without it do not get the same numbers.
inline void fill_random_kernel_wizard(KernelWizardImpl& network, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  std::string last_trunk_conv;
  for (const auto& item : network.named_parameters())
    if (item.key().rfind("recon_trunk.", 0) == 0 && item.value().dim() == 4) last_trunk_conv = item.key();
  for (auto& item : network.named_parameters()) {
    auto& tensor = item.value();
    if (!tensor.defined()) continue;  // a convolution without bias registers an undefined one
    const auto& name = item.key();
    double scale = 0.01;
    if (tensor.dim() == 4) {
      scale = std::sqrt(2.0 / (static_cast<double>(tensor.numel()) / static_cast<double>(tensor.size(0))));
      if (name.find(".conv1.") != std::string::npos || name.find(".conv2.") != std::string::npos)
        scale = 0.1 * scale;
      if (name == last_trunk_conv) scale = 0.25 * scale;
    }
    tensor.copy_(at::randn(tensor.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat32)) * scale);
  }
}

}  // namespace diffpost
