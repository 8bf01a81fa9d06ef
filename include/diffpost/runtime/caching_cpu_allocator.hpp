// A caching allocator for LibTorch's CPU tensors, the CPU counterpart of PyTorch's CUDA caching allocator.
//
// Why: LibTorch's default CPU allocator hands every block back to the C library when a tensor dies, and glibc
// unmaps blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) when they are freed. The next
// tensor of that size is then fresh memory, and every 4 KiB page of it costs a page fault on first touch. A
// UNet step allocates hundreds of such activations, so on a virtual machine the faults cost more than the
// arithmetic: one 3x3 convolution, 128 channels at 256x256, takes 252 ms with the default allocator and 52 ms
// when its memory is reused (docs/performance.md). This allocator keeps freed blocks and hands them out
// again, so a sampling loop touches fresh pages only in its first step.
//
// Installing it is a process-wide decision, so the library never does it behind the caller's back: call
// `install_caching_cpu_allocator()` once at the start of `main`, before the tensors you care about are made.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <unordered_map>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <unistd.h>
#include <diffpost/detail/torch_compat.hpp>

namespace diffpost {

/// Counters of the caching CPU allocator, in bytes of the blocks it manages (a block can be up to 1/8 larger
/// than the request it served). `hits` and `misses` count cached requests that were served from the cache and
/// from the C library.
struct CpuCacheStats {
  std::size_t allocated_bytes = 0;  ///< held by live tensors
  std::size_t cached_bytes = 0;     ///< free, kept for reuse
  std::size_t peak_allocated_bytes = 0;
  std::size_t hits = 0;
  std::size_t misses = 0;
};

/// The process-wide caching CPU allocator (`CachingCpuAllocator::instance()`). Blocks of at least
/// `min_cached_bytes()` are kept when freed and reused for any later request they fit with at most 1/8 to
/// spare; smaller ones go straight to the C library, which serves them from its heap.
/// Freed blocks beyond `max_cached_bytes()` (default: half the physical memory) are returned to the C
/// library, and `empty_cache()` returns all of them. Memory is 64-byte aligned, as LibTorch's own allocator
/// gives it. Thread-safe.
class CachingCpuAllocator final : public detail::AllocatorBase {
 public:
  /// The single instance. It is never destroyed, so tensors that outlive `main` can still be freed.
  static CachingCpuAllocator& instance() {
    // NOLINTNEXTLINE(cppcoreguidelines-avoid-non-const-global-variables): the one allocator, thread-safe
    static auto* allocator = new CachingCpuAllocator();
    return *allocator;
  }

  CachingCpuAllocator(const CachingCpuAllocator&) = delete;
  CachingCpuAllocator& operator=(const CachingCpuAllocator&) = delete;
  ~CachingCpuAllocator() override = default;

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  /// A snapshot of the counters.
  CpuCacheStats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }

  /// Restarts `peak_allocated_bytes` from what live tensors hold now, so that a later `stats()` gives the
  /// peak of what ran in between (`torch.cuda.reset_peak_memory_stats` for the CPU).
  void reset_peak() {
    std::lock_guard lock(mutex_);
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }

  /// Returns every cached (free) block to the C library. Live tensors are not affected.
  void empty_cache() {
    std::lock_guard lock(mutex_);
    for (const auto& [size, data] : free_blocks_) c10::free_cpu(data);
    free_blocks_.clear();
    stats_.cached_bytes = 0;
  }

  /// The most free memory kept for reuse; blocks freed beyond it go back to the C library at once.
  std::size_t max_cached_bytes() const {
    std::lock_guard lock(mutex_);
    return max_cached_bytes_;
  }
  void set_max_cached_bytes(std::size_t bytes) {
    std::lock_guard lock(mutex_);
    max_cached_bytes_ = bytes;
    while (stats_.cached_bytes > max_cached_bytes_ && !free_blocks_.empty()) {
      auto largest = std::prev(free_blocks_.end());
      stats_.cached_bytes -= largest->first;
      c10::free_cpu(largest->second);
      free_blocks_.erase(largest);
    }
  }

  /// Requests smaller than this (64 KiB) are not cached.
  static constexpr std::size_t min_cached_bytes() { return kMinCachedBytes; }

  /// Whether `data` is a live block handed out by this allocator.
  bool owns(const void* data) const {
    std::lock_guard lock(mutex_);
    return live_blocks_.contains(const_cast<void*>(data));
  }

 private:
  friend void install_caching_cpu_allocator();

  CachingCpuAllocator() : max_cached_bytes_(default_max_cached_bytes()) {}

  static std::size_t default_max_cached_bytes() {
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page_size <= 0) return std::size_t{4} << 30;
    return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size) / 2;
  }

  c10::DataPtr allocate_bytes(std::size_t bytes) override {
    void* data = take(bytes);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // A cached block fits a request if it is at most 1/8 larger, so one large block cannot be pinned by a run
  // of small requests.
  void* take(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    {
      std::lock_guard lock(mutex_);
      if (bytes >= kMinCachedBytes) {
        auto it = free_blocks_.lower_bound(bytes);
        if (it != free_blocks_.end() && it->first - bytes <= bytes / 8) {
          const auto [size, data] = *it;
          free_blocks_.erase(it);
          stats_.cached_bytes -= size;
          ++stats_.hits;
          hand_out(data, size);
          return data;
        }
        ++stats_.misses;
      }
    }
    void* data = allocate_from_system(bytes);
    std::lock_guard lock(mutex_);
    hand_out(data, bytes);
    return data;
  }

  // On failure, frees the cache and tries once more before reporting the failure as LibTorch does.
  void* allocate_from_system(std::size_t bytes) {
    try {
      return c10::alloc_cpu(bytes);
    } catch (const c10::Error&) {
      empty_cache();
      return c10::alloc_cpu(bytes);
    }
  }

  void hand_out(void* data, std::size_t size) {
    live_blocks_[data] = size;
    stats_.allocated_bytes += size;
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  }

  // The deleter of every block handed out. A pointer this allocator does not know was raw-allocated (oneDNN
  // scratch memory) by the allocator installed before it, so it goes back to that one.
  static void release(void* data) {
    if (data == nullptr) return;
    auto& self = instance();
    std::unique_lock lock(self.mutex_);
    const auto it = self.live_blocks_.find(data);
    if (it == self.live_blocks_.end()) {
      lock.unlock();
      self.previous_raw_deleter_(data);
      return;
    }
    const std::size_t size = it->second;
    self.live_blocks_.erase(it);
    self.stats_.allocated_bytes -= size;
    if (size >= kMinCachedBytes && self.stats_.cached_bytes + size <= self.max_cached_bytes_) {
      self.free_blocks_.emplace(size, data);
      self.stats_.cached_bytes += size;
      return;
    }
    lock.unlock();
    c10::free_cpu(data);
  }

  static constexpr std::size_t kMinCachedBytes = std::size_t{64} << 10;

  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_blocks_;       // size -> block
  std::unordered_map<void*, std::size_t> live_blocks_;  // block -> size
  CpuCacheStats stats_;
  std::size_t max_cached_bytes_;
  c10::DeleterFnPtr previous_raw_deleter_ = &c10::free_cpu;
};

/// Makes `CachingCpuAllocator::instance()` LibTorch's CPU allocator for the rest of the process. Tensors made
/// before keep their own deleters and are freed as before. Call it once, early in `main`; later calls do
/// nothing. There is no uninstall: blocks handed out must stay valid for the life of the process.
inline void install_caching_cpu_allocator() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    auto& allocator = CachingCpuAllocator::instance();
    if (const auto previous = c10::GetCPUAllocator()->raw_deleter())
      allocator.previous_raw_deleter_ = previous;
    c10::SetCPUAllocator(&allocator, std::numeric_limits<uint8_t>::max());
  });
}

/// Whether LibTorch's CPU allocator is the caching allocator.
inline bool caching_cpu_allocator_installed() {
  return c10::GetCPUAllocator() == &CachingCpuAllocator::instance();
}

}  // namespace diffpost
