// Private to diffpost: not part of the public API, may change without notice.
//
// Every difference between the LibTorch releases diffpost supports (Debian 12's 1.13 and the 2.x releases
// from pytorch.org and pip), in one place. Code elsewhere uses what is here instead of testing versions.
// What differs, and where diffpost avoids the difference instead of bridging it:
//   * torch/linalg.h and torch::linalg are gone in 2.x: use the ATen functions (at::linalg_pinv, ...),
//     present in both.
//   * c10::Allocator::allocate is non-const since 2.3, and copy_data is a new pure virtual: AllocatorBase.
//   * fmt: LibTorch 2.x ships fmt 11+ headers that shadow the system's; diffpost uses fmt header-only
//     (fmt::fmt-header-only), and fmt::join needs <fmt/ranges.h> there.
//   * caffe2::serialize's zip reader and writer changed behaviour between releases: diffpost reads and
//     writes torch.save archives itself (io/detail/zip_archive.hpp).
//   * CUDA: every LibTorch ships the ATen/cuda and c10/cuda headers, but only a CUDA build has their symbols
//     (libtorch_cuda, libc10_cuda). DIFFPOST_HAS_CUDA says whether the CUDA-only code (CUDA graphs, the CUDA
//     caching allocator's statistics) is compiled; everything else reaches CUDA through LibTorch's hooks
//     (torch::cuda::is_available, at::globalContext()), which link in every build.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>
#include <torch/version.h>

#include <cstddef>
#include <cstdint>

// DIFFPOST_WITH_CUDA comes from diffpost's CMake package (1 when the LibTorch found has a torch_cuda target,
// else 0). Without it (a build that does not use the package) the headers decide: only a CUDA build of
// LibTorch generates c10/cuda/impl/cuda_cmake_macros.h, and the CUDA toolkit's headers must be on the path.
#if !defined(DIFFPOST_WITH_CUDA)
#define DIFFPOST_WITH_CUDA 1
#endif
#if DIFFPOST_WITH_CUDA && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>) && \
    __has_include(<ATen/cuda/CUDAGraph.h>) && __has_include(<cuda_runtime_api.h>)
/// 1 when the CUDA-only code is compiled (a CUDA LibTorch and the CUDA toolkit's headers), else 0.
#define DIFFPOST_HAS_CUDA 1
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#else
#define DIFFPOST_HAS_CUDA 0
#endif

/// True when compiling against LibTorch `major.minor` or newer.
#define DIFFPOST_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace diffpost::detail {

/// A c10::Allocator with the signature of the LibTorch release at hand: derived classes implement
/// `allocate_bytes`; copies between blocks use LibTorch's default (memcpy).
class AllocatorBase : public c10::Allocator {
 public:
#if DIFFPOST_TORCH_AT_LEAST(2, 3)
  c10::DataPtr allocate(std::size_t bytes) override {
    return allocate_bytes(bytes);
  }
  void copy_data(void* destination, const void* source, std::size_t bytes) const override {
    default_copy_data(destination, source, bytes);
  }
#else
  [[nodiscard]] c10::DataPtr allocate(std::size_t bytes) const override {
    return const_cast<AllocatorBase*>(this)->allocate_bytes(bytes);
  }
#endif

 protected:
  virtual c10::DataPtr allocate_bytes(std::size_t bytes) = 0;
};

#if DIFFPOST_HAS_CUDA
/// Bytes held by tensors on CUDA device `index` at the most since the last `reset_cuda_peak_bytes`, from the
/// CUDA caching allocator (`torch.cuda.max_memory_allocated`). Index 0 of the statistics arrays is the
/// aggregate over the small and large pools in every release (StatType::AGGREGATE).
inline int64_t cuda_peak_allocated_bytes(c10::DeviceIndex index) {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(index).allocated_bytes[0].peak;
}

/// Restarts the peak of `cuda_peak_allocated_bytes` from what is allocated now.
inline void reset_cuda_peak_bytes(c10::DeviceIndex index) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(index);
}
#endif

}  // namespace diffpost::detail
