// A small image classifier whose penultimate layer serves as the feature extractor of diffpost's Frechet
// distance (metrics/frechet.hpp): the idea of FID (Heusel et al. 2017), which takes Inception-v3 pool
// features, scaled down to 28x28 grayscale images. The bundled weights (examples/prior/
// fashion_mnist_classifier.pt, trained by examples/train_classifier.cpp) are described in docs/model-card.md.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace diffpost {

/// Hyper-parameters of ImageClassifier, with the values of the bundled Fashion-MNIST classifier as defaults.
struct ImageClassifierOptions {
  /// Image channels (1 = grayscale).
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Side length of the square input images; must be divisible by 4 (two 2x2 poolings).
  TORCH_ARG(int64_t, image_size) = 28;
  /// Number of classes (outputs of `forward`).
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Channels of the first convolution; the second and third have twice as many.
  TORCH_ARG(int64_t, base_channels) = 32;
  /// Width of the penultimate layer, the dimension of `features`.
  TORCH_ARG(int64_t, feature_dim) = 64;
};

/// A small CNN classifier for NCHW images in [-1, 1]:
///   conv3x3(in -> c) GN SiLU, maxpool 2;  conv3x3(c -> 2c) GN SiLU, maxpool 2;  conv3x3(2c -> 2c) GN SiLU;
///   flatten, linear -> feature_dim, SiLU  (= `features`);  linear -> num_classes  (= `forward`, logits).
/// GroupNorm (8 groups) instead of BatchNorm makes the output of each image independent of the rest of the
/// batch and identical in train and eval mode, so features are deterministic whatever the batch. With the
/// default options it has 257,482 parameters (about 1 MB in float32). The parameter names are `conv1`,
/// `norm1`, `conv2`, `norm2`, `conv3`, `norm3`, `feature`, `head`, so `save_checkpoint` / `load_checkpoint`
/// (io/checkpoint.hpp) write and read it like any module.
class ImageClassifierImpl : public torch::nn::Module {
 public:
  /// Builds the network; throws c10::Error on an image size not divisible by 4 or a non-positive size.
  explicit ImageClassifierImpl(const ImageClassifierOptions& options = {}) : options_(options) {
    TORCH_CHECK(options.in_channels() >= 1 && options.num_classes() >= 1 && options.feature_dim() >= 1,
                "ImageClassifier: in_channels (", options.in_channels(), "), num_classes (",
                options.num_classes(), ") and feature_dim (", options.feature_dim(), ") must be >= 1");
    TORCH_CHECK(
        options.base_channels() >= 8 && options.base_channels() % 8 == 0,
        "ImageClassifier: base_channels must be a positive multiple of 8 (GroupNorm with 8 groups), got ",
        options.base_channels());
    TORCH_CHECK(options.image_size() >= 4 && options.image_size() % 4 == 0,
                "ImageClassifier: image_size must be a positive multiple of 4 (two 2x2 poolings), got ",
                options.image_size());
    const int64_t c = options.base_channels();
    auto conv = [](int64_t in, int64_t out) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
    };
    conv1_ = register_module("conv1", conv(options.in_channels(), c));
    norm1_ = register_module("norm1", torch::nn::GroupNorm(torch::nn::GroupNormOptions(kGroups, c)));
    conv2_ = register_module("conv2", conv(c, 2 * c));
    norm2_ = register_module("norm2", torch::nn::GroupNorm(torch::nn::GroupNormOptions(kGroups, 2 * c)));
    conv3_ = register_module("conv3", conv(2 * c, 2 * c));
    norm3_ = register_module("norm3", torch::nn::GroupNorm(torch::nn::GroupNormOptions(kGroups, 2 * c)));
    const int64_t side = options.image_size() / 4;
    feature_ = register_module("feature", torch::nn::Linear(2 * c * side * side, options.feature_dim()));
    head_ = register_module("head", torch::nn::Linear(options.feature_dim(), options.num_classes()));
  }

  /// The penultimate activations [B, feature_dim] of images `x` [B, in_channels, image_size, image_size] in
  /// [-1, 1] (after the SiLU of the feature layer): what the Frechet distance compares. Throws c10::Error
  /// naming the shape when the channels or the size do not match the options.
  torch::Tensor features(const torch::Tensor& x) {
    check_input(x);
    auto h = torch::max_pool2d(torch::silu(norm1_(conv1_(x))), 2);
    h = torch::max_pool2d(torch::silu(norm2_(conv2_(h))), 2);
    h = torch::silu(norm3_(conv3_(h)));
    return torch::silu(feature_(h.flatten(1)));
  }

  /// Class logits [B, num_classes] of images `x` (as `features`); softmax gives the class probabilities.
  torch::Tensor forward(const torch::Tensor& x) { return head_(features(x)); }

  const ImageClassifierOptions& options() const { return options_; }

 private:
  static constexpr int64_t kGroups = 8;

  void check_input(const torch::Tensor& x) const {
    TORCH_CHECK(x.defined() && x.dim() == 4, "ImageClassifier: expected images [B, ", options_.in_channels(),
                ", ", options_.image_size(), ", ", options_.image_size(), "] in [-1, 1], got ",
                x.defined() ? c10::str(x.sizes()) : std::string("an undefined tensor"));
    TORCH_CHECK(x.size(1) == options_.in_channels(), "ImageClassifier: images of shape ", x.sizes(), " have ",
                x.size(1), " channel(s) but the classifier takes ", options_.in_channels(),
                " (convert RGB to grayscale or the other way round first)");
    TORCH_CHECK(x.size(2) == options_.image_size() && x.size(3) == options_.image_size(),
                "ImageClassifier: images of shape ", x.sizes(), " are ", x.size(2), "x", x.size(3),
                " but the classifier takes ", options_.image_size(), "x", options_.image_size(),
                " (resize them first)");
  }

  ImageClassifierOptions options_;
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  torch::nn::GroupNorm norm1_{nullptr}, norm2_{nullptr}, norm3_{nullptr};
  torch::nn::Linear feature_{nullptr}, head_{nullptr};
};

TORCH_MODULE(ImageClassifier);

}  // namespace diffpost
