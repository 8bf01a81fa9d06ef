// Private to diffpost: not part of the public API, may change without notice.
//
// stb_image and stb_image_write for a header-only library. stb is a single-file library whose implementation
// is compiled where STB_IMAGE_IMPLEMENTATION is defined; a header-only library cannot pick one translation
// unit for it. diffpost therefore compiles a private copy with internal linkage (STB_IMAGE_STATIC and
// STB_IMAGE_WRITE_STATIC make every stb function `static`) in each translation unit that includes
// <diffpost/io/image.hpp>. Consequences:
//   * no duplicate symbols at link time, whatever the number of translation units, and no clash with an stb
//     implementation the application compiles itself in another translation unit;
//   * in one translation unit, include <diffpost/io/image.hpp> BEFORE any stb_image.h / stb_image_write.h of
//     your own (stb's include guards would otherwise hide the static declarations; this is checked below);
//   * if you prefer to provide the stb implementation yourself (one .cpp with STB_IMAGE_IMPLEMENTATION and
//     STB_IMAGE_WRITE_IMPLEMENTATION), define DIFFPOST_EXTERNAL_STB before including diffpost: only the
//     declarations are included then, and the allocation budget below does not apply to your copy.
//
// The private copy reads only the formats diffpost supports (PNG, JPEG, GIF, TGA; BMP and PGM/PPM are decoded
// by diffpost itself, see io/image.hpp), reads no files itself (STBI_NO_STDIO: diffpost reads them, bounded),
// and allocates through stb_malloc / stb_realloc / stb_free below, which refuse any request beyond the budget
// the loader sets from the image header, so that no file can make stb allocate more than its header
// justifies.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace diffpost::detail {

/// The bytes the private stb holds and may hold on this thread. The image loader sets `limit` for one decode
/// (StbBudget) and reads the rest to tell a refused allocation from a corrupt file; tests read `peak` to show
/// that a hostile header is refused before anything of its declared size is allocated.
struct StbAllocations {
  std::size_t limit = std::numeric_limits<std::size_t>::max();  ///< most bytes stb may hold at once
  std::size_t live = 0;                                         ///< bytes stb holds now
  std::size_t peak = 0;                                         ///< most bytes held since the last reset
  std::size_t refused = 0;                                      ///< requests turned down since the last reset
};

inline StbAllocations& stb_allocations() {
  static thread_local StbAllocations allocations;
  return allocations;
}

/// Each block carries its size in front, so that frees and reallocations keep `live` exact; the header keeps
/// malloc's alignment.
inline constexpr std::size_t kStbBlockHeader = alignof(std::max_align_t);

inline bool stb_may_grow_by(std::size_t extra) {
  auto& state = stb_allocations();
  return state.live <= state.limit && extra <= state.limit - state.live &&
         extra <= std::numeric_limits<std::size_t>::max() - kStbBlockHeader - state.live;
}

inline void stb_account(std::size_t old_size, std::size_t new_size) {
  auto& state = stb_allocations();
  state.live = state.live - old_size + new_size;
  state.peak = std::max(state.peak, state.live);
}

inline void* stb_malloc(std::size_t size) {
  if (!stb_may_grow_by(size)) {
    ++stb_allocations().refused;
    return nullptr;
  }
  // Zeroed: stb 2.27 leaves parts of some corrupt JPEGs' planes unwritten and would otherwise hand out
  // leftover heap memory as pixels (found by tests/fuzz: the same file decoded differently twice).
  auto* block = static_cast<unsigned char*>(std::calloc(1, kStbBlockHeader + size));
  if (block == nullptr) return nullptr;
  std::memcpy(block, &size, sizeof(size));
  stb_account(0, size);
  return block + kStbBlockHeader;
}

inline void stb_free(void* pointer) {
  if (pointer == nullptr) return;
  auto* block = static_cast<unsigned char*>(pointer) - kStbBlockHeader;
  std::size_t size = 0;
  std::memcpy(&size, block, sizeof(size));
  stb_account(size, 0);
  std::free(block);
}

inline void* stb_realloc(void* pointer, std::size_t size) {
  if (pointer == nullptr) return stb_malloc(size);
  auto* block = static_cast<unsigned char*>(pointer) - kStbBlockHeader;
  std::size_t old_size = 0;
  std::memcpy(&old_size, block, sizeof(old_size));
  if (size > old_size && !stb_may_grow_by(size - old_size)) {
    ++stb_allocations().refused;
    return nullptr;  // stb keeps (and later frees) the old block
  }
  auto* grown = static_cast<unsigned char*>(std::realloc(block, kStbBlockHeader + size));
  if (grown == nullptr) return nullptr;
  if (size > old_size) std::memset(grown + kStbBlockHeader + old_size, 0, size - old_size);  // as stb_malloc
  std::memcpy(grown, &size, sizeof(size));
  stb_account(old_size, size);
  return grown + kStbBlockHeader;
}

/// Sets the budget of the private stb for one decode on this thread and resets the counters; restores an
/// unlimited budget when it goes out of scope.
class StbBudget {
 public:
  explicit StbBudget(std::size_t limit) {
    auto& state = stb_allocations();
    state.limit = limit;
    state.peak = state.live;
    state.refused = 0;
  }
  ~StbBudget() { stb_allocations().limit = std::numeric_limits<std::size_t>::max(); }
  StbBudget(const StbBudget&) = delete;
  StbBudget& operator=(const StbBudget&) = delete;
};

}  // namespace diffpost::detail

#if defined(DIFFPOST_EXTERNAL_STB)
#include <stb_image.h>
#include <stb_image_write.h>
#else
#if defined(STBI_INCLUDE_STB_IMAGE_H) || defined(INCLUDE_STB_IMAGE_WRITE_H)
#error \
    "diffpost: include <diffpost/io/image.hpp> before stb_image.h / stb_image_write.h, \
or define DIFFPOST_EXTERNAL_STB and compile the stb implementation yourself"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_MALLOC(size) ::diffpost::detail::stb_malloc(size)
#define STBI_REALLOC(pointer, size) ::diffpost::detail::stb_realloc(pointer, size)
#define STBI_FREE(pointer) ::diffpost::detail::stb_free(pointer)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#undef STB_IMAGE_IMPLEMENTATION
#undef STB_IMAGE_WRITE_IMPLEMENTATION
#undef STBI_ONLY_PNG
#undef STBI_ONLY_JPEG
#undef STBI_ONLY_GIF
#undef STBI_ONLY_TGA
#endif

// stb_easy_font, the text of save_grid's labels: a bitmap font drawn as quads, ASCII only, every function
// `static` and no implementation macro, so one include serves every translation unit, with or without
// DIFFPOST_EXTERNAL_STB.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <stb_easy_font.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
