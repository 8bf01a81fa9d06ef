// Reading training and evaluation data: IDX files (the MNIST / Fashion-MNIST format, gzip-compressed or
// plain) and folders of same-size images. Images come back as float32 [N, C, H, W] in [-1, 1]
// (x = 2 p / 255 - 1), the convention of every other part of diffpost.
//
// IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a type byte
// (0x08 = unsigned byte) and a dimension count, then one 32-bit big-endian size per dimension, then the data
// in row-major order. Debian's `dataset-fashion-mnist` installs the four Fashion-MNIST files gzip-compressed
// under /usr/share/datasets/fashion-mnist/.
#pragma once

#include <diffpost/io/image.hpp>

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

namespace diffpost {

/// The Fashion-MNIST folder of Debian's `dataset-fashion-mnist` package.
inline const std::filesystem::path& debian_fashion_mnist_dir() {
  static const std::filesystem::path dir = "/usr/share/datasets/fashion-mnist";
  return dir;
}

/// An IDX array of unsigned bytes: its dimensions and its data as a uint8 tensor of that shape.
struct IdxArray {
  std::vector<int64_t> dims;
  torch::Tensor data;
};

/// Reads an IDX file of unsigned bytes (type 0x08), gzip-compressed or plain (zlib detects which), into a
/// uint8 CPU tensor of the shape in its header. Throws c10::Error naming the path when the file cannot be
/// opened, when the magic number is not that of an unsigned-byte IDX file (e.g. a float IDX file or not an
/// IDX file at all), or when the data is shorter than the header announces (a truncated download).
inline IdxArray read_idx(const std::filesystem::path& path) {
  const std::string name = fmt::format("'{}'", path.string());
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), "read_idx: cannot read ", name,
              ": no such file (or not a regular file)");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  TORCH_CHECK(file != nullptr, "read_idx: cannot open ", name);
  auto read_exactly = [&](void* buffer, size_t size, const char* what) {
    size_t total = 0;
    while (total < size) {
      // gzread takes an unsigned count; read in chunks well below its limit.
      const auto chunk = static_cast<unsigned>(std::min<size_t>(size - total, size_t{1} << 30));
      const int got = gzread(file.get(), static_cast<char*>(buffer) + total, chunk);
      int zerr = Z_OK;
      const char* message = gzerror(file.get(), &zerr);
      TORCH_CHECK(got >= 0 && zerr != Z_DATA_ERROR, "read_idx: ", name, " is corrupt while reading ", what,
                  ": ", message);
      TORCH_CHECK(got > 0, "read_idx: ", name, " is truncated: expected ", size, " bytes of ", what, ", got ",
                  total);
      total += static_cast<size_t>(got);
    }
  };
  std::array<unsigned char, 4> magic{};
  read_exactly(magic.data(), 4, "the magic number");
  TORCH_CHECK(magic[0] == 0 && magic[1] == 0, "read_idx: ", name,
              " is not an IDX file (its first two bytes are not zero)");
  TORCH_CHECK(magic[2] == 0x08, "read_idx: ", name, " holds IDX type 0x", std::hex,
              static_cast<int>(magic[2]), std::dec, "; only unsigned bytes (0x08) are supported");
  const int rank = magic[3];
  TORCH_CHECK(rank >= 1 && rank <= 4, "read_idx: ", name, " announces ", rank,
              " dimensions; expected 1 (labels) to 4");
  IdxArray array;
  int64_t count = 1;
  for (int d = 0; d < rank; ++d) {
    std::array<unsigned char, 4> bytes{};
    read_exactly(bytes.data(), 4, "the header");
    const int64_t size =
        (int64_t{bytes[0]} << 24) | (int64_t{bytes[1]} << 16) | (int64_t{bytes[2]} << 8) | int64_t{bytes[3]};
    array.dims.push_back(size);
    count *= size;
  }
  TORCH_CHECK(count > 0 && count <= (int64_t{1} << 34), "read_idx: ", name, " announces ", count,
              " elements, which is not a plausible dataset size");
  array.data = torch::empty(array.dims, torch::kUInt8);
  read_exactly(array.data.data_ptr<uint8_t>(), static_cast<size_t>(count), "data");
  return array;
}

namespace detail {

/// Private to diffpost: the data of read_idx(path), checked to have `rank` dimensions (else a c10::Error from
/// `caller` naming the path, the rank found and `expected`, which says what a file of the right rank holds),
/// cut to its first `limit` entries when 0 < limit < N. Shared by read_idx_images and read_idx_labels.
inline torch::Tensor read_idx_of_rank(const std::filesystem::path& path, size_t rank, int64_t limit,
                                      const char* caller, const char* expected) {
  auto array = read_idx(path);
  TORCH_CHECK(array.dims.size() == rank, caller, ": '", path.string(), "' has ", array.dims.size(),
              " dimensions; ", expected);
  if (limit > 0 && limit < array.data.size(0)) return array.data.narrow(0, 0, limit);
  return array.data;
}

}  // namespace detail

/// Reads an IDX image file ([N, H, W] unsigned bytes, e.g. `train-images-idx3-ubyte.gz`) as float32
/// [N, 1, H, W] in [-1, 1]; `limit` > 0 keeps only the first `limit` images. Errors as read_idx, plus a
/// file of the wrong rank (e.g. a label file).
inline torch::Tensor read_idx_images(const std::filesystem::path& path, int64_t limit = 0) {
  const auto images = detail::read_idx_of_rank(path, 3, limit, "read_idx_images",
                                               "an image file has 3 [N, H, W] (is this a label file?)");
  return (images.unsqueeze(1).to(torch::kFloat32) / 255.0 * 2.0 - 1.0).contiguous();
}

/// Reads an IDX label file ([N] unsigned bytes, e.g. `train-labels-idx1-ubyte.gz`) as int64 [N]; `limit` > 0
/// keeps the first `limit` labels.
inline torch::Tensor read_idx_labels(const std::filesystem::path& path, int64_t limit = 0) {
  return detail::read_idx_of_rank(path, 1, limit, "read_idx_labels",
                                  "a label file has 1 [N] (is this an image file?)")
      .to(torch::kLong);
}

/// Loads every image file in `folder` (PNG, JPEG, BMP, ... - whatever load_image reads; sorted by name;
/// subfolders and hidden files are ignored) as one float32 batch [N, C, H, W] in [-1, 1]. `channels` as in
/// load_image (0 keeps the kind of the first file and converts the rest to it). All images must have the
/// size of the first; a file of another size, an unreadable file, or an empty folder throws c10::Error
/// naming the file and both sizes.
inline torch::Tensor load_image_folder(const std::filesystem::path& folder, int channels = 0) {
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_directory(folder, error), "load_image_folder: '", folder.string(),
              "' is not a readable folder");
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const auto name = entry.path().filename().string();
    if (entry.is_regular_file() && !name.empty() && name[0] != '.') files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  TORCH_CHECK(!files.empty(), "load_image_folder: '", folder.string(), "' holds no files");
  std::vector<torch::Tensor> images;
  images.reserve(files.size());
  for (const auto& file : files) {
    auto image = load_image(file.string(), images.empty() ? channels : static_cast<int>(images[0].size(1)));
    if (!images.empty()) {
      TORCH_CHECK(image.sizes() == images[0].sizes(), "load_image_folder: '", file.string(), "' has shape ",
                  image.sizes(), " but '", files[0].string(), "' has ", images[0].sizes(),
                  "; all images must have the same size (resize them first)");
    }
    images.push_back(image);
  }
  return torch::cat(images, 0);
}

}  // namespace diffpost
