// LPIPS, the learned perceptual image patch similarity (Zhang, Isola, Efros, Shechtman & Wang, "The
// Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018), version 0.1, as the
// `lpips` package of richzhang/PerceptualSimilarity computes it with `lpips.LPIPS(net='alex' | 'vgg',
// version='0.1')` (lpips/lpips.py, lpips/pretrained_networks.py). Only the network lives here;
// io/metric_weights.hpp loads torchvision's backbone weights and lpips's linear heads into it, strictly
// (docs/metrics.md).
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace diffpost {

/// The backbone of LPIPS: torchvision's AlexNet (`alexnet-owt-7be5be79.pth`) or VGG16 (`vgg16-397923af.pth`).
enum class LpipsNetwork { alex, vgg };

/// "alex" or "vgg", the names `lpips.LPIPS(net=...)` takes.
inline const char* lpips_network_name(LpipsNetwork network) {
  return network == LpipsNetwork::alex ? "alex" : "vgg";
}

namespace detail {

/// One layer of torchvision's `features` Sequential, up to the last layer LPIPS taps.
struct LpipsLayer {
  enum class Kind { conv, relu, max_pool } kind;
  int64_t in_channels = 0, out_channels = 0, kernel = 0, stride = 1, padding = 0;
};

/// torchvision's `features` of AlexNet (indices 0-11) or VGG16 (0-29): what LPIPS runs, with torchvision's
/// indices, so that the parameters are `features.<index>.weight` / `.bias` as in torchvision's files.
inline std::vector<LpipsLayer> lpips_backbone_layers(LpipsNetwork network) {
  using K = LpipsLayer::Kind;
  const auto conv = [](int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
    return LpipsLayer{K::conv, in, out, kernel, stride, padding};
  };
  const LpipsLayer relu{K::relu};
  const LpipsLayer pool{K::max_pool, 0, 0, 3, 2, 0};
  if (network == LpipsNetwork::alex) {
    return {conv(3, 64, 11, 4, 2),
            relu,
            pool,
            conv(64, 192, 5, 1, 2),
            relu,
            pool,
            conv(192, 384, 3, 1, 1),
            relu,
            conv(384, 256, 3, 1, 1),
            relu,
            conv(256, 256, 3, 1, 1),
            relu};
  }
  const LpipsLayer vgg_pool{K::max_pool, 0, 0, 2, 2, 0};
  std::vector<LpipsLayer> layers;
  int64_t in = 3;
  // VGG16 configuration "D": 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 (last pool unused).
  const std::array<std::array<int64_t, 3>, 5> blocks{
      {{64, 64, 0}, {128, 128, 0}, {256, 256, 256}, {512, 512, 512}, {512, 512, 512}}};
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (b > 0) layers.push_back(vgg_pool);
    for (const auto out : blocks[b]) {
      if (out == 0) continue;
      layers.push_back(conv(in, out, 3, 1, 1));
      layers.push_back(relu);
      in = out;
    }
  }
  return layers;
}

/// The indices of `features` whose outputs LPIPS compares: lpips's slice ends (pretrained_networks.py), the
/// ReLUs relu1..relu5 of AlexNet and relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16.
inline std::array<size_t, 5> lpips_taps(LpipsNetwork network) {
  if (network == LpipsNetwork::alex) return {1, 4, 7, 9, 11};
  return {3, 8, 15, 22, 29};
}

/// Whether an image of side `size` passes every layer of the backbone with at least one pixel left.
inline bool lpips_side_fits(LpipsNetwork network, int64_t size) {
  for (const auto& layer : lpips_backbone_layers(network)) {
    if (layer.kind == LpipsLayer::Kind::relu) continue;
    const int64_t padded = size + 2 * layer.padding;
    if (padded < layer.kernel) return false;
    size = (padded - layer.kernel) / layer.stride + 1;
  }
  return size >= 1;
}

}  // namespace detail

/// The smallest height and width LPIPS with `network` accepts (LPIPS does not resize): 31 pixels for AlexNet
/// (its third max pooling needs 3x3), 16 for VGG16 (four 2x2 poolings before the last tap).
inline int64_t lpips_minimum_image_size(LpipsNetwork network) {
  int64_t size = 1;
  while (!detail::lpips_side_fits(network, size)) ++size;
  return size;
}

/// One linear head of lpips (`NetLinLayer`): a 1x1 convolution without bias from C channels to 1, under
/// `model.1` as in lpips's files (`lin0.model.1.weight`, [1, C, 1, 1]); `model.0` is lpips's Dropout, an
/// identity at evaluation, kept as one so that the index stays 1.
class LpipsHeadImpl : public torch::nn::Module {
 public:
  explicit LpipsHeadImpl(int64_t channels) {
    model_ = register_module(
        "model",
        torch::nn::Sequential(torch::nn::Identity(),
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, 1, 1).bias(false))));
  }
  torch::Tensor forward(const torch::Tensor& x) { return model_->forward(x); }

 private:
  torch::nn::Sequential model_{nullptr};
};
TORCH_MODULE(LpipsHead);

/// LPIPS v0.1 (`lpips.LPIPS(net=..., version='0.1')`): for images x and y in [-1, 1],
///   1. ScalingLayer: (x - shift) / scale, shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450);
///   2. the backbone's activations f_l at five taps (AlexNet after features 1/4/7/9/11, VGG16 after
///      3/8/15/22/29), each unit-normalised over channels: f / (sqrt(sum_c f^2) + 1e-10);
///   3. per tap, the squared difference (f_l(x) - f_l(y))^2 through the 1x1 head lin_l (no bias), averaged
///   over
///      positions; LPIPS is the sum over the five taps.
/// No resizing: the images must be at least lpips_minimum_image_size(network) pixels a side. The parameters
/// keep their sources' names: torchvision's `features.<index>.weight/.bias` and lpips's
/// `lin<l>.model.1.weight`, so that io/metric_weights.hpp loads both files strictly. A freshly built module
/// has random weights; load them with `load_lpips` (io/metric_weights.hpp). Parameters do not require
/// gradients (the metric is fixed), but the value is differentiable with respect to the images, so LPIPS
/// can serve as a loss. Every layer is stateless at evaluation (no dropout, no batch norm), so train and eval
/// mode give the same values.
class LpipsImpl : public torch::nn::Module {
 public:
  /// Builds the network for `network` with random weights.
  explicit LpipsImpl(LpipsNetwork network = LpipsNetwork::alex)
      : network_(network),
        layers_(detail::lpips_backbone_layers(network)),
        taps_(detail::lpips_taps(network)) {
    // ReLU and max pooling have no parameters; they sit in the Sequential so that the convolutions keep
    // torchvision's indices.
    features_ = register_module("features", torch::nn::Sequential());
    for (const auto& layer : layers_) {
      using K = detail::LpipsLayer::Kind;
      if (layer.kind == K::conv) {
        convs_.emplace_back(torch::nn::Conv2dOptions(layer.in_channels, layer.out_channels, layer.kernel)
                                .stride(layer.stride)
                                .padding(layer.padding));
        features_->push_back(convs_.back());
      } else {
        convs_.emplace_back(nullptr);
        if (layer.kind == K::relu) {
          features_->push_back(torch::nn::ReLU());
        } else {
          features_->push_back(
              torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(layer.kernel).stride(layer.stride)));
        }
      }
    }
    for (size_t l = 0; l < taps_.size(); ++l) {
      const auto channels = layers_[taps_[l] - 1].out_channels;  // each tap is the ReLU right after a conv
      heads_.emplace_back(register_module("lin" + std::to_string(l), LpipsHead(channels)));
    }
    for (auto& parameter : parameters()) parameter.requires_grad_(false);
  }

  /// LPIPS of each image pair: `x` and `y` [B, C, H, W] (or one image [C, H, W]) of the same shape, C = 3
  /// (RGB) or 1 (grayscale, repeated to 3 channels as lpips sees a grayscale file), in [-1, 1], on the
  /// module's device and in its dtype. Returns [B] in that dtype; 0 for identical images.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& y) { return layers(x, y).sum(1); }

  /// The five per-tap terms whose sum is `forward` (lpips's `retPerLayer=True`): [B, 5].
  torch::Tensor layers(const torch::Tensor& x, const torch::Tensor& y) {
    const auto [first, second] = prepare(x, y);
    const int64_t batch = first.size(0);
    // One pass over both batches; every layer treats the images of a batch independently.
    auto h = scale(torch::cat({first, second}));
    std::vector<torch::Tensor> terms;
    size_t next_tap = 0;
    for (size_t index = 0; index < layers_.size() && next_tap < taps_.size(); ++index) {
      h = forward_layer(index, h);
      if (index != taps_[next_tap]) continue;
      const auto normalised = h / (h.square().sum(1, /*keepdim=*/true).sqrt() + 1e-10);
      const auto difference = (normalised.narrow(0, 0, batch) - normalised.narrow(0, batch, batch)).square();
      terms.push_back(heads_[next_tap]->forward(difference).mean({2, 3}).flatten());
      ++next_tap;
    }
    return torch::stack(terms, 1);
  }

  LpipsNetwork network() const { return network_; }

  /// The smallest image side this backbone accepts (lpips_minimum_image_size).
  int64_t minimum_image_size() const { return lpips_minimum_image_size(network_); }

 private:
  torch::Tensor forward_layer(size_t index, const torch::Tensor& h) {
    using K = detail::LpipsLayer::Kind;
    const auto& layer = layers_[index];
    switch (layer.kind) {
      case K::conv:
        return convs_[index]->forward(h);
      case K::relu:
        return torch::relu(h);
      case K::max_pool:
        return torch::max_pool2d(h, layer.kernel, layer.stride);
    }
    return h;
  }

  // lpips's ScalingLayer, with its float32 constants converted to the images' dtype (as Python promotes
  // them).
  static torch::Tensor scale(const torch::Tensor& images) {
    const auto shift = torch::tensor({-.030F, -.088F, -.188F}).to(images.options()).view({1, 3, 1, 1});
    const auto factor = torch::tensor({.458F, .448F, .450F}).to(images.options()).view({1, 3, 1, 1});
    return (images - shift) / factor;
  }

  std::pair<torch::Tensor, torch::Tensor> prepare(const torch::Tensor& x, const torch::Tensor& y) const {
    TORCH_CHECK(x.defined() && y.defined(), "LPIPS: got an undefined tensor");
    TORCH_CHECK(x.dim() == 3 || x.dim() == 4,
                "LPIPS: expected images [B, C, H, W] or one image [C, H, W] in "
                "[-1, 1], got shape ",
                x.sizes());
    TORCH_CHECK(x.sizes() == y.sizes(), "LPIPS: image shapes differ: ", x.sizes(), " and ", y.sizes(),
                "; compare images of the same size");
    auto first = x.dim() == 3 ? x.unsqueeze(0) : x;
    auto second = y.dim() == 3 ? y.unsqueeze(0) : y;
    TORCH_CHECK(first.size(1) == 3 || first.size(1) == 1, "LPIPS: images of shape ", x.sizes(), " have ",
                first.size(1), " channels; expected 3 (RGB) or 1 (grayscale)");
    TORCH_CHECK(first.size(0) >= 1, "LPIPS: an empty batch of shape ", x.sizes());
    const int64_t minimum = minimum_image_size();
    TORCH_CHECK(first.size(2) >= minimum && first.size(3) >= minimum, "LPIPS (", lpips_network_name(network_),
                "): images of ", first.size(2), "x", first.size(3), " pixels are too small; the ",
                network_ == LpipsNetwork::alex ? "AlexNet" : "VGG16", " backbone needs at least ", minimum,
                "x", minimum,
                " (LPIPS does not resize: upsample both images first, or use a smaller backbone)");
    const auto& weight = convs_.front()->weight;
    TORCH_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() == y.scalar_type(),
                "LPIPS: expected floating-point images of one dtype, got ", x.scalar_type(), " and ",
                y.scalar_type());
    TORCH_CHECK(x.device() == weight.device() && y.device() == weight.device() &&
                    x.scalar_type() == weight.scalar_type(),
                "LPIPS: images are ", x.scalar_type(), " on ", x.device(), " but the network is ",
                weight.scalar_type(), " on ", weight.device(), "; move it with lpips->to(device, dtype)");
    if (first.size(1) == 1) {
      first = first.expand({-1, 3, -1, -1});
      second = second.expand({-1, 3, -1, -1});
    }
    return {first, second};
  }

  LpipsNetwork network_;
  std::vector<detail::LpipsLayer> layers_;
  std::array<size_t, 5> taps_;
  torch::nn::Sequential features_{nullptr};
  std::vector<torch::nn::Conv2d> convs_;  // per layer of layers_; empty holders where it is not a convolution
  std::vector<LpipsHead> heads_;
};
TORCH_MODULE(Lpips);

}  // namespace diffpost
