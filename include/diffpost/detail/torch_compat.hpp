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
//     writes torch.save archives itself (detail/zip_archive.hpp).
#pragma once

#include <c10/core/Allocator.h>
#include <torch/version.h>

#include <cstddef>

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
  c10::DataPtr allocate(std::size_t bytes) const override {
    return const_cast<AllocatorBase*>(this)->allocate_bytes(bytes);
  }
#endif

 protected:
  virtual c10::DataPtr allocate_bytes(std::size_t bytes) = 0;
};

}  // namespace diffpost::detail
