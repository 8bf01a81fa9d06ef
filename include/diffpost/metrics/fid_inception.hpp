// The Inception v3 of FID (Heusel et al., NeurIPS 2017) as pytorch-fid computes it (mseitzer/pytorch-fid,
// src/pytorch_fid/inception.py: `InceptionV3([3])`, the 2048-d pool3 features): torchvision's Inception3 with
// 1008 classes, no auxiliary classifier and pytorch-fid's patched blocks FIDInceptionA/C/E_1/E_2, which
// reproduce TensorFlow's graph of 2015-12-05 (branch average pools that do not count the padding, a max pool
// in the last block). Only the network lives here; io/metric_weights.hpp loads
// `pt_inception-2015-12-05-6726825d.pth` into it, strictly (docs/metrics.md).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

namespace inception {

/// torchvision's BasicConv2d: a convolution without bias, batch norm (eps 0.001) and ReLU. Parameters
/// `conv.weight`, `bn.weight`, `bn.bias` and buffers `bn.running_mean`, `bn.running_var`,
/// `bn.num_batches_tracked`. The batch norm always uses its running statistics (evaluation), whatever the
/// module's mode: features must not depend on the batch.
class BasicConv2dImpl : public torch::nn::Module {
 public:
  /// The convolution `options` (channels, kernel, stride, padding; the bias is turned off here).
  explicit BasicConv2dImpl(torch::nn::Conv2dOptions options) {
    const auto channels = options.out_channels();
    conv_ = register_module("conv", torch::nn::Conv2d(options.bias(false)));
    bn_ = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(channels).eps(1e-3)));
  }

  /// The convolution, whose weight tells the module's device and dtype.
  const torch::nn::Conv2d& conv() const { return conv_; }

  torch::Tensor forward(const torch::Tensor& x) {
    const auto normalised =
        torch::batch_norm(conv_->forward(x), bn_->weight, bn_->bias, bn_->running_mean, bn_->running_var,
                          /*training=*/false, /*momentum=*/0.0, bn_->options.eps(), /*cudnn_enabled=*/true);
    return torch::relu(normalised);
  }

 private:
  torch::nn::Conv2d conv_{nullptr};
  torch::nn::BatchNorm2d bn_{nullptr};
};
TORCH_MODULE(BasicConv2d);

/// A BasicConv2d from `in` to `out` channels with a `kernel_h` x `kernel_w` kernel, `stride` and padding
/// (`pad_h`, `pad_w`), as torchvision's blocks declare them.
inline BasicConv2d basic_conv(int64_t in, int64_t out, int64_t kernel_h, int64_t kernel_w, int64_t stride = 1,
                              int64_t pad_h = 0, int64_t pad_w = 0) {
  return BasicConv2d(
      torch::nn::Conv2dOptions(in, out, {kernel_h, kernel_w}).stride(stride).padding({pad_h, pad_w}));
}

/// The 3x3, stride 1, padding 1 average pool of pytorch-fid's blocks, which divides by the number of pixels
/// inside the image (TensorFlow's convention; count_include_pad=False).
inline torch::Tensor average_pool_3x3(const torch::Tensor& x) {
  return torch::avg_pool2d(x, 3, 1, 1, /*ceil_mode=*/false, /*count_include_pad=*/false);
}

/// Mixed_5b/c/d: pytorch-fid's FIDInceptionA (torchvision's InceptionA with the padding-free average pool).
class InceptionAImpl : public torch::nn::Module {
 public:
  InceptionAImpl(int64_t in_channels, int64_t pool_features)
      : branch1x1_(register_module("branch1x1", basic_conv(in_channels, 64, 1, 1))),
        branch5x5_1_(register_module("branch5x5_1", basic_conv(in_channels, 48, 1, 1))),
        branch5x5_2_(register_module("branch5x5_2", basic_conv(48, 64, 5, 5, 1, 2, 2))),
        branch3x3dbl_1_(register_module("branch3x3dbl_1", basic_conv(in_channels, 64, 1, 1))),
        branch3x3dbl_2_(register_module("branch3x3dbl_2", basic_conv(64, 96, 3, 3, 1, 1, 1))),
        branch3x3dbl_3_(register_module("branch3x3dbl_3", basic_conv(96, 96, 3, 3, 1, 1, 1))),
        branch_pool_(register_module("branch_pool", basic_conv(in_channels, pool_features, 1, 1))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    return torch::cat(
        {branch1x1_(x), branch5x5_2_(branch5x5_1_(x)), branch3x3dbl_3_(branch3x3dbl_2_(branch3x3dbl_1_(x))),
         branch_pool_(average_pool_3x3(x))},
        1);
  }

 private:
  BasicConv2d branch1x1_, branch5x5_1_, branch5x5_2_, branch3x3dbl_1_, branch3x3dbl_2_, branch3x3dbl_3_,
      branch_pool_;
};
TORCH_MODULE(InceptionA);

/// Mixed_6a: torchvision's InceptionB (grid reduction 35 -> 17), unpatched.
class InceptionBImpl : public torch::nn::Module {
 public:
  explicit InceptionBImpl(int64_t in_channels)
      : branch3x3_(register_module("branch3x3", basic_conv(in_channels, 384, 3, 3, 2))),
        branch3x3dbl_1_(register_module("branch3x3dbl_1", basic_conv(in_channels, 64, 1, 1))),
        branch3x3dbl_2_(register_module("branch3x3dbl_2", basic_conv(64, 96, 3, 3, 1, 1, 1))),
        branch3x3dbl_3_(register_module("branch3x3dbl_3", basic_conv(96, 96, 3, 3, 2))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    return torch::cat(
        {branch3x3_(x), branch3x3dbl_3_(branch3x3dbl_2_(branch3x3dbl_1_(x))), torch::max_pool2d(x, 3, 2)}, 1);
  }

 private:
  BasicConv2d branch3x3_, branch3x3dbl_1_, branch3x3dbl_2_, branch3x3dbl_3_;
};
TORCH_MODULE(InceptionB);

/// Mixed_6b/c/d/e: pytorch-fid's FIDInceptionC (factorised 7x7 convolutions; padding-free average pool).
class InceptionCImpl : public torch::nn::Module {
 public:
  InceptionCImpl(int64_t in_channels, int64_t c7)
      : branch1x1_(register_module("branch1x1", basic_conv(in_channels, 192, 1, 1))),
        branch7x7_1_(register_module("branch7x7_1", basic_conv(in_channels, c7, 1, 1))),
        branch7x7_2_(register_module("branch7x7_2", basic_conv(c7, c7, 1, 7, 1, 0, 3))),
        branch7x7_3_(register_module("branch7x7_3", basic_conv(c7, 192, 7, 1, 1, 3, 0))),
        branch7x7dbl_1_(register_module("branch7x7dbl_1", basic_conv(in_channels, c7, 1, 1))),
        branch7x7dbl_2_(register_module("branch7x7dbl_2", basic_conv(c7, c7, 7, 1, 1, 3, 0))),
        branch7x7dbl_3_(register_module("branch7x7dbl_3", basic_conv(c7, c7, 1, 7, 1, 0, 3))),
        branch7x7dbl_4_(register_module("branch7x7dbl_4", basic_conv(c7, c7, 7, 1, 1, 3, 0))),
        branch7x7dbl_5_(register_module("branch7x7dbl_5", basic_conv(c7, 192, 1, 7, 1, 0, 3))),
        branch_pool_(register_module("branch_pool", basic_conv(in_channels, 192, 1, 1))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    const auto branch7x7 = branch7x7_3_(branch7x7_2_(branch7x7_1_(x)));
    const auto branch7x7dbl =
        branch7x7dbl_5_(branch7x7dbl_4_(branch7x7dbl_3_(branch7x7dbl_2_(branch7x7dbl_1_(x)))));
    return torch::cat({branch1x1_(x), branch7x7, branch7x7dbl, branch_pool_(average_pool_3x3(x))}, 1);
  }

 private:
  BasicConv2d branch1x1_, branch7x7_1_, branch7x7_2_, branch7x7_3_, branch7x7dbl_1_, branch7x7dbl_2_,
      branch7x7dbl_3_, branch7x7dbl_4_, branch7x7dbl_5_, branch_pool_;
};
TORCH_MODULE(InceptionC);

/// Mixed_7a: torchvision's InceptionD (grid reduction 17 -> 8), unpatched.
class InceptionDImpl : public torch::nn::Module {
 public:
  explicit InceptionDImpl(int64_t in_channels)
      : branch3x3_1_(register_module("branch3x3_1", basic_conv(in_channels, 192, 1, 1))),
        branch3x3_2_(register_module("branch3x3_2", basic_conv(192, 320, 3, 3, 2))),
        branch7x7x3_1_(register_module("branch7x7x3_1", basic_conv(in_channels, 192, 1, 1))),
        branch7x7x3_2_(register_module("branch7x7x3_2", basic_conv(192, 192, 1, 7, 1, 0, 3))),
        branch7x7x3_3_(register_module("branch7x7x3_3", basic_conv(192, 192, 7, 1, 1, 3, 0))),
        branch7x7x3_4_(register_module("branch7x7x3_4", basic_conv(192, 192, 3, 3, 2))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    const auto branch7x7x3 = branch7x7x3_4_(branch7x7x3_3_(branch7x7x3_2_(branch7x7x3_1_(x))));
    return torch::cat({branch3x3_2_(branch3x3_1_(x)), branch7x7x3, torch::max_pool2d(x, 3, 2)}, 1);
  }

 private:
  BasicConv2d branch3x3_1_, branch3x3_2_, branch7x7x3_1_, branch7x7x3_2_, branch7x7x3_3_, branch7x7x3_4_;
};
TORCH_MODULE(InceptionD);

/// The pool of an InceptionE branch: pytorch-fid's FIDInceptionE_1 (Mixed_7b) averages without counting the
/// padding, its FIDInceptionE_2 (Mixed_7c) takes the maximum, as TensorFlow's graph does.
enum class EPool { average, max };

/// Mixed_7b/c: pytorch-fid's FIDInceptionE_1 / FIDInceptionE_2 (expanded filter bank output).
class InceptionEImpl : public torch::nn::Module {
 public:
  InceptionEImpl(int64_t in_channels, EPool pool)
      : pool_(pool),
        branch1x1_(register_module("branch1x1", basic_conv(in_channels, 320, 1, 1))),
        branch3x3_1_(register_module("branch3x3_1", basic_conv(in_channels, 384, 1, 1))),
        branch3x3_2a_(register_module("branch3x3_2a", basic_conv(384, 384, 1, 3, 1, 0, 1))),
        branch3x3_2b_(register_module("branch3x3_2b", basic_conv(384, 384, 3, 1, 1, 1, 0))),
        branch3x3dbl_1_(register_module("branch3x3dbl_1", basic_conv(in_channels, 448, 1, 1))),
        branch3x3dbl_2_(register_module("branch3x3dbl_2", basic_conv(448, 384, 3, 3, 1, 1, 1))),
        branch3x3dbl_3a_(register_module("branch3x3dbl_3a", basic_conv(384, 384, 1, 3, 1, 0, 1))),
        branch3x3dbl_3b_(register_module("branch3x3dbl_3b", basic_conv(384, 384, 3, 1, 1, 1, 0))),
        branch_pool_(register_module("branch_pool", basic_conv(in_channels, 192, 1, 1))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    const auto branch3x3 = branch3x3_1_(x);
    const auto branch3x3dbl = branch3x3dbl_2_(branch3x3dbl_1_(x));
    const auto pooled = pool_ == EPool::average ? average_pool_3x3(x) : torch::max_pool2d(x, 3, 1, 1);
    return torch::cat({branch1x1_(x), branch3x3_2a_(branch3x3), branch3x3_2b_(branch3x3),
                       branch3x3dbl_3a_(branch3x3dbl), branch3x3dbl_3b_(branch3x3dbl), branch_pool_(pooled)},
                      1);
  }

 private:
  EPool pool_;
  BasicConv2d branch1x1_, branch3x3_1_, branch3x3_2a_, branch3x3_2b_, branch3x3dbl_1_, branch3x3dbl_2_,
      branch3x3dbl_3a_, branch3x3dbl_3b_, branch_pool_;
};
TORCH_MODULE(InceptionE);

}  // namespace inception

/// pytorch-fid's `InceptionV3([3])` (resize_input and normalize_input on): images are resized to 299x299
/// (bilinear, align_corners=False, no antialiasing), mapped to [-1, 1] and run through Conv2d_1a_3x3 ...
/// Mixed_7c, whose output is averaged over positions: the 2048-d pool3 features that FID and KID compare.
/// Parameters and buffers keep torchvision's names (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.
/// running_mean`, ...), so `pt_inception-2015-12-05-6726825d.pth` loads strictly (load_fid_inception in
/// io/metric_weights.hpp); its `fc` classifier is not part of the features. A freshly built module has random
/// weights. Parameters do not require gradients; batch norms use their running statistics in either mode.
class FidInceptionV3Impl : public torch::nn::Module {
 public:
  /// The side images are resized to.
  static constexpr int64_t kInputSize = 299;
  /// The feature dimension.
  static constexpr int64_t kFeatureDimension = 2048;

  FidInceptionV3Impl() {
    using inception::basic_conv;
    Conv2d_1a_3x3_ = register_module("Conv2d_1a_3x3", basic_conv(3, 32, 3, 3, 2));
    Conv2d_2a_3x3_ = register_module("Conv2d_2a_3x3", basic_conv(32, 32, 3, 3));
    Conv2d_2b_3x3_ = register_module("Conv2d_2b_3x3", basic_conv(32, 64, 3, 3, 1, 1, 1));
    Conv2d_3b_1x1_ = register_module("Conv2d_3b_1x1", basic_conv(64, 80, 1, 1));
    Conv2d_4a_3x3_ = register_module("Conv2d_4a_3x3", basic_conv(80, 192, 3, 3));
    Mixed_5b_ = register_module("Mixed_5b", inception::InceptionA(192, 32));
    Mixed_5c_ = register_module("Mixed_5c", inception::InceptionA(256, 64));
    Mixed_5d_ = register_module("Mixed_5d", inception::InceptionA(288, 64));
    Mixed_6a_ = register_module("Mixed_6a", inception::InceptionB(288));
    Mixed_6b_ = register_module("Mixed_6b", inception::InceptionC(768, 128));
    Mixed_6c_ = register_module("Mixed_6c", inception::InceptionC(768, 160));
    Mixed_6d_ = register_module("Mixed_6d", inception::InceptionC(768, 160));
    Mixed_6e_ = register_module("Mixed_6e", inception::InceptionC(768, 192));
    Mixed_7a_ = register_module("Mixed_7a", inception::InceptionD(768));
    Mixed_7b_ = register_module("Mixed_7b", inception::InceptionE(1280, inception::EPool::average));
    Mixed_7c_ = register_module("Mixed_7c", inception::InceptionE(2048, inception::EPool::max));
    for (auto& parameter : parameters()) parameter.requires_grad_(false);
    eval();
  }

  /// The pool3 features [B, 2048] of images [B, C, H, W] (or one image [C, H, W]) in [-1, 1], C = 3 (RGB) or
  /// 1 (grayscale, repeated to 3 channels as PIL's convert("RGB") does), any size, on the module's device and
  /// in its dtype. pytorch-fid's pipeline: u = (x + 1) / 2 is its [0, 1] input, resized to 299x299 and mapped
  /// back by 2u - 1.
  torch::Tensor forward(const torch::Tensor& images) {
    auto x = check_input(images);
    x = (x + 1.0) / 2.0;
    x = torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                  .size(std::vector<int64_t>{kInputSize, kInputSize})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false));
    x = 2.0 * x - 1.0;
    x = Conv2d_2b_3x3_(Conv2d_2a_3x3_(Conv2d_1a_3x3_(x)));
    x = torch::max_pool2d(x, 3, 2);
    x = Conv2d_4a_3x3_(Conv2d_3b_1x1_(x));
    x = torch::max_pool2d(x, 3, 2);
    x = Mixed_5d_(Mixed_5c_(Mixed_5b_(x)));
    x = Mixed_6e_(Mixed_6d_(Mixed_6c_(Mixed_6b_(Mixed_6a_(x)))));
    x = Mixed_7c_(Mixed_7b_(Mixed_7a_(x)));
    return x.mean({2, 3});
  }

 private:
  torch::Tensor check_input(const torch::Tensor& images) const {
    TORCH_CHECK(images.defined() && (images.dim() == 3 || images.dim() == 4),
                "FidInceptionV3: expected images [B, C, H, W] or one image [C, H, W] in [-1, 1], got ",
                images.defined() ? c10::str("shape ", images.sizes()) : std::string("an undefined tensor"));
    auto x = images.dim() == 3 ? images.unsqueeze(0) : images;
    TORCH_CHECK(x.size(1) == 3 || x.size(1) == 1, "FidInceptionV3: images of shape ", images.sizes(),
                " have ", x.size(1), " channels; expected 3 (RGB) or 1 (grayscale)");
    TORCH_CHECK(x.size(0) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, "FidInceptionV3: empty images of shape ",
                images.sizes());
    const auto& weight = Conv2d_1a_3x3_->conv()->weight;
    TORCH_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() == weight.scalar_type() &&
                    x.device() == weight.device(),
                "FidInceptionV3: images are ", x.scalar_type(), " on ", x.device(), " but the network is ",
                weight.scalar_type(), " on ", weight.device(), "; move it with inception->to(device, dtype)");
    return x.size(1) == 1 ? x.expand({-1, 3, -1, -1}) : x;
  }

  // torchvision's attribute names, which are the state dict's.
  inception::BasicConv2d Conv2d_1a_3x3_{nullptr}, Conv2d_2a_3x3_{nullptr}, Conv2d_2b_3x3_{nullptr},
      Conv2d_3b_1x1_{nullptr}, Conv2d_4a_3x3_{nullptr};
  inception::InceptionA Mixed_5b_{nullptr}, Mixed_5c_{nullptr}, Mixed_5d_{nullptr};
  inception::InceptionB Mixed_6a_{nullptr};
  inception::InceptionC Mixed_6b_{nullptr}, Mixed_6c_{nullptr}, Mixed_6d_{nullptr}, Mixed_6e_{nullptr};
  inception::InceptionD Mixed_7a_{nullptr};
  inception::InceptionE Mixed_7b_{nullptr}, Mixed_7c_{nullptr};
};
TORCH_MODULE(FidInceptionV3);

}  // namespace diffpost
