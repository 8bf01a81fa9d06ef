// Image loading and saving: round trips, gray and colour, grids (their labels and captions measured against
// the font's metrics), errors, no clobbering; 16-bit PNG and PGM/PPM files built here byte by byte (zlib for
// the PNG data) against their samples; hostile files (sizes declared far beyond the limit in each format, a
// JPEG Huffman table of more than 256 codes, a PNG chunk claiming 2 GiB, a PNG whose data inflates without
// end), refused from their headers or within the decoder's memory budget.
#include <diffpost/io/image.hpp>
#include "support/doctest_with_torch.hpp"
#include "support/file_bytes.hpp"

#include <zlib.h>

#include "support/error_of.hpp"
#include "support/temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace diffpost;
namespace fs = std::filesystem;
using diffpost::testing::error_of;
using diffpost::testing::TempDir;

using diffpost::testing::read_bytes;
using diffpost::testing::write_bytes;

namespace {

/// The 8-bit levels an image in [-1, 1] is stored as, back in [-1, 1].
torch::Tensor quantised(const torch::Tensor& x) {
  return ((x.clamp(-1, 1) + 1) / 2 * 255).round() / 255 * 2 - 1;
}

std::string big_endian(uint64_t value, int bytes) {
  std::string out;
  for (int i = bytes - 1; i >= 0; --i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
  return out;
}

std::string little_endian(uint64_t value, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
  return out;
}

/// One PNG chunk: length, type, data, CRC-32 of type and data.
std::string png_chunk(const std::string& type, const std::string& data, int64_t declared_length = -1) {
  const std::string body = type + data;
  const auto crc = crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  return big_endian(declared_length >= 0 ? static_cast<uint64_t>(declared_length) : data.size(), 4) + body +
         big_endian(crc, 4);
}

std::string zlib_compress(const std::string& raw) {
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string out(size, '\0');
  REQUIRE(compress2(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
                    static_cast<uLong>(raw.size()), 9) == Z_OK);
  out.resize(size);
  return out;
}

/// A PNG of `width` x `height`, colour type `color_type` (0 gray, 2 RGB), `depth` bits, whose filtered
/// scanlines (a 0 filter byte before each row) are `raw`.
std::string png_file(uint32_t width, uint32_t height, int depth, int color_type, const std::string& raw) {
  const std::string header = big_endian(width, 4) + big_endian(height, 4) + static_cast<char>(depth) +
                             static_cast<char>(color_type) + std::string(3, '\0');
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", header) +
         png_chunk("IDAT", zlib_compress(raw)) + png_chunk("IEND", "");
}

/// Headers of each format declaring `width` x `height` pixels, with a few bytes of pixel data after them.
std::string tga_declaring(uint32_t width, uint32_t height) {
  return std::string("\0\0\x02", 3) + std::string(9, '\0') + little_endian(width, 2) +
         little_endian(height, 2) + "\x20\x08" + std::string(16, '\x7f');
}
std::string bmp_declaring(uint32_t width, uint32_t height) {
  return "BM" + little_endian(70, 4) + std::string(4, '\0') + little_endian(54, 4) + little_endian(40, 4) +
         little_endian(width, 4) + little_endian(height, 4) + little_endian(1, 2) + little_endian(24, 2) +
         std::string(24, '\0') + std::string(16, '\x7f');
}
std::string gif_declaring(uint32_t width, uint32_t height) {
  return "GIF89a" + little_endian(width, 2) + little_endian(height, 2) + std::string("\0\0\0", 3) +
         std::string(16, '\x7f');
}
std::string png_declaring(uint32_t width, uint32_t height) {
  return png_file(width, height, 8, 2, std::string(64, '\0'));
}
std::string jpeg_declaring(uint32_t width, uint32_t height) {  // SOI, then a baseline SOF0 of 3 components
  return std::string("\xff\xd8\xff\xc0\x00\x11\x08", 7) + big_endian(height, 2) + big_endian(width, 2) +
         std::string("\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00", 10) + std::string(16, '\x7f');
}
std::string ppm_declaring(uint32_t width, uint32_t height) {
  return "P6\n" + std::to_string(width) + " " + std::to_string(height) + "\n255\n" + std::string(16, '\x7f');
}

/// A small valid JPEG written by stb_image_write (baseline, with its four standard Huffman tables).
std::string small_jpeg() {
  std::vector<unsigned char> pixels(16 * 16 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 7);
  std::string bytes;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  REQUIRE(stbi_write_jpg_to_func(append, &bytes, 16, 16, 3, pixels.data(), 90) != 0);
  return bytes;
}

}  // namespace

TEST_CASE("RGB and gray images round-trip through PNG at 8-bit precision") {
  const TempDir dir("image-roundtrip");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto rgb = at::rand({1, 3, 7, 5}, generator, torch::TensorOptions(torch::kFloat32)) * 2.4 - 1.2;
  save_image(rgb, dir.file("rgb.png"));
  const auto loaded = load_image(dir.file("rgb.png"));
  REQUIRE(loaded.sizes() == torch::IntArrayRef({1, 3, 7, 5}));
  CHECK(loaded.dtype() == torch::kFloat32);
  CHECK(
      torch::allclose(loaded, quantised(rgb), 0, 1e-6));  // clamped to [-1, 1], rounded to the nearest level
  CHECK(loaded.min().item<float>() == -1.0f);
  CHECK(loaded.max().item<float>() == 1.0f);

  const auto gray =
      at::rand({1, 4, 6}, generator, torch::TensorOptions(torch::kFloat64)) * 2 - 1;  // [C, H, W]
  save_image(gray, dir.file("gray.png"));
  const auto gray_loaded = load_image(dir.file("gray.png"));
  REQUIRE(gray_loaded.sizes() == torch::IntArrayRef({1, 1, 4, 6}));
  CHECK(torch::allclose(gray_loaded.to(torch::kFloat64), quantised(gray).unsqueeze(0), 0, 1e-6));

  SUBCASE("channel conversion on load") {
    CHECK(load_image(dir.file("gray.png"), 3).sizes() == torch::IntArrayRef({1, 3, 4, 6}));
    const auto as_gray = load_image(dir.file("rgb.png"), 1);
    REQUIRE(as_gray.sizes() == torch::IntArrayRef({1, 1, 7, 5}));
    // stb's luma: (77 R + 150 G + 29 B) >> 8 on the 8-bit values
    const auto pixels = ((loaded + 1) / 2 * 255).round().to(torch::kInt64);
    const auto luma = (pixels[0][0] * 77 + pixels[0][1] * 150 + pixels[0][2] * 29).div(256, "floor");
    CHECK(torch::allclose(as_gray[0][0], (luma.to(torch::kFloat32) / 255 * 2 - 1), 0, 1e-6));
  }
  SUBCASE("one pixel level is 2 / 255 apart") {
    auto levels = torch::tensor({-1.0, -1.0 + 2.0 / 255.0, 1.0}).view({1, 1, 1, 3});
    save_image(levels, dir.file("levels.png"));
    CHECK(torch::allclose(load_image(dir.file("levels.png")), levels, 0, 1e-6));
  }
}

TEST_CASE("saving never replaces an existing file unless asked, and leaves no temporary files") {
  const TempDir dir("image-overwrite");
  const auto black = torch::full({1, 1, 2, 2}, -1.0);
  const auto white = torch::full({1, 1, 2, 2}, 1.0);
  save_image(black, dir.file("a.png"));
  const auto message = error_of([&] { save_image(white, dir.file("a.png")); });
  CHECK(message.find("already exists") != std::string::npos);
  CHECK(message.find("a.png") != std::string::npos);
  CHECK(load_image(dir.file("a.png")).max().item<float>() == -1.0f);
  save_image(white, dir.file("a.png"), /*overwrite=*/true);
  CHECK(load_image(dir.file("a.png")).min().item<float>() == 1.0f);
  CHECK(dir.entries() == 1);
}

TEST_CASE("errors name the path and the reason") {
  const TempDir dir("image-errors");
  const auto missing = error_of([&] { load_image(dir.file("missing.png")); });
  CHECK(missing.find("missing.png") != std::string::npos);
  CHECK(missing.find("no such file") != std::string::npos);
  { std::ofstream(dir.file("text.png")) << "this is not an image"; }
  const auto not_image = error_of([&] { load_image(dir.file("text.png")); });
  CHECK(not_image.find("text.png") != std::string::npos);
  CHECK(not_image.find("unknown image type") != std::string::npos);  // stb's reason
  CHECK(error_of([&] { load_image(dir.file("text.png"), 2); }).find("channels must be 0 (keep), 1 or 3") !=
        std::string::npos);
  CHECK(error_of([&] {
          save_image(torch::zeros({2, 3, 4, 4}), dir.file("b.png"));
        }).find("[2, 3, 4, 4]") != std::string::npos);
  CHECK(error_of([&] {
          save_image(torch::zeros({1, 3, 4, 4}), dir.file("no/such/dir/b.png"));
        }).find("cannot write") != std::string::npos);
  CHECK(dir.entries() == 1);
}

TEST_CASE("grids place images in rows with gaps") {
  const TempDir dir("image-grid");
  const auto red =
      torch::tensor({1.0, -1.0, -1.0}).view({1, 3, 1, 1}).expand({2, 3, 4, 4});  // a batch of two
  const auto gray = torch::full({1, 2, 3}, 0.0);                                 // smaller, gray
  save_grid({{red}, {gray}}, dir.file("grid.png"), GridOptions{}.gap(1).background(-1.0));
  const auto grid = load_image(dir.file("grid.png"));
  // width: 1 + 4 + 1 + 4 + 1; height: 1 + 4 + 1 + 2 + 1
  REQUIRE(grid.sizes() == torch::IntArrayRef({1, 3, 9, 11}));
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 1), torch::tensor({1.0f, -1.0f, -1.0f})));  // in red
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 5), torch::full({3}, -1.0f)));              // the gap
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 6), torch::tensor({1.0f, -1.0f, -1.0f})));  // 2nd red
  // the gray image, shown in all three channels, at the top left of its cell
  CHECK((grid[0].select(1, 6).select(1, 1) - (128.0f / 255 * 2 - 1)).abs().max().item<float>() < 1e-6);
  CHECK(torch::allclose(grid[0].select(1, 6).select(1, 4), torch::full({3}, -1.0f)));  // beyond its width
}

// Labelled grids. The font's metrics, as stb_easy_font draws them: a line of text is 9 font pixels high (7
// for capitals and digits, 2 more for descenders), lines are 12 apart; the text sits 2 font pixels from the
// images.
namespace {

/// The rows (dim 0) and columns (dim 1) where `plane` [H, W] equals `value`, as [first, last] ranges; {-1,
/// -1} when there is none.
struct Extent {
  int64_t top = -1, bottom = -1, left = -1, right = -1;
};
Extent extent_of(const torch::Tensor& plane, float value) {
  const auto where = plane.eq(value).nonzero();
  if (where.size(0) == 0) return {};
  return {where.select(1, 0).min().item<int64_t>(), where.select(1, 0).max().item<int64_t>(),
          where.select(1, 1).min().item<int64_t>(), where.select(1, 1).max().item<int64_t>()};
}

/// Two columns of 28 x 28 mid-gray images (the bundled prior's size), two rows.
std::vector<std::vector<torch::Tensor>> gray_cells(int64_t size = 28) {
  return {{torch::zeros({1, 1, size, size}), torch::zeros({1, 1, size, size})},
          {torch::zeros({1, 1, size, size}), torch::zeros({1, 1, size, size})}};
}

}  // namespace

TEST_CASE("a grid without labels and captions is the images and the gaps, byte for byte") {
  const TempDir dir("image-grid-plain");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto a = at::rand({1, 3, 5, 4}, generator, torch::TensorOptions(torch::kFloat64)) * 2 - 1;
  const auto b = at::rand({1, 1, 3, 6}, generator, torch::TensorOptions(torch::kFloat64)) * 2 - 1;
  const auto c = at::rand({2, 3, 4, 2}, generator, torch::TensorOptions(torch::kFloat64)) * 2 - 1;
  const std::vector<std::vector<torch::Tensor>> rows{{a, b}, {c}};
  // By hand: columns 4 and 6 wide (the widest image of each), rows 5 and 4 high, gap 3 around everything.
  auto expected = torch::full({3, 3 + 5 + 3 + 4 + 3, 3 + 4 + 3 + 6 + 3}, 0.5, torch::kFloat64);
  expected.slice(1, 3, 8).slice(2, 3, 7).copy_(a[0]);
  expected.slice(1, 3, 6).slice(2, 10, 16).copy_(b[0].expand({3, 3, 6}));
  expected.slice(1, 11, 15).slice(2, 3, 5).copy_(c[0]);
  expected.slice(1, 11, 15).slice(2, 10, 12).copy_(c[1]);
  save_image(expected, dir.file("expected.png"));
  save_grid(rows, dir.file("grid.png"), GridOptions{}.gap(3).background(0.5));
  CHECK(read_bytes(dir.file("grid.png")) == read_bytes(dir.file("expected.png")));
  // Labels and captions that are all "" draw nothing, so they leave the grid as it is too.
  save_grid(rows, dir.file("empty_text.png"),
            GridOptions{}.gap(3).background(0.5).column_labels({"", ""}).cell_captions({{"", ""}, {"", ""}}));
  CHECK(read_bytes(dir.file("empty_text.png")) == read_bytes(dir.file("expected.png")));
}

TEST_CASE("column labels that fit are drawn level, centred in a band above the grid") {
  const TempDir dir("image-grid-labels");
  save_grid(gray_cells(), dir.file("grid.png"), GridOptions{}.column_labels({"truth", "dps"}));
  const auto grid = load_image(dir.file("grid.png"))[0][0];
  const int64_t band = 9 + 2;  // one line of text, 2 pixels above the images
  REQUIRE(grid.sizes() == torch::IntArrayRef({2 + band + 28 + 2 + 28 + 2, 2 + 28 + 2 + 28 + 2}));
  // Black text in the band, nowhere else: below it are mid-gray images and white gaps.
  CHECK(grid.slice(0, 0, 2 + band).eq(-1.0f).any().item<bool>());
  CHECK_FALSE(grid.slice(0, 2 + band).eq(-1.0f).any().item<bool>());
  // Each label over its column, centred: "truth" is 25 pixels of ink (advances 5 + 5 + 6 + 5, then the 4
  // of 'h'), "dps" 15 (6 + 6, then the 3 of 's').
  const auto truth = extent_of(grid.slice(1, 2, 30), -1.0f), dps = extent_of(grid.slice(1, 32, 60), -1.0f);
  CHECK(truth.right - truth.left + 1 == 25);
  CHECK(truth.left == 1);  // (28 - 25) / 2
  CHECK(dps.right - dps.left + 1 == 15);
  CHECK(dps.left == 6);  // (28 - 15) / 2
  // One line: the ink lies in the band's first 9 rows (capitals and ascenders from its top row).
  CHECK(truth.top == 2);
  CHECK(dps.bottom == 2 + 8);  // the descender of 'p'
  SUBCASE("two lines take 12 more rows") {
    save_grid(gray_cells(), dir.file("two.png"), GridOptions{}.column_labels({"sr\ndps", "a"}));
    CHECK(load_image(dir.file("two.png")).size(2) == 2 + (12 + 9 + 2) + 28 + 2 + 28 + 2);
  }
  SUBCASE("white text on a dark background") {
    save_grid(gray_cells(), dir.file("dark.png"), GridOptions{}.background(-1.0).column_labels({"a", "b"}));
    const auto dark = load_image(dir.file("dark.png"))[0][0];
    CHECK(dark.slice(0, 0, 2 + band).eq(1.0f).any().item<bool>());
    CHECK_FALSE(dark.slice(0, 2 + band).eq(1.0f).any().item<bool>());
  }
}

TEST_CASE("when a label is wider than its column, all labels are turned to read bottom to top") {
  const TempDir dir("image-grid-turned");
  // "l" is a vertical bar and "." a dot on the line, so the turned text shows which way it reads.
  save_grid(gray_cells(), dir.file("grid.png"), GridOptions{}.column_labels({"l..........", "sr"}));
  const auto grid = load_image(dir.file("grid.png"))[0][0];
  // "l.........." is 31 pixels of ink along the text (advance 3 per character, the last dot 1 wide): wider
  // than the column, so the band is as high as that.
  const int64_t band = 31 + 2;
  REQUIRE(grid.sizes() == torch::IntArrayRef({2 + band + 28 + 2 + 28 + 2, 2 + 28 + 2 + 28 + 2}));
  CHECK_FALSE(grid.slice(0, 2 + band).eq(-1.0f).any().item<bool>());
  const auto first = grid.slice(0, 0, 2 + band).slice(1, 2, 30);
  const auto ink = extent_of(first, -1.0f);
  CHECK(ink.bottom - ink.top + 1 == 31);  // the text runs upwards
  CHECK(ink.right - ink.left + 1 == 7);   // as high as 'l' is
  CHECK(ink.bottom == 2 + band - 2 - 1);  // starting just above the images
  // The 'l' is at the bottom, read first: its bar is the lowest dark row, 7 pixels long.
  CHECK(first[ink.bottom].eq(-1.0f).sum().item<int64_t>() == 7);
  // The line of the text faces right: the ten dots and the foot of the 'l'.
  CHECK(first.select(1, ink.right).eq(-1.0f).sum().item<int64_t>() == 11);
  // "sr" is turned too, although it would fit level: it runs 8 pixels (advance 5, then 3) up its column.
  const auto second = extent_of(grid.slice(0, 0, 2 + band).slice(1, 32, 60), -1.0f);
  CHECK(second.bottom - second.top + 1 == 8);
  CHECK(second.bottom == ink.bottom);
  SUBCASE("wider images keep the same labels level") {
    save_grid(gray_cells(40), dir.file("wide.png"), GridOptions{}.column_labels({"l..........", "sr"}));
    CHECK(load_image(dir.file("wide.png")).size(2) == 2 + (9 + 2) + 40 + 2 + 40 + 2);
  }
}

TEST_CASE("captions add a band under every row; a caption wider than its column widens it") {
  const TempDir dir("image-grid-captions");
  save_grid(gray_cells(), dir.file("grid.png"), GridOptions{}.cell_captions({{"", "21.4"}, {"", "20.5"}}));
  const auto grid = load_image(dir.file("grid.png"))[0][0];
  const int64_t band = 2 + 9;  // 2 pixels under the images, one line of text
  REQUIRE(grid.sizes() == torch::IntArrayRef({2 + 28 + band + 2 + 28 + band + 2, 2 + 28 + 2 + 28 + 2}));
  // Text under the second column only, in the bands only.
  CHECK_FALSE(grid.slice(1, 0, 32).eq(-1.0f).any().item<bool>());
  for (const int64_t top : {int64_t{2}, 2 + 28 + band + 2}) {
    CHECK_FALSE(grid.slice(0, top, top + 28 + 2).eq(-1.0f).any().item<bool>());
    const auto caption = extent_of(grid.slice(0, top + 28, top + 28 + band).slice(1, 32, 60), -1.0f);
    CHECK(caption.top == 2);
    CHECK(caption.bottom == 2 + 6);                 // digits are 7 pixels high
    CHECK(caption.right - caption.left + 1 == 19);  // "21.4", "20.5": advances 6 + 6 + 3, then 4
    CHECK(caption.left == 4);                       // (28 - 19) / 2
  }
  SUBCASE("a caption sits under its own image, centred on it, in a row of larger ones") {
    const std::vector<std::vector<torch::Tensor>> mixed{
        {torch::zeros({1, 1, 28, 28})}, {torch::zeros({1, 1, 10, 24}), torch::zeros({1, 1, 28, 28})}};
    save_grid(mixed, dir.file("mixed.png"), GridOptions{}.cell_captions({{""}, {"21.4", ""}}));
    const auto image = load_image(dir.file("mixed.png"))[0][0];
    const auto caption = extent_of(image.slice(0, 2 + 28 + band + 2), -1.0f);  // the second row on
    CHECK(caption.top == 10 + 2);
    CHECK(caption.left == 2 + (24 - 19) / 2);
  }
  SUBCASE("a long caption widens its column, not the others") {
    save_grid(gray_cells(), dir.file("wide.png"),
              GridOptions{}.cell_captions({{"a long caption", ""}, {"", ""}}));
    const auto wide = load_image(dir.file("wide.png"));
    CHECK(wide.size(3) > 2 + 28 + 2 + 28 + 2);
    CHECK(wide.size(2) == 2 + 28 + band + 2 + 28 + band + 2);
  }
  SUBCASE("images of 256 pixels get text twice as large") {
    const std::vector<std::vector<torch::Tensor>> big{{torch::zeros({1, 1, 256, 256})}};
    save_grid(big, dir.file("big.png"), GridOptions{}.column_labels({"dps"}).cell_captions({{"21.4"}}));
    const auto image = load_image(dir.file("big.png"))[0][0];
    CHECK(image.size(0) == 2 + 2 * (9 + 2) + 256 + 2 * (2 + 9) + 2);
    const auto caption = extent_of(image.slice(0, 2 + 22 + 256), -1.0f);
    CHECK(caption.right - caption.left + 1 == 2 * 19);
    save_grid(big, dir.file("small_text.png"), GridOptions{}.column_labels({"dps"}).text_scale(1));
    CHECK(load_image(dir.file("small_text.png")).size(2) == 2 + (9 + 2) + 256 + 2);
  }
}

TEST_CASE("labels and captions that do not fit the grid, or the font, are refused before writing") {
  const TempDir dir("image-grid-text-errors");
  const auto cells = gray_cells();
  const auto count = error_of([&] {
    save_grid(cells, dir.file("a.png"), GridOptions{}.column_labels({"truth", "naive", "dps"}));
  });
  CHECK(count.find("3 column labels for a grid of 2 columns") != std::string::npos);
  CHECK(count.find("one label per column") != std::string::npos);
  const auto rows = error_of([&] {
    save_grid(cells, dir.file("a.png"), GridOptions{}.cell_captions({{"1", "2"}}));
  });
  CHECK(rows.find("captions for 1 rows, but the grid has 2") != std::string::npos);
  const auto per_row = error_of([&] {
    save_grid(cells, dir.file("a.png"), GridOptions{}.cell_captions({{"1", "2"}, {"3"}}));
  });
  CHECK(per_row.find("1 captions for row 1 of 2 cells") != std::string::npos);
  const auto accent = error_of([&] {
    save_grid(cells, dir.file("a.png"), GridOptions{}.column_labels({"v\xc3\xa9rit\xc3\xa9", "dps"}));
  });
  CHECK(accent.find("column label 0") != std::string::npos);
  CHECK(accent.find("byte 195 at position 1") != std::string::npos);
  CHECK(accent.find("printable ASCII") != std::string::npos);
  const auto tab = error_of([&] {
    save_grid(cells, dir.file("a.png"), GridOptions{}.cell_captions({{"", ""}, {"", "21.4\tdB"}}));
  });
  CHECK(tab.find("the caption of row 1, column 1") != std::string::npos);
  CHECK(tab.find("byte 9 at position 4") != std::string::npos);
  CHECK(error_of([&] {
          save_grid(cells, dir.file("a.png"), GridOptions{}.text_scale(-1));
        }).find("text_scale must be >= 0") != std::string::npos);
  CHECK(dir.entries() == 0);
}

TEST_CASE("16-bit PNGs keep their 16-bit samples: x = 2 s / 65535 - 1") {
  const TempDir dir("image-png16");
  // A 3x2 RGB image with samples that 8 bits cannot tell apart (0, 1, 255, 256, ...).
  const std::vector<uint16_t> samples = {0,     1,     255,   256,  32767, 32768, 65534, 65535, 4660,
                                         22136, 39612, 57072, 1000, 2000,  3000,  40000, 50000, 60000};
  std::string raw;
  for (int row = 0; row < 2; ++row) {
    raw += '\0';  // filter: none
    for (int i = 0; i < 9; ++i) raw += big_endian(samples[row * 9 + i], 2);
  }
  write_bytes(dir.file("rgb16.png"), png_file(3, 2, 16, 2, raw));
  const auto image = load_image(dir.file("rgb16.png"));
  REQUIRE(image.sizes() == torch::IntArrayRef({1, 3, 2, 3}));
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 3; ++x) {
      for (int c = 0; c < 3; ++c) {
        const double s = samples[(y * 3 + x) * 3 + c];
        CHECK(image[0][c][y][x].item<double>() == doctest::Approx(2.0 * s / 65535.0 - 1.0).epsilon(1e-7));
      }
    }
  }
  // Gray conversion: stb's luma on the 16-bit samples, (77 R + 150 G + 29 B) >> 8.
  const auto gray = load_image(dir.file("rgb16.png"), 1);
  REQUIRE(gray.sizes() == torch::IntArrayRef({1, 1, 2, 3}));
  const auto* s = samples.data();
  const double luma = ((77 * s[3] + 150 * s[4] + 29 * s[5]) >> 8) / 65535.0 * 2.0 - 1.0;  // pixel (0, 1)
  CHECK(gray[0][0][0][1].item<double>() == doctest::Approx(luma).epsilon(1e-7));
  CHECK(diffpost::detail::stb_allocations().live == 0);  // the decoder freed all it took
}

TEST_CASE("PGM/PPM are read by diffpost itself: 8 and 16 bits, any maxval, comments") {
  const TempDir dir("image-pnm");
  // P6, 2x2, 16 bits (big-endian samples), maxval 65535, with a comment in the header.
  const std::vector<uint16_t> rgb = {0, 65535, 1, 256, 257, 32768, 12345, 54321, 65534, 2, 3, 4};
  std::string ppm = "P6\n# made by the test\n2 2\n65535\n";
  for (auto v : rgb) ppm += big_endian(v, 2);
  write_bytes(dir.file("rgb16.ppm"), ppm);
  const auto image = load_image(dir.file("rgb16.ppm"));
  REQUIRE(image.sizes() == torch::IntArrayRef({1, 3, 2, 2}));
  for (int i = 0; i < 4; ++i) {
    for (int c = 0; c < 3; ++c) {
      CHECK(image[0][c][i / 2][i % 2].item<double>() ==
            doctest::Approx(2.0 * rgb[i * 3 + c] / 65535.0 - 1.0).epsilon(1e-7));
    }
  }
  const auto gray = load_image(dir.file("rgb16.ppm"), 1);
  const double luma = ((77 * 256 + 150 * 257 + 29 * 32768) >> 8) / 65535.0 * 2.0 - 1.0;  // pixel (0, 1)
  CHECK(gray[0][0][0][1].item<double>() == doctest::Approx(luma).epsilon(1e-7));

  // P5, 10-bit samples (maxval 1023): scaled by the maxval, samples above it clamped.
  write_bytes(dir.file("gray10.pgm"),
              "P5 3 1 1023\n" + big_endian(0, 2) + big_endian(1023, 2) + big_endian(2000, 2));
  const auto gray10 = load_image(dir.file("gray10.pgm"));
  REQUIRE(gray10.sizes() == torch::IntArrayRef({1, 1, 1, 3}));
  CHECK(gray10[0][0][0][0].item<float>() == -1.0f);
  CHECK(gray10[0][0][0][1].item<float>() == 1.0f);
  CHECK(gray10[0][0][0][2].item<float>() == 1.0f);
  // P5, 8 bits: the same values as the PNG of the same pixels.
  write_bytes(dir.file("gray8.pgm"), std::string("P5\n3 1\n255\n\x00\x80\xff", 14));
  save_image(load_image(dir.file("gray8.pgm")), dir.file("gray8.png"));
  CHECK(torch::equal(load_image(dir.file("gray8.pgm")), load_image(dir.file("gray8.png"))));
  CHECK(load_image(dir.file("gray8.pgm"))[0][0][0][1].item<float>() == 128.0f / 255 * 2 - 1);

  write_bytes(dir.file("cut.ppm"), ppm.substr(0, ppm.size() - 3));
  CHECK(
      error_of([&] { load_image(dir.file("cut.ppm")); })
          .find(
              "its PGM/PPM header declares 2x2x3 samples of 2 byte(s) (24 bytes) but the file holds 21 after "
              "the header (truncated?)") != std::string::npos);
  write_bytes(dir.file("plain.pgm"), "P2\n2 1\n255\n0 255\n");
  CHECK(
      error_of([&] {
        load_image(dir.file("plain.pgm"));
      }).find("PNM type P2 (plain-text samples) is not supported; save it as binary PGM (P5) or PPM (P6)") !=
      std::string::npos);
  write_bytes(dir.file("huge.pgm"), "P5 99999999999999999999 1 255\n");
  CHECK(error_of([&] { load_image(dir.file("huge.pgm")); }).find("the PNM header's width exceeds 65535") !=
        std::string::npos);
}

namespace {

/// A BITMAPINFOHEADER BMP: `bits` per pixel, `palette` (B, G, R, 0 per entry), then `rows` as stored (bottom
/// row first unless `height` is negative), each padded to 4 bytes here.
std::string bmp_file(int32_t width, int32_t height, int bits, const std::string& palette,
                     const std::vector<std::string>& rows, uint32_t compression = 0) {
  std::string pixels;
  for (const auto& row : rows) {
    pixels += row;
    pixels += std::string((4 - row.size() % 4) % 4, '\0');
  }
  const uint32_t offset = 14 + 40 + static_cast<uint32_t>(palette.size());
  return "BM" + little_endian(offset + pixels.size(), 4) + std::string(4, '\0') + little_endian(offset, 4) +
         little_endian(40, 4) + little_endian(static_cast<uint32_t>(width), 4) +
         little_endian(static_cast<uint32_t>(height), 4) + little_endian(1, 2) + little_endian(bits, 2) +
         little_endian(compression, 4) + std::string(20, '\0') + palette + pixels;
}

/// The pixel (x, y) of a decoded image as 8-bit levels.
std::vector<int> rgb_at(const torch::Tensor& image, int y, int x) {
  std::vector<int> levels;
  for (int c = 0; c < image.size(1); ++c)
    levels.push_back(static_cast<int>(std::lround((image[0][c][y][x].item<double>() + 1) / 2 * 255)));
  return levels;
}

}  // namespace

TEST_CASE(
    "BMP is read by diffpost itself: palettes of 1, 4 and 8 bits, 16, 24 and 32 bits, either row order") {
  using Levels = std::vector<int>;
  // 24 and 32 bits (BI_BITFIELDS, V4 header) as stb_image_write writes them, against the pixels written.
  for (int channels : {3, 4}) {
    CAPTURE(channels);
    std::vector<unsigned char> pixels(5 * 3 * channels);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 53 + 7);
    std::string bytes;
    auto append = [](void* context, void* data, int size) {
      static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
    };
    REQUIRE(stbi_write_bmp_to_func(append, &bytes, 5, 3, channels, pixels.data()) != 0);
    const auto image = decode_image(bytes);
    REQUIRE(image.sizes() == torch::IntArrayRef({1, 3, 3, 5}));
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 5; ++x) {
        const auto* p = &pixels[static_cast<size_t>((y * 5 + x) * channels)];
        CHECK(rgb_at(image, y, x) == Levels{p[0], p[1], p[2]});
      }
  }
  // 8 bits, a 3-entry palette, stored bottom row first.
  const std::string palette3 = std::string("\x00\x00\xff\x00", 4) + std::string("\x00\xff\x00\x00", 4) +
                               std::string("\xff\x00\x00\x00", 4);  // red, green, blue
  const auto eight = decode_image(
      bmp_file(3, 2, 8, palette3, {std::string("\x02\x02\x02", 3), std::string("\x00\x01\x02", 3)}));
  CHECK(rgb_at(eight, 0, 0) == Levels{255, 0, 0});
  CHECK(rgb_at(eight, 0, 1) == Levels{0, 255, 0});
  CHECK(rgb_at(eight, 1, 0) == Levels{0, 0, 255});
  // The same rows top-down (negative height).
  const auto top_down = decode_image(
      bmp_file(3, -2, 8, palette3, {std::string("\x00\x01\x02", 3), std::string("\x02\x02\x02", 3)}));
  CHECK(torch::equal(top_down, eight));
  // 4 and 1 bits: two pixels a byte, eight pixels a byte, high bits first.
  const auto four = decode_image(bmp_file(3, 1, 4, palette3, {std::string("\x21\x00", 2)}));
  CHECK(rgb_at(four, 0, 0) == Levels{0, 0, 255});
  CHECK(rgb_at(four, 0, 1) == Levels{0, 255, 0});
  CHECK(rgb_at(four, 0, 2) == Levels{255, 0, 0});
  const auto one = decode_image(bmp_file(9, 1, 1, palette3.substr(0, 8), {std::string("\xa0\x80", 2)}));
  CHECK(rgb_at(one, 0, 0) == Levels{0, 255, 0});
  CHECK(rgb_at(one, 0, 1) == Levels{255, 0, 0});
  CHECK(rgb_at(one, 0, 2) == Levels{0, 255, 0});
  CHECK(rgb_at(one, 0, 8) == Levels{0, 255, 0});
  // 16 bits, 5-5-5: each 5-bit level x becomes (x << 3) | (x >> 2).
  const auto sixteen = decode_image(
      bmp_file(2, 1, 16, "", {little_endian((31u << 10) | (1u << 5) | 16u, 2) + little_endian(1, 2)}));
  CHECK(rgb_at(sixteen, 0, 0) == Levels{255, 8, (16 << 3) | (16 >> 2)});
  CHECK(rgb_at(sixteen, 0, 1) == Levels{0, 0, 8});

  // What stb 2.27 filled from uninitialised stack memory is an error now: an index beyond the palette.
  CHECK(error_of([&] { decode_image(bmp_file(3, 1, 8, palette3, {std::string("\x00\x07\x00", 3)})); }) ==
        "decode_image: cannot read the image in memory: corrupt BMP: pixel (1, 0) uses palette entry 7 of 3");
  CHECK(error_of([&] {
          decode_image(bmp_file(3, 1, 8, "", {std::string("\x00\x00\x00", 3)}));
        }).find("corrupt or unsupported BMP: no palette for 8 bits per pixel") != std::string::npos);
  CHECK(error_of([&] {
          decode_image(bmp_file(3, 1, 8, palette3, {}, 1));
        }).find("RLE compression is not supported; save it uncompressed or as PNG") != std::string::npos);
  auto cut = bmp_file(3, 2, 24, "", {std::string(9, '\x10'), std::string(9, '\x20')});
  cut.resize(cut.size() - 2);
  CHECK(
      error_of([&] { decode_image(cut); })
          .find("its BMP header declares 3x2 pixels of 24 bits (24 bytes from byte 54) but the file holds 22 "
                "(truncated?)") != std::string::npos);
}

TEST_CASE("sizes beyond the limit are refused from the header, before the decoder allocates anything") {
  const TempDir dir("image-huge");
  struct Case {
    const char* file;
    const char* format;
    std::string bytes;
  };
  // Each declares 20000 x 30000 = 600 M pixels (1.8 GB of 8-bit RGB) in a file of about 100 bytes.
  const Case cases[] = {{"huge.tga", "TGA", tga_declaring(20000, 30000)},
                        {"huge.bmp", "BMP", bmp_declaring(20000, 30000)},
                        {"huge.gif", "GIF", gif_declaring(20000, 30000)},
                        {"huge.png", "PNG", png_declaring(20000, 30000)},
                        {"huge.jpg", "JPEG", jpeg_declaring(20000, 30000)},
                        {"huge.ppm", "PGM/PPM", ppm_declaring(20000, 30000)}};
  for (const auto& c : cases) {
    CAPTURE(c.file);
    write_bytes(dir.file(c.file), c.bytes);
    const auto message = error_of([&] { load_image(dir.file(c.file)); });
    CHECK(message ==
          "load_image: '" + dir.file(c.file) + "' declares 20000x30000 pixels (" + c.format +
              " header), more than the limit of 16777216 pixels; refused before decoding. Check the "
              "file, or raise ImageReadOptions::max_pixels if it is a genuine image");
    CHECK(diffpost::detail::stb_allocations().peak < (size_t{1} << 20));  // the header parse only
    CHECK(diffpost::detail::stb_allocations().live == 0);
    // The same from memory.
    CHECK(
        error_of([&] {
          decode_image(c.bytes);
        }).find(std::string("decode_image: the image in memory declares 20000x30000 pixels (") + c.format) !=
        std::string::npos);
  }
  // No side may exceed 65535, whatever max_pixels allows.
  write_bytes(dir.file("wide.bmp"), bmp_declaring(70000, 1));
  CHECK(error_of([&] {
          load_image(dir.file("wide.bmp"), ImageReadOptions{}.max_pixels(int64_t{1} << 40));
        }) == "load_image: '" + dir.file("wide.bmp") +
                  "' declares 70000x1 pixels (BMP header); no side may exceed 65535; refused before decoding "
                  "(corrupt "
                  "file?)");
  CHECK(diffpost::detail::stb_allocations().peak < (size_t{1} << 20));
  CHECK(dir.entries() == std::size(cases) + 1);  // nothing written besides the test's own files
}

TEST_CASE("a required size (the model's) is checked from the header") {
  const TempDir dir("image-size");
  save_image(torch::zeros({3, 7, 5}), dir.file("small.png"));
  CHECK(load_image(dir.file("small.png"), ImageReadOptions{}.height(7).width(5)).sizes() ==
        torch::IntArrayRef({1, 3, 7, 5}));
  CHECK(error_of([&] { load_image(dir.file("small.png"), ImageReadOptions{}.height(256).width(256)); }) ==
        "load_image: '" + dir.file("small.png") +
            "' is 5x7 pixels (width x height) but 256x256 is required; resize it first");
  CHECK(error_of([&] { load_image(dir.file("small.png"), ImageReadOptions{}.max_file_bytes(10)); })
            .find("bytes, more than the limit of 10 bytes for an image file; check the file, or raise "
                  "ImageReadOptions::max_file_bytes") != std::string::npos);
}

TEST_CASE("a JPEG Huffman table of more than 256 codes is refused before stb sees it") {
  const TempDir dir("image-jpeg-dht");
  const auto good = small_jpeg();
  write_bytes(dir.file("good.jpg"), good);
  const auto image = load_image(dir.file("good.jpg"));
  CHECK(image.sizes() == torch::IntArrayRef({1, 3, 16, 16}));
  // The first table of the first DHT segment: after FF C4, the length (2 bytes) and the class/id byte come
  // the 16 code counts; make each 255 (4080 codes, where stb has room for 256).
  auto bad = good;
  const auto dht = bad.find("\xff\xc4");
  REQUIRE(dht != std::string::npos);
  for (size_t i = 0; i < 16; ++i) bad[dht + 5 + i] = '\xff';
  write_bytes(dir.file("bad_dht.jpg"), bad);
  CHECK(error_of([&] { load_image(dir.file("bad_dht.jpg")); }) ==
        "load_image: cannot read '" + dir.file("bad_dht.jpg") +
            "': corrupt JPEG: Huffman table 0 (DC 0) of the DHT "
            "segment at byte " +
            std::to_string(dht) +
            " declares 4080 codes; a table holds at most 256; refused before "
            "decoding");
  // 257 codes, in a table after the first: the walk follows the segment table by table.
  auto bad_second = good;
  const size_t first_codes = [&] {
    size_t n = 0;
    for (size_t i = 0; i < 16; ++i) n += static_cast<uint8_t>(good[dht + 5 + i]);
    return n;
  }();
  const size_t second = dht + 5 + 16 + first_codes;  // class/id byte of the second table
  for (size_t i = 0; i < 16; ++i) bad_second[second + 1 + i] = i == 15 ? '\x02' : '\x11';  // 15 x 17 + 2
  CHECK(error_of([&] { decode_image(bad_second); }).find("Huffman table 1 (AC 0)") != std::string::npos);
  CHECK(error_of([&] { decode_image(bad_second); }).find("declares 257 codes") != std::string::npos);
}

TEST_CASE("a JPEG whose scan needs a table it never defines is refused; stb's memory starts zeroed") {
  const auto good = small_jpeg();
  auto be16 = [&](size_t at) {
    return static_cast<size_t>((static_cast<uint8_t>(good[at]) << 8) | static_cast<uint8_t>(good[at + 1]));
  };
  // The APP0 segment (bytes 2..) grown to swallow the DQT segment after it: no quantization table remains.
  // stb 2.27 decoded this with whatever its table memory held (tests/fuzz found the same file decoding
  // differently twice).
  REQUIRE(good.substr(2, 2) == "\xff\xe0");
  const auto dqt = good.find("\xff\xdb");
  REQUIRE(dqt != std::string::npos);
  auto no_quant = good;
  const size_t swallowed = dqt + 2 + be16(dqt + 2) - 4;
  no_quant[4] = static_cast<char>(swallowed >> 8);
  no_quant[5] = static_cast<char>(swallowed & 0xFF);
  const auto sos = good.find("\xff\xda");
  CHECK(error_of([&] { decode_image(no_quant); }) ==
        "decode_image: cannot read the image in memory: corrupt JPEG: component 0 uses quantization table 0, "
        "which the file does not define before the scan at byte " +
            std::to_string(sos) + "; refused before decoding");
  // The first Huffman table (DC 0, which the luma component uses) relabelled DC 1.
  auto no_huffman = good;
  const auto dht = good.find("\xff\xc4");
  REQUIRE(no_huffman[dht + 4] == '\x00');
  no_huffman[dht + 4] = '\x01';
  CHECK(error_of([&] { decode_image(no_huffman); })
            .find("corrupt JPEG: the scan at byte " + std::to_string(sos) +
                  " decodes component 0 with Huffman table DC 0, which the file does not define before it") !=
        std::string::npos);
  // Whatever a decoder leaves unwritten reads as zeros, not as the heap's previous contents.
  void* scrubbed = std::malloc(4096);
  std::memset(scrubbed, 0x5a, 4096);
  std::free(scrubbed);
  auto* fresh = static_cast<unsigned char*>(diffpost::detail::stb_malloc(4096));
  REQUIRE(fresh != nullptr);
  CHECK(std::all_of(fresh, fresh + 4096, [](unsigned char b) { return b == 0; }));
  fresh = static_cast<unsigned char*>(diffpost::detail::stb_realloc(fresh, 8192));
  CHECK(std::all_of(fresh, fresh + 8192, [](unsigned char b) { return b == 0; }));
  diffpost::detail::stb_free(fresh);
  CHECK(diffpost::detail::stb_allocations().live == 0);
}

TEST_CASE("stb allocates no more than the header justifies: a 2 GiB chunk, a zlib bomb") {
  // A 1x1 RGB PNG whose IDAT chunk claims 0x7ffffff0 bytes: stb 2.27 reallocates its buffer to that size
  // before reading; the budget turns the request down.
  const std::string header = big_endian(1, 4) + big_endian(1, 4) + std::string("\x08\x02\x00\x00\x00", 5);
  const auto claiming = std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", header) +
                        png_chunk("IDAT", std::string(32, '\0'), 0x7ffffff0);
  CHECK(
      error_of([&] { decode_image(claiming); })
          .find(
              "decode_image: cannot decode the image in memory: the decoder asked for more memory than a 1x1 "
              "PNG needs (") != std::string::npos);
  CHECK(diffpost::detail::stb_allocations().peak < (size_t{1} << 20));
  CHECK(diffpost::detail::stb_allocations().live == 0);
  // An empty IDAT chunk before the data: stb 2.27 copies it to a null buffer (undefined behaviour).
  const auto raw = std::string("\0\x10\x20\x30", 4);
  const auto with_empty = std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", header) +
                          png_chunk("IDAT", "") + png_chunk("IDAT", zlib_compress(raw)) +
                          png_chunk("IEND", "");
  CHECK(
      error_of([&] { decode_image(with_empty); }) ==
      "decode_image: cannot read the image in memory: corrupt PNG: an empty IDAT chunk at byte 33 before the "
      "image data; refused before decoding");
  const auto image = decode_image(png_file(1, 1, 8, 2, raw));  // the same pixel without it
  CHECK(torch::allclose(image.flatten(), torch::tensor({16.f, 32.f, 48.f}) / 255 * 2 - 1));
  // A 1x1 PNG whose data inflates to 64 MiB: refused once stb holds its budget (about 16 MiB), not after.
  const auto bomb = png_file(1, 1, 8, 2, std::string(size_t{64} << 20, '\0'));
  CHECK(bomb.size() < 100'000);
  CHECK(error_of([&] {
          decode_image(bomb);
        }).find("the decoder asked for more memory than a 1x1 PNG needs") != std::string::npos);
  CHECK(diffpost::detail::stb_allocations().peak <= (size_t{17} << 20));
  CHECK(diffpost::detail::stb_allocations().live == 0);
  // The same file decodes when its declared size needs that much: 4096 x 4096 gray, all zero.
  const auto rows = std::string(size_t{4096} * 4097, '\0');
  const auto big = decode_image(png_file(4096, 4096, 8, 0, rows));
  CHECK(big.sizes() == torch::IntArrayRef({1, 1, 4096, 4096}));
  CHECK(big.max().item<float>() == -1.0f);
}

TEST_CASE("decode_image reads from memory what load_image reads from a file") {
  const TempDir dir("image-memory");
  save_image(torch::rand({3, 5, 4}) * 2 - 1, dir.file("a.png"));
  std::ifstream in(dir.file("a.png"), std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  CHECK(torch::equal(decode_image(bytes), load_image(dir.file("a.png"))));
  CHECK(torch::equal(decode_image(bytes, ImageReadOptions{}.channels(1)), load_image(dir.file("a.png"), 1)));
  CHECK(error_of([] { decode_image("", {}, "'upload'"); }) ==
        "decode_image: cannot read 'upload': the file is empty");
}
