// Test support: the random weights of the metric fixtures (tests/data/metrics/*/README.md) in the exact file
// layouts users have: torchvision's AlexNet and VGG16 (LPIPS backbones) and pytorch-fid's Inception, drawn
// here from the seeds the Python runs used, so that tests and test programs write them instead of committing
// hundreds of megabytes.
#pragma once

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/metrics/fid_inception.hpp>
#include <diffpost/metrics/lpips.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace diffpost::testing {

// The seeds make_lpips_fixtures drew the backbones from (README.md).
inline uint64_t backbone_seed(LpipsNetwork network) {
  return network == LpipsNetwork::alex ? 2201 : 2202;
}

// The shapes of torchvision's classifier tensors, present in its weight files and ignored by LPIPS.
inline std::vector<std::pair<std::string, std::vector<int64_t>>> torchvision_classifier(
    LpipsNetwork network) {
  if (network == LpipsNetwork::alex) {
    return {{"classifier.1.weight", {4096, 9216}}, {"classifier.1.bias", {4096}},
            {"classifier.4.weight", {4096, 4096}}, {"classifier.4.bias", {4096}},
            {"classifier.6.weight", {1000, 4096}}, {"classifier.6.bias", {1000}}};
  }
  return {{"classifier.0.weight", {4096, 25088}}, {"classifier.0.bias", {4096}},
          {"classifier.3.weight", {4096, 4096}},  {"classifier.3.bias", {4096}},
          {"classifier.6.weight", {1000, 4096}},  {"classifier.6.bias", {1000}}};
}

// torchvision's state dict for `network` with the random features the Python run used: in sorted key order
// from torch::manual_seed(seed), weights randn * sqrt(2 / fan_in), biases randn * 0.1 (the CPU generator
// gives Python's numbers); the classifier as zero tensors of its shapes, stored as one-element broadcast
// views so that the file stays small.
inline StateDict random_backbone(LpipsNetwork network) {
  Lpips shapes(network);
  std::vector<std::pair<std::string, std::vector<int64_t>>> features;
  for (const auto& item : shapes->named_parameters()) {
    if (item.key().rfind("features.", 0) == 0) features.emplace_back(item.key(), item.value().sizes().vec());
  }
  auto sorted = features;
  std::sort(sorted.begin(), sorted.end());
  torch::manual_seed(backbone_seed(network));
  std::map<std::string, torch::Tensor> drawn;
  for (const auto& [name, shape] : sorted) {
    const bool weight = name.ends_with(".weight");
    drawn[name] =
        weight ? torch::randn(shape) * std::sqrt(2.0 / static_cast<double>(shape[1] * shape[2] * shape[3]))
               : torch::randn(shape) * 0.1;
  }
  StateDict state;
  for (const auto& [name, shape] : features) state.insert(name, drawn.at(name));
  for (const auto& [name, shape] : torchvision_classifier(network))
    state.insert(name, torch::zeros({1}).expand(shape));
  return state;
}

// The state dict of torchvision's Inception3(num_classes=1008, aux_logits=False) with the random weights of
// make_fid_fixtures (README.md): in sorted key order from torch::manual_seed(2231), convolutions randn *
// sqrt(2 / fan_in), batch-norm weights and running variances rand * 0.5 + 0.75, biases and running means
// randn
// * 0.1; num_batches_tracked and fc zero, without drawing. fc is a broadcast view of one zero, which keeps
// the file 8 MB smaller.
inline StateDict random_fid_inception() {
  FidInceptionV3 shapes;
  const auto model = diffpost::state_dict(*shapes);
  auto keys = model.keys();
  std::sort(keys.begin(), keys.end());
  torch::manual_seed(2231);
  std::map<std::string, torch::Tensor> drawn;
  for (const auto& key : keys) {
    const auto& like = model.at(key);
    const auto shape = like.sizes().vec();
    if (key.ends_with("num_batches_tracked")) {
      drawn[key] = torch::zeros_like(like);
    } else if (key.ends_with("conv.weight")) {
      drawn[key] = torch::randn(shape) * std::sqrt(2.0 / static_cast<double>(shape[1] * shape[2] * shape[3]));
    } else if (key.ends_with("bn.weight") || key.ends_with("bn.running_var")) {
      drawn[key] = torch::rand(shape) * 0.5 + 0.75;
    } else if (key.ends_with("bn.bias") || key.ends_with("bn.running_mean")) {
      drawn[key] = torch::randn(shape) * 0.1;
    } else {
      TORCH_CHECK(false, "random_fid_inception: no rule for key ", key);
    }
  }
  StateDict state;
  for (const auto& key : model.keys()) state.insert(key, drawn.at(key));
  state.insert("fc.weight", torch::zeros({1}).expand({1008, 2048}));
  state.insert("fc.bias", torch::zeros({1}).expand({1008}));
  return state;
}

}  // namespace diffpost::testing
