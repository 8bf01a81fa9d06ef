// Test support for the CUDA suite: the device, CPU <-> CUDA comparisons, and the small reference UNet.
#pragma once

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>

#include <torch/torch.h>

#include "support/adm_small.hpp"

#include <string>

namespace diffpost::testing {

/// The first CUDA device.
inline torch::Device cuda() {
  return {torch::kCUDA, 0};
}

/// max |actual - expected| / max |expected|, with `actual` brought to expected's device.
inline double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.detach().to(expected.device(), expected.scalar_type());
  return ((a - expected).abs().max() / expected.abs().max()).item<double>();
}

/// ||actual - expected|| / ||expected||.
inline double relative_l2_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.detach().to(expected.device(), expected.scalar_type());
  return ((a - expected).norm() / expected.norm()).item<double>();
}

/// The reference's small UNet with its weights (tests/data/adm_small), in eval mode on `device`.
inline AdmUNet small_model(const torch::Device& device) {
  AdmUNet model(adm_small_options());
  load_checkpoint(model, adm_small_state_dict_path());
  model->eval();
  model->to(device);
  return model;
}

/// The reference run of the small UNet: "x", "t" and its float32 output "out", on the CPU.
inline StateDict small_reference_run() {
  return read_state_dict(std::string(DIFFPOST_TEST_DATA_DIR) + "/adm_small/small_io.pt");
}

}  // namespace diffpost::testing
