// Test support: the error measure of the parity tests and the random weights of their fixtures.
#pragma once

#include <torch/torch.h>

#include <cmath>

namespace diffpost::testing {

/// max |actual - expected| / max |expected|: the worst element's error relative to the largest value.
inline double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

/// Redraws a module's parameters as the fixture scripts did in Python: in state-dict order from one stream;
/// dim > 1: N(0,1)/sqrt(fan_in), 1-D weights: 1 + 0.1 N(0,1), biases: 0.1 N(0,1).
inline void randomize_parameters(torch::nn::Module& model, at::Generator generator) {
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    auto& p = item.value();
    const auto draw = at::randn(p.sizes(), generator, p.options());
    if (p.dim() > 1) {
      p.copy_(draw / std::sqrt(static_cast<double>(p[0].numel())));
    } else if (item.key().ends_with("weight")) {
      p.copy_(1 + 0.1 * draw);
    } else {
      p.copy_(0.1 * draw);
    }
  }
}

}  // namespace diffpost::testing
