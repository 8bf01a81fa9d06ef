// The peak memory of a computation on a device: what the benchmarks report, and what gradient checkpointing
// and smaller batches lower.
#pragma once

#include <torch/torch.h>

#include <diffpost/detail/torch_compat.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include <cstdint>
#include <optional>

namespace diffpost {

/// Restarts the peak of `peak_memory_bytes(device)` from what is allocated now. On a CUDA device it resets
/// the CUDA caching allocator's peak statistics (`torch.cuda.reset_peak_memory_stats`); on the CPU that of
/// diffpost's CachingCpuAllocator, when it is installed (nothing happens otherwise).
inline void reset_peak_memory(const torch::Device& device) {
  if (device.is_cuda()) {
#if DIFFPOST_HAS_CUDA
    detail::reset_cuda_peak_bytes(device.has_index() ? device.index() : c10::cuda::current_device());
#endif
    return;
  }
  if (caching_cpu_allocator_installed()) CachingCpuAllocator::instance().reset_peak();
}

/// The most bytes held by tensors on `device` since the last `reset_peak_memory(device)` (or the start of
/// the process): on a CUDA device from the CUDA caching allocator (`torch.cuda.max_memory_allocated`), on the
/// CPU from CachingCpuAllocator (the blocks it handed out, which can be up to 1/8 larger than asked for).
/// std::nullopt when nothing counts: on the CPU without the caching allocator installed, or on CUDA in a
/// build without CUDA. Memory the libraries allocate outside LibTorch's allocators (cuDNN and cuBLAS
/// workspaces are inside; oneDNN's scratch pads are inside on the CPU) is not counted.
inline std::optional<int64_t> peak_memory_bytes(const torch::Device& device) {
  if (device.is_cuda()) {
#if DIFFPOST_HAS_CUDA
    return detail::cuda_peak_allocated_bytes(device.has_index() ? device.index()
                                                                : c10::cuda::current_device());
#else
    return std::nullopt;
#endif
  }
  if (!caching_cpu_allocator_installed()) return std::nullopt;
  return static_cast<int64_t>(CachingCpuAllocator::instance().stats().peak_allocated_bytes);
}

}  // namespace diffpost
