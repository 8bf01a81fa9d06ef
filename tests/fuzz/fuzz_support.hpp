// Fuzzing support: what every harness does around the code under test. A harness accepts a c10::Error (the
// documented way diffpost refuses an input); anything else that escapes - another exception, a crash, an
// address or undefined-behaviour report, a leak, a timeout, an allocation over -malloc_limit_mb - is a
// finding.
#pragma once

#include <torch/torch.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace diffpost::fuzzing {

/// The input as a string view.
inline std::string_view bytes_of(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// A file of this process (one per `name`), rewritten with `bytes` on each call: for the harnesses that read
/// from a path. It lives in /dev/shm where there is one (on a disk, opening and closing it took 80% of the
/// image harness's time: 260 runs a second instead of 4,400), else in the temp folder, and is removed at
/// exit.
inline std::string write_scratch_file(const std::string& name, std::string_view bytes) {
  static const auto folder = [] {
    std::error_code error;
    const bool shared_memory =
        std::filesystem::is_directory("/dev/shm", error) && ::access("/dev/shm", W_OK) == 0;
    auto path = (shared_memory ? std::filesystem::path("/dev/shm") : std::filesystem::temp_directory_path()) /
                ("diffpost-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    static const auto removed_at_exit = path;
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(removed_at_exit, ignored);
    });
    return path;
  }();
  const auto path = (folder / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

/// LibTorch on one thread (no pool to start per input) and without its own stack traces in error messages.
inline void initialise_torch() {
  torch::set_num_threads(1);
  c10::SetStackTraceFetcher([] { return std::string(); });
}

}  // namespace diffpost::fuzzing
