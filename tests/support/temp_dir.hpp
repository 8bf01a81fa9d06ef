// Test support: a fresh, empty folder under the system temp folder for files a test writes, removed with
// everything in it when the test leaves its scope.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <filesystem>
#include <iterator>
#include <string>
#include <system_error>

namespace diffpost::testing {

/// An empty folder `<temp>/diffpost-<label>-<pid>-<n>` (n counts the folders this process made, so two
/// TempDirs with the same label never share files), created by the constructor and removed recursively by the
/// destructor. Not copyable: one owner removes it.
class TempDir {
 public:
  explicit TempDir(const std::string& label)
      : path_(std::filesystem::temp_directory_path() /
              ("diffpost-" + label + "-" + std::to_string(::getpid()) + "-" + std::to_string(++count()))) {
    std::filesystem::remove_all(path_);  // left over by an earlier process with the same id
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// The folder.
  const std::filesystem::path& path() const { return path_; }
  /// The path of `name` inside the folder, as a string (for the APIs that take one).
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  /// How many files and folders the folder holds now (to check that a refused call wrote nothing).
  std::size_t entries() const {
    return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(path_), {}));
  }

 private:
  static int& count() {
    static int made = 0;
    return made;
  }
  std::filesystem::path path_;
};

}  // namespace diffpost::testing
