// Exponential moving average of model weights (Polyak averaging), the weights diffusion models are sampled
// with: the raw weights of a diffusion model at any one step are noticeably worse than their average.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>

namespace diffpost {

/// The decay used at optimizer step `step` (0-based) for a target decay `decay`: min(decay, (1 + step) / (10
/// + step)), the warm-up of TensorFlow's ExponentialMovingAverage with num_updates, so that the average is
/// not dominated by the random initial weights during a short run.
inline double ema_decay_at(int64_t step, double decay) {
  return std::min(decay, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
}

/// Updates every parameter of `average` towards the same-named parameter of `model`: a <- d a + (1 - d) p.
/// Buffers are copied. Both modules must have the same structure (e.g. two AdmUNets built from the same
/// options); a mismatch throws c10::Error naming the parameter.
inline void ema_update(torch::nn::Module& average, const torch::nn::Module& model, double decay) {
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, "ema_update: decay must be in [0, 1], got ", decay);
  torch::NoGradGuard no_grad;
  const auto source = model.named_parameters(true);
  for (auto& item : average.named_parameters(true)) {
    const auto* p = source.find(item.key());
    TORCH_CHECK(p != nullptr, "ema_update: parameter '", item.key(), "' is missing from the model");
    TORCH_CHECK(p->sizes() == item.value().sizes(), "ema_update: parameter '", item.key(), "' has shape ",
                item.value().sizes(), " in the average but ", p->sizes(), " in the model");
    item.value().mul_(decay).add_(*p, 1.0 - decay);
  }
  const auto buffers = model.named_buffers(true);
  for (auto& item : average.named_buffers(true)) {
    const auto* b = buffers.find(item.key());
    TORCH_CHECK(b != nullptr, "ema_update: buffer '", item.key(), "' is missing from the model");
    item.value().copy_(*b);
  }
}

}  // namespace diffpost
