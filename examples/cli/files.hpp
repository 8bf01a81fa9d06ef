// Inputs and outputs of the diffpost tool: gathering images (files, folders, the bundled Fashion-MNIST test
// split), preparing an output folder that is known to be writable, refusing to overwrite unless --force, and
// writing text files atomically.
#pragma once

#include <diffpost/io/datasets.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/image.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "options.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

/// One input image: a short name for output files, the image [1, C, H, W] in [-1, 1], and where it came from.
struct InputImage {
  std::string name;
  torch::Tensor image;
  std::string source;
};

/// Whether `path` has an extension stb reads.
inline bool is_image_file(const fs::path& path) {
  auto extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  static const std::set<std::string> known{".png", ".jpg", ".jpeg", ".bmp", ".tga",
                                           ".gif", ".pgm", ".ppm",  ".pnm"};
  return known.count(extension) > 0;
}

/// Reads the first `count` images of the Fashion-MNIST test split (10,000 images, not used to train the
/// bundled prior) from Debian's dataset-fashion-mnist package.
inline std::vector<InputImage> load_test_set(int64_t count) {
  const auto path = debian_fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz";
  std::error_code error;
  if (!fs::is_regular_file(path, error))
    throw UsageError(fmt::format("--test-set needs '{}' (install the Debian package dataset-fashion-mnist)",
                                 path.string()));
  const auto images = read_idx_images(path, count);
  if (images.size(0) < count)
    throw UsageError(fmt::format("--test-set {}: the test split has only {} images", count, images.size(0)));
  std::vector<InputImage> inputs;
  for (int64_t i = 0; i < count; ++i)
    inputs.push_back({fmt::format("fmnist_test_{:05}", i), images.narrow(0, i, 1).contiguous(),
                      fmt::format("Fashion-MNIST test image {}", i)});
  return inputs;
}

/// Gathers the inputs: each positional argument is an image file or a folder (its image files, sorted by
/// name), then the first `test_set` test images. `channels` as in load_image (0 keeps the file's kind).
/// Images must be `size` x `size` unless `size` is 0. Two inputs with the same file name are an error, since
/// their outputs would collide.
inline std::vector<InputImage> gather_inputs(const std::vector<std::string>& paths, int64_t test_set,
                                             int channels, int64_t size) {
  std::vector<fs::path> files;
  std::error_code error;
  for (const auto& argument : paths) {
    const fs::path path(argument);
    if (fs::is_directory(path, error)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::directory_iterator(path, error))
        if (entry.is_regular_file() && is_image_file(entry.path()) &&
            entry.path().filename().string()[0] != '.')
          found.push_back(entry.path());
      if (found.empty()) throw UsageError(fmt::format("folder '{}' holds no image files", argument));
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(path, error)) {
      files.push_back(path);
    } else {
      throw UsageError(fmt::format("cannot read '{}': no such file or folder", argument));
    }
  }
  std::vector<InputImage> inputs;
  std::set<std::string> names;
  for (const auto& file : files) {
    auto image = load_image(file.string(), channels);
    if (size > 0 && (image.size(2) != size || image.size(3) != size))
      throw UsageError(fmt::format("'{}' is {}x{} but the model works on {}x{} images (resize it first)",
                                   file.string(), image.size(3), image.size(2), size, size));
    const auto name = file.stem().string();
    if (!names.insert(name).second)
      throw UsageError(
          fmt::format("two inputs are named '{}'; their outputs would collide (rename one)", name));
    inputs.push_back({name, image, file.string()});
  }
  if (test_set > 0) {
    auto test = load_test_set(test_set);
    for (auto& input : test) {
      if (size > 0 && input.image.size(2) != size)
        throw UsageError(fmt::format(
            "the Fashion-MNIST test images are 28x28 but the model works on {}x{} images", size, size));
      if (channels == 3) input.image = input.image.repeat({1, 3, 1, 1});
      inputs.push_back(std::move(input));
    }
  }
  if (inputs.empty()) throw UsageError("no input images: give image files, a folder, or --test-set N");
  return inputs;
}

/// Creates `folder` (and its parents) and checks that a file can be created in it, so that a run fails
/// before it starts rather than after minutes of sampling.
inline void prepare_output_folder(const fs::path& folder) {
  std::error_code error;
  if (fs::exists(folder, error) && !fs::is_directory(folder, error))
    throw UsageError(fmt::format("output folder '{}' exists and is not a folder", folder.string()));
  fs::create_directories(folder, error);
  if (error)
    throw UsageError(fmt::format("cannot create output folder '{}': {}", folder.string(), error.message()));
  const auto probe = folder / fmt::format(".diffpost-write-test-{}", static_cast<long>(::getpid()));
  {
    std::ofstream out(probe);
    if (!out.good()) throw UsageError(fmt::format("output folder '{}' is not writable", folder.string()));
  }
  fs::remove(probe, error);
}

/// Throws when one of `paths` exists and `force` is false, naming the first such file; `resumable` adds the
/// hint that --resume finishes an interrupted run (restore, eval).
inline void check_no_overwrite(const std::vector<fs::path>& paths, bool force, bool resumable = false) {
  if (force) return;
  std::error_code error;
  for (const auto& path : paths)
    if (fs::exists(path, error))
      throw UsageError(
          fmt::format("'{}' already exists; pass --force to overwrite{}, or choose another --out",
                      path.string(), resumable ? ", --resume to finish the run there" : ""));
}

/// Writes `text` to `path` through a temporary file and a rename (never half-written).
inline void write_text(const fs::path& path, const std::string& text, bool overwrite) {
  diffpost::detail::write_file_atomically(path, overwrite, "diffpost", "pass --force to overwrite",
                                          [&](std::ostream& out) { out << text; });
}

}  // namespace diffpost::cli
