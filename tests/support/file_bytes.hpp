// Test support: a file's bytes, read whole and written whole (tests that make or cut files by hand).
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace diffpost::testing {

/// Every byte of the file at `path` ("" when it cannot be opened).
inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Writes `bytes` to `path`, replacing what was there.
inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace diffpost::testing
