// Peak memory on the CPU (through the caching allocator, which this suite installs) and what gradient
// checkpointing saves: the activations a forward pass keeps for its backward pass.
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>
#include <diffpost/runtime/memory.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cstdint>

using namespace diffpost;

TEST_CASE("peak_memory_bytes on the CPU follows the caching allocator, and reset_peak_memory restarts it") {
  install_caching_cpu_allocator();
  const torch::Device cpu(torch::kCPU);
  reset_peak_memory(cpu);
  const auto before = peak_memory_bytes(cpu);
  REQUIRE(before.has_value());
  const auto live = static_cast<int64_t>(CachingCpuAllocator::instance().stats().allocated_bytes);
  CHECK(*before == live);
  constexpr int64_t bytes = int64_t{16} << 20;
  {
    const auto big = torch::empty({bytes / 4}, torch::kFloat32);
    CHECK(*peak_memory_bytes(cpu) >= live + bytes);
  }
  CHECK(*peak_memory_bytes(cpu) >= live + bytes);  // the peak outlives the tensor
  reset_peak_memory(cpu);
  CHECK(*peak_memory_bytes(cpu) ==
        static_cast<int64_t>(CachingCpuAllocator::instance().stats().allocated_bytes));
  // A build without CUDA has nothing to count on a CUDA device (tests/cuda covers the CUDA allocator).
  if (!DIFFPOST_HAS_CUDA) CHECK_FALSE(peak_memory_bytes(torch::Device(torch::kCUDA, 0)).has_value());
}

TEST_CASE("gradient checkpointing keeps less memory for the backward pass") {
  install_caching_cpu_allocator();
  torch::manual_seed(0);
  const auto options = AdmUNetOptions(32, 32, 1)
                           .channel_mult({1, 2, 2})
                           .attention_resolutions({16, 8})
                           .num_head_channels(16)
                           .learn_sigma(true)
                           .use_scale_shift_norm(true)
                           .resblock_updown(true);
  const auto x = torch::randn({4, 3, 32, 32});
  const auto t = torch::tensor({1, 200, 500, 900}, torch::kLong);
  const torch::Device cpu(torch::kCPU);
  // Bytes kept from the start of a forward pass with its graph until the backward pass starts.
  auto kept_for_backward = [&](bool checkpointing) {
    AdmUNet model(options);
    model->eval();
    model->set_gradient_checkpointing(checkpointing);
    auto input = x.clone().requires_grad_(true);
    const auto allocated = [] {
      return static_cast<int64_t>(CachingCpuAllocator::instance().stats().allocated_bytes);
    };
    const int64_t start = allocated();
    auto out = model(input, t);
    const int64_t kept = allocated() - start;
    reset_peak_memory(cpu);
    auto gradient = torch::autograd::grad({out}, {input}, {torch::ones_like(out)})[0];
    CHECK(gradient.abs().sum().item<double>() >= 0.0);
    return kept;
  };
  const int64_t plain = kept_for_backward(false);
  const int64_t checkpointed = kept_for_backward(true);
  MESSAGE("kept for the backward pass: plain " << plain / 1024 << " KiB, checkpointed " << checkpointed / 1024
                                               << " KiB");
  CHECK(checkpointed < plain / 2);
}
