// Reading and writing images: the single image loader of diffpost (PNG, JPEG, BMP, ... in; PNG out), via stb.
//
// Images are float tensors in [-1, 1], x = 2 * pixel / 255 - 1, NCHW. stb is compiled privately into each
// translation unit that includes this header (see diffpost/detail/stb.hpp for the rules and the
// DIFFPOST_EXTERNAL_STB opt-out).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <diffpost/detail/atomic_file.hpp>
#include <diffpost/detail/stb.hpp>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace diffpost {

/// Reads an image file into a float32 CPU tensor [1, C, H, W] with values in [-1, 1] (x = 2 p / 255 - 1).
/// `channels`: 0 keeps the file's colour kind (1 for gray or gray + alpha, 3 for RGB or RGBA; alpha is
/// dropped), 1 converts to gray, 3 to RGB (stb's conversions). 16-bit files are reduced to 8 bits. Throws
/// c10::Error naming the path and stb's reason when the file is missing, unreadable or not an image.
inline torch::Tensor load_image(const std::string& path, int channels = 0) {
  TORCH_CHECK(channels == 0 || channels == 1 || channels == 3,
              "load_image: channels must be 0 (keep), 1 or 3, got ", channels);
  std::error_code error;
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), "load_image: cannot read '", path,
              "': no such file (or not a regular file)");
  int width = 0, height = 0, file_channels = 0;
  TORCH_CHECK(stbi_info(path.c_str(), &width, &height, &file_channels), "load_image: cannot read '", path,
              "': ", stbi_failure_reason());
  const int wanted = channels != 0 ? channels : (file_channels <= 2 ? 1 : 3);
  int got_channels = 0;
  unsigned char* pixels = stbi_load(path.c_str(), &width, &height, &got_channels, wanted);
  TORCH_CHECK(pixels != nullptr, "load_image: cannot decode '", path, "': ", stbi_failure_reason());
  auto bytes = torch::from_blob(pixels, {height, width, wanted}, torch::kUInt8).clone();
  stbi_image_free(pixels);
  return (bytes.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32) / 255.0 * 2.0 - 1.0).contiguous();
}

namespace detail {

/// [C, H, W] or [1, C, H, W] image in [-1, 1] -> contiguous [H, W, C] uint8 (clamped, rounded to nearest).
inline torch::Tensor to_pixels(const torch::Tensor& image, const char* caller) {
  TORCH_CHECK(image.defined(), caller, ": got an undefined tensor");
  auto x = image.detach();
  if (x.dim() == 4) {
    TORCH_CHECK(x.size(0) == 1, caller, ": expected one image [C, H, W] or [1, C, H, W], got shape ",
                x.sizes(), " (save batch elements one by one, or use save_grid)");
    x = x.squeeze(0);
  }
  TORCH_CHECK(x.dim() == 3, caller, ": expected an image [C, H, W] or [1, C, H, W], got shape ",
              image.sizes());
  TORCH_CHECK(x.size(0) == 1 || x.size(0) == 3 || x.size(0) == 4, caller,
              ": expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got shape ", image.sizes());
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0, caller, ": empty image of shape ", image.sizes());
  const auto scaled = (x.to(torch::kCPU, torch::kFloat64).clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0;
  return scaled.round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
}

inline void append_bytes(void* context, void* data, int size) {
  auto* bytes = static_cast<std::vector<unsigned char>*>(context);
  const auto* begin = static_cast<const unsigned char*>(data);
  bytes->insert(bytes->end(), begin, begin + size);
}

/// Encodes [H, W, C] uint8 pixels as PNG and writes them atomically.
inline void write_png(const torch::Tensor& pixels, const std::string& path, bool overwrite,
                      const char* caller) {
  const auto height = static_cast<int>(pixels.size(0));
  const auto width = static_cast<int>(pixels.size(1));
  const auto channels = static_cast<int>(pixels.size(2));
  std::vector<unsigned char> bytes;
  const int ok = stbi_write_png_to_func(&append_bytes, &bytes, width, height, channels,
                                        pixels.data_ptr<uint8_t>(), width * channels);
  TORCH_CHECK(ok != 0, caller, ": PNG encoding of a ", height, "x", width, "x", channels, " image failed");
  write_file_atomically(
      path, overwrite, caller, "pass overwrite = true to replace it", [&](std::ostream& out) {
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      });
}

}  // namespace detail

/// Writes one image tensor ([C, H, W] or [1, C, H, W], values in [-1, 1], any dtype and device; C = 1, 3 or
/// 4) as an 8-bit PNG: values are clamped to [-1, 1] and rounded to the nearest of the 256 levels. Never
/// replaces an existing file unless `overwrite`; the file appears complete or not at all (temporary file,
/// then rename).
inline void save_image(const torch::Tensor& image, const std::string& path, bool overwrite = false) {
  detail::write_png(detail::to_pixels(image, "save_image"), path, overwrite, "save_image");
}

/// Layout of `save_grid`.
struct GridOptions {
  TORCH_ARG(int64_t, gap) = 2;          ///< pixels between neighbouring images and around the grid
  TORCH_ARG(double, background) = 1.0;  ///< fill value of gaps and padding, in [-1, 1] (1 = white)
  TORCH_ARG(bool, overwrite) = false;   ///< replace an existing file
};

/// Writes a grid of images as one PNG: `rows[r]` is one row of the grid, each tensor either one image
/// ([C, H, W] / [1, C, H, W]) or a batch [B, C, H, W] that fills B consecutive cells. Images of different
/// sizes are placed at the top-left of their cell (cell height = tallest in the row, width = widest in the
/// column); gray images are shown as gray RGB when any image has colour. Handy for "truth | measurement |
/// restored".
inline void save_grid(const std::vector<std::vector<torch::Tensor>>& rows, const std::string& path,
                      const GridOptions& options = GridOptions{}) {
  TORCH_CHECK(!rows.empty(), "save_grid: no rows given");
  TORCH_CHECK(options.gap() >= 0, "save_grid: gap must be >= 0, got ", options.gap());
  std::vector<std::vector<torch::Tensor>> cells;  // [C, H, W] each
  int64_t channels = 1;
  std::size_t columns = 0;
  for (const auto& row : rows) {
    std::vector<torch::Tensor> row_cells;
    for (const auto& tensor : row) {
      TORCH_CHECK(tensor.defined() && (tensor.dim() == 3 || tensor.dim() == 4),
                  "save_grid: expected images [C, H, W] or batches [B, C, H, W], got shape ",
                  tensor.defined() ? tensor.sizes() : c10::IntArrayRef{});
      const auto batch = tensor.dim() == 4 ? tensor.detach() : tensor.detach().unsqueeze(0);
      for (int64_t i = 0; i < batch.size(0); ++i) {
        auto image = batch[i].to(torch::kCPU, torch::kFloat64);
        TORCH_CHECK(image.size(0) == 1 || image.size(0) == 3,
                    "save_grid: expected 1 or 3 channels, got shape ", tensor.sizes());
        channels = std::max(channels, image.size(0));
        row_cells.push_back(image);
      }
    }
    TORCH_CHECK(!row_cells.empty(), "save_grid: row ", cells.size(), " is empty");
    columns = std::max(columns, row_cells.size());
    cells.push_back(std::move(row_cells));
  }
  std::vector<int64_t> row_height(cells.size(), 0), column_width(columns, 0);
  for (std::size_t r = 0; r < cells.size(); ++r) {
    for (std::size_t c = 0; c < cells[r].size(); ++c) {
      row_height[r] = std::max(row_height[r], cells[r][c].size(1));
      column_width[c] = std::max(column_width[c], cells[r][c].size(2));
    }
  }
  const int64_t gap = options.gap();
  int64_t total_height = gap, total_width = gap;
  for (auto h : row_height) total_height += h + gap;
  for (auto w : column_width) total_width += w + gap;
  auto canvas = torch::full({channels, total_height, total_width}, options.background(), torch::kFloat64);
  int64_t top = gap;
  for (std::size_t r = 0; r < cells.size(); ++r) {
    int64_t left = gap;
    for (std::size_t c = 0; c < cells[r].size(); ++c) {
      const auto& image = cells[r][c];
      canvas.slice(1, top, top + image.size(1))
          .slice(2, left, left + image.size(2))
          .copy_(image.expand({channels, image.size(1), image.size(2)}));
      left += column_width[c] + gap;
    }
    top += row_height[r] + gap;
  }
  detail::write_png(detail::to_pixels(canvas, "save_grid"), path, options.overwrite(), "save_grid");
}

}  // namespace diffpost
