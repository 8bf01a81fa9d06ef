// Private to diffpost: not part of the public API, may change without notice.
//
// The one way diffpost writes a file: into a temporary sibling, then renamed into place (or hard-linked,
// when the target must not be replaced), so that a file appears complete or not at all, also when the
// process is interrupted.
#pragma once

#include <c10/util/Exception.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <string>
#include <system_error>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace diffpost::detail {

/// Writes `path` with `write`, which fills a stream: first into `<path>.tmp-<pid>-<n>` in the same folder
/// (so the final rename stays on one file system), then renamed over `path` when `overwrite`, or hard-linked
/// to it otherwise, which fails if `path` appeared meanwhile, so a file created by someone else is never
/// replaced. On failure the temporary is removed and a c10::Error names `context`, the path and the cause;
/// `refusal` ends the message when `path` exists and may not be replaced ("pass --force to overwrite").
inline void write_file_atomically(const std::filesystem::path& path, bool overwrite,
                                  const std::string& context, const std::string& refusal,
                                  const std::function<void(std::ostream&)>& write) {
  namespace fs = std::filesystem;
  std::error_code error;
  const auto exists_message = [&] {
    return c10::str(context, ": '", path.string(), "' already exists; ", refusal);
  };
  TORCH_CHECK(overwrite || !fs::exists(path, error), exists_message());
  const auto parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  TORCH_CHECK(fs::is_directory(parent, error), context, ": cannot write '", path.string(), "': folder '",
              parent.string(), "' does not exist");
  static std::atomic<uint64_t> counter{0};
  long process = 0;
#if defined(__unix__) || defined(__APPLE__)
  process = static_cast<long>(::getpid());
#endif
  auto temporary = path;
  temporary += ".tmp-" + std::to_string(process) + "-" + std::to_string(counter++);
  const auto discard = [&] {
    std::error_code ignored;
    fs::remove(temporary, ignored);
  };
  try {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out.good(), context, ": cannot write '", path.string(), "': cannot create '",
                temporary.string(), "': ", std::strerror(errno));
    write(out);
    out.close();
    TORCH_CHECK(out.good(), context, ": cannot write '", path.string(), "': write error on '",
                temporary.string(), "' (disk full?)");
  } catch (...) {
    discard();
    throw;
  }
  if (!overwrite) {
    fs::create_hard_link(temporary, path, error);
    const bool linked = !error;
    if (linked || fs::exists(path)) {
      discard();
      TORCH_CHECK(linked, exists_message());
      return;
    }
    error.clear();  // a file system without hard links: rename, after the check above
  }
  fs::rename(temporary, path, error);
  if (error) {
    discard();
    TORCH_CHECK(false, context, ": cannot write '", path.string(), "': ", error.message());
  }
}

}  // namespace diffpost::detail
