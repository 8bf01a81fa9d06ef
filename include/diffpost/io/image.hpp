// Reading and writing images: the single image loader of diffpost (PNG, JPEG, BMP, GIF, TGA, binary PGM/PPM
// in; PNG out).
//
// Images are float tensors in [-1, 1], x = 2 * sample / max - 1 (max = 255 for 8-bit files, 65535 for 16-bit
// PNGs, the declared maxval for PGM/PPM), NCHW. Files are treated as hostile: the header is read first and an
// image larger than the caller's limit is refused before anything of its size is allocated; PGM/PPM and BMP
// are decoded here, PNG, JPEG, GIF and TGA by a private copy of stb_image (diffpost/io/detail/stb.hpp:
// formats, allocation budget, zeroed memory, the DIFFPOST_EXTERNAL_STB opt-out), after checks of what
// stb 2.27 gets wrong (JPEG tables, empty PNG IDAT chunks). docs/operators.md ("Images") lists what is read
// and what is refused; docs/fuzzing.md how it is fuzzed. Grids of images (save_grid) may carry column labels
// and captions, drawn with stb_easy_font's built-in bitmap font.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/detail/stb.hpp>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace diffpost {

/// Default for ImageReadOptions::max_pixels: 4096 x 4096 pixels, far beyond the diffusion models here (28 to
/// 256 pixels a side) yet a bounded decode (at most a few hundred MB).
inline constexpr int64_t kDefaultMaxImagePixels = int64_t{4096} * 4096;
/// Default for ImageReadOptions::max_file_bytes: 256 MiB.
inline constexpr int64_t kDefaultMaxImageFileBytes = int64_t{256} << 20;
/// Longest side any image may have, whatever the options (65535, the TGA and PGM/PPM maximum for practical
/// purposes): it keeps the decoders' per-row padding bounded for very narrow images.
inline constexpr int64_t kMaxImageSide = 65535;

/// How `load_image` and `decode_image` read an image, and what they refuse. The size checks run on the
/// header, before the pixels are decoded.
struct ImageReadOptions {
  /// 0 keeps the file's colour kind (1 channel for gray or gray + alpha, 3 for RGB or RGBA; alpha is
  /// dropped), 1 converts to gray (stb's luma, (77 R + 150 G + 29 B) >> 8), 3 to RGB.
  TORCH_ARG(int, channels) = 0;
  /// Required height and width in pixels, e.g. the model's image size; 0 accepts any. An image of another
  /// size is refused from its header.
  TORCH_ARG(int64_t, height) = 0;
  TORCH_ARG(int64_t, width) = 0;
  /// Most pixels (width x height) an image may declare; larger ones are refused from the header.
  TORCH_ARG(int64_t, max_pixels) = kDefaultMaxImagePixels;
  /// Largest file `load_image` reads into memory.
  TORCH_ARG(int64_t, max_file_bytes) = kDefaultMaxImageFileBytes;
};

namespace detail {

enum class ImageFormat { png, jpeg, gif, bmp, pnm, other };

/// The format the first bytes announce, tested the way stb tests them (JPEG: 0xFF fill bytes, then SOI).
/// TGA has no signature: it is among `other`, which stb alone can tell apart.
inline ImageFormat sniff_image_format(std::string_view data) {
  auto starts_with = [&](std::string_view prefix) { return data.substr(0, prefix.size()) == prefix; };
  if (starts_with(std::string_view("\x89PNG\r\n\x1a\n", 8))) return ImageFormat::png;
  if (starts_with("GIF87a") || starts_with("GIF89a")) return ImageFormat::gif;
  if (starts_with("BM")) return ImageFormat::bmp;
  if (data.size() >= 2 && data[0] == 'P' && data[1] >= '1' && data[1] <= '7') return ImageFormat::pnm;
  if (!data.empty() && static_cast<uint8_t>(data[0]) == 0xFF) {
    const auto marker = data.find_first_not_of('\xFF');
    if (marker != std::string_view::npos && static_cast<uint8_t>(data[marker]) == 0xD8)
      return ImageFormat::jpeg;
  }
  return ImageFormat::other;
}

inline const char* image_format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::png:
      return "PNG";
    case ImageFormat::jpeg:
      return "JPEG";
    case ImageFormat::gif:
      return "GIF";
    case ImageFormat::bmp:
      return "BMP";
    case ImageFormat::pnm:
      return "PGM/PPM";
    case ImageFormat::other:
      break;
  }
  return "TGA";
}

/// The formats diffpost reads, for error messages.
inline constexpr const char* kImageFormatsRead =
    "PNG (8 and 16 bits), JPEG (baseline and progressive), BMP (uncompressed), GIF (first frame), TGA "
    "and binary PGM/PPM (P5/P6, 8 and 16 bits)";

/// The problem stb_image 2.27 would meet in a JPEG, described, or "" when there is none:
///   * a DHT table declaring more than 256 codes (stb writes past its tables);
///   * a scan using a quantization or Huffman table the file never defines (stb would dequantize or decode
///     with whatever its table memory held; libjpeg refuses such files the same way).
/// The walk follows stb's parser: marker segments by their lengths, DHT and DQT tables as stb consumes them,
/// entropy-coded data up to the next marker that is not a restart. Where stb would stop at a malformed
/// segment the walk stops too, since nothing after it is ever decoded; like stb it reads zeros past the end.
inline std::string find_jpeg_table_problem(std::string_view data) {
  const size_t size = data.size();
  auto byte_at = [&](size_t i) -> unsigned { return i < size ? static_cast<uint8_t>(data[i]) : 0u; };
  auto length_at = [&](size_t i) -> size_t { return (byte_at(i) << 8) | byte_at(i + 1); };
  std::array<bool, 4> quant_defined{}, dc_defined{}, ac_defined{};
  struct Component {
    unsigned id, quant;
  };
  std::vector<Component> frame;  // empty until the SOF
  bool progressive = false;
  auto undefined_quant = [&](size_t at) -> std::string {
    for (size_t c = 0; c < frame.size(); ++c) {
      if (!quant_defined[frame[c].quant])
        return "component " + std::to_string(c) + " uses quantization table " +
               std::to_string(frame[c].quant) + ", which the file does not define before " +
               (at < size ? "the scan at byte " + std::to_string(at) : std::string("its end"));
    }
    return "";
  };
  size_t position = 0;
  while (position < size) {
    if (byte_at(position) != 0xFF) {  // stb skips bytes between segments (or fails on them)
      ++position;
      continue;
    }
    const size_t marker_at = position;
    while (position < size && byte_at(position) == 0xFF) ++position;  // fill bytes
    if (position >= size) break;
    const unsigned marker = byte_at(position++);
    if (marker == 0xD8 && marker_at == 0) continue;  // SOI
    if (marker == 0xD9) break;                       // EOI: stb decodes nothing after it
    const size_t length = length_at(position);
    if (marker == 0xC4 || marker == 0xDB) {  // DHT, DQT: stbi__process_marker, table by table
      long remaining = static_cast<long>(length) - 2;
      size_t p = position + 2;
      int table = 0;
      while (remaining > 0) {
        const unsigned q = byte_at(p++);
        if (marker == 0xDB) {
          if ((q >> 4) > 1 || (q & 15) > 3) return "";  // stb rejects the segment: "bad DQT type/table"
          quant_defined[q & 15] = true;
          const size_t bytes = (q >> 4) ? 128 : 64;
          p += bytes;
          remaining -= 1 + static_cast<long>(bytes);
          continue;
        }
        if ((q >> 4) > 1 || (q & 15) > 3) return "";  // stb rejects the segment: "bad DHT header"
        size_t codes = 0;
        for (int i = 0; i < 16; ++i) codes += byte_at(p++);
        if (codes > 256)
          return "Huffman table " + std::to_string(table) + " (" + ((q >> 4) ? "AC" : "DC") + " " +
                 std::to_string(q & 15) + ") of the DHT segment at byte " + std::to_string(marker_at) +
                 " declares " + std::to_string(codes) + " codes; a table holds at most 256";
        ((q >> 4) ? ac_defined : dc_defined)[q & 15] = true;
        remaining -= 17 + static_cast<long>(codes);
        p += codes;
        ++table;
      }
      if (remaining != 0) return "";  // stb rejects the segment's length
      position = p;
      continue;
    }
    if (length < 2) return "";  // stb rejects a segment shorter than its length field
    if (marker == 0xC0 || marker == 0xC1 || marker == 0xC2) {  // SOF: the components and their tables
      if (!frame.empty()) return "";                           // stb rejects a second frame header
      progressive = marker == 0xC2;
      const unsigned count = byte_at(position + 7);
      if (count == 0 || count > 4 || length != 8 + 3 * count)
        return "";  // stb: "bad component count/SOF len"
      for (unsigned c = 0; c < count; ++c) {
        const unsigned quant = byte_at(position + 8 + 3 * size_t{c} + 2);
        if (quant > 3) return "";  // stb: "bad TQ"
        frame.push_back({byte_at(position + 8 + 3 * size_t{c}), quant});
      }
    }
    if (marker == 0xDA) {            // SOS: every table its components need must be defined by now
      if (frame.empty()) return "";  // stb rejects a scan before the frame header
      const unsigned count = byte_at(position + 2);
      if (count == 0 || count > frame.size() || length != 6 + 2 * count) return "";  // stb: "bad SOS"
      const unsigned spectral_start = byte_at(position + 3 + 2 * size_t{count});
      const unsigned high_bit = byte_at(position + 5 + 2 * size_t{count}) >> 4;
      if (!progressive) {
        if (auto problem = undefined_quant(marker_at); !problem.empty()) return problem;
      }
      for (unsigned c = 0; c < count; ++c) {
        const unsigned id = byte_at(position + 3 + 2 * size_t{c}),
                       tables = byte_at(position + 4 + 2 * size_t{c});
        size_t which = 0;
        while (which < frame.size() && frame[which].id != id) ++which;  // stb takes the first match
        if (which == frame.size() || (tables >> 4) > 3 || (tables & 15) > 3) return "";  // stb: "bad SOS"
        // Baseline scans decode both; progressive ones DC (first pass) or AC coefficients.
        const bool needs_dc = !progressive || (spectral_start == 0 && high_bit == 0);
        const bool needs_ac = !progressive || spectral_start > 0;
        if ((needs_dc && !dc_defined[tables >> 4]) || (needs_ac && !ac_defined[tables & 15]))
          return "the scan at byte " + std::to_string(marker_at) + " decodes component " +
                 std::to_string(which) + " with Huffman table " +
                 (needs_dc && !dc_defined[tables >> 4] ? "DC " : "AC ") +
                 std::to_string(needs_dc && !dc_defined[tables >> 4] ? tables >> 4 : tables & 15) +
                 ", which the file does not define before it";
      }
    }
    position += length;
    if (marker == 0xDA) {  // the entropy-coded data runs to the next marker other than RST0-7
      while (position < size) {
        if (byte_at(position) != 0xFF) {
          ++position;
          continue;
        }
        size_t next = position;
        while (next < size && byte_at(next) == 0xFF) ++next;
        const unsigned code = byte_at(next);
        if (next < size && (code == 0x00 || (code >= 0xD0 && code <= 0xD7))) {
          position = next + 1;  // stuffed 0xFF byte or restart marker: still entropy-coded data
          continue;
        }
        break;  // a marker (or the end): the outer loop reads it
      }
    }
  }
  // A progressive image is dequantized once all its scans are read.
  return progressive ? undefined_quant(size) : "";
}

/// stb_image 2.27 copies an empty IDAT chunk that precedes the image data to a null buffer (memcpy(NULL, ...,
/// 0), undefined behaviour that lets a compiler drop its later "no IDAT" check; found by tests/fuzz).
/// Describes such a chunk, or returns "" when there is none. Encoders never write one, so the file is
/// refused.
inline std::string find_png_chunk_problem(std::string_view data) {
  size_t position = 8;  // after the signature
  while (position + 8 <= data.size()) {
    uint32_t length = 0;
    for (size_t i = 0; i < 4; ++i) length = (length << 8) | static_cast<uint8_t>(data[position + i]);
    const auto type = data.substr(position + 4, 4);
    if (type == "IDAT") {
      if (length != 0) return "";  // the data starts: stb has its buffer from here on
      return "an empty IDAT chunk at byte " + std::to_string(position) + " before the image data";
    }
    if (type == "IEND" || length > data.size() - position - 8) return "";  // stb stops there
    position += 12 + static_cast<size_t>(length);                          // length, type, data, CRC
  }
  return "";
}

/// What an image header declares.
struct ImageHeader {
  ImageFormat format = ImageFormat::other;
  int64_t width = 0;
  int64_t height = 0;
  int channels = 0;          ///< in the file (stb's count for the formats stb decodes)
  int max_value = 255;       ///< sample value meaning full intensity
  int bytes_per_sample = 1;  ///< 1 or 2
  size_t data_offset = 0;    ///< PGM/PPM: where the samples start
};

/// Refuses a declared size that is empty, beyond kMaxImageSide or ImageReadOptions::max_pixels, or other than
/// the required one.
inline void check_declared_size(ImageFormat format_id, int64_t width, int64_t height,
                                const ImageReadOptions& options, const std::string& name,
                                const char* caller) {
  const char* format = image_format_name(format_id);
  TORCH_CHECK(width > 0 && height > 0, caller, ": cannot read ", name, ": its ", format, " header declares ",
              width, "x", height, " pixels (corrupt file?)");
  TORCH_CHECK(width <= kMaxImageSide && height <= kMaxImageSide, caller, ": ", name, " declares ", width, "x",
              height, " pixels (", format, " header); no side may exceed ", kMaxImageSide,
              "; refused before decoding (corrupt file?)");
  TORCH_CHECK(width <= options.max_pixels() / height, caller, ": ", name, " declares ", width, "x", height,
              " pixels (", format, " header), more than the limit of ", options.max_pixels(),
              " pixels; refused before decoding. Check the file, or raise ImageReadOptions::max_pixels if "
              "it is a genuine image");
  TORCH_CHECK((options.height() == 0 || height == options.height()) &&
                  (options.width() == 0 || width == options.width()),
              caller, ": ", name, " is ", width, "x", height, " pixels (width x height) but ",
              options.width() == 0 ? std::string("any width") : std::to_string(options.width()), "x",
              options.height() == 0 ? std::string("any height") : std::to_string(options.height()),
              " is required; resize it first");
}

/// Refuses, from the header alone, an image that check_declared_size refuses or whose channel count is not
/// 1 to 4.
inline void check_image_header(const ImageHeader& header, const ImageReadOptions& options,
                               const std::string& name, const char* caller) {
  check_declared_size(header.format, header.width, header.height, options, name, caller);
  TORCH_CHECK(header.channels >= 1 && header.channels <= 4, caller, ": cannot read ", name, ": its ",
              image_format_name(header.format), " header declares ", header.channels,
              " channels (corrupt file?)");
}

/// How a BMP stores its pixels, from its headers (the layouts stb reads: BITMAPCOREHEADER, BITMAPINFOHEADER
/// with or without bit masks, V3, V4 and V5; uncompressed or BI_BITFIELDS).
struct BmpLayout {
  int64_t width = 0;
  int64_t height = 0;  ///< rows, whatever their order
  bool top_down = false;
  int bits_per_pixel = 0;
  std::array<uint32_t, 3> masks{};  ///< red, green, blue; 16 and 32 bits per pixel
  size_t palette_offset = 0;
  size_t palette_entries = 0;  ///< 1, 4 and 8 bits per pixel
  size_t palette_entry_size = 4;
  size_t pixel_offset = 0;
  size_t row_bytes = 0;  ///< padded to 4 bytes
};

/// Reads the BMP headers. BMP is decoded here, not by stb: stb 2.27 takes palette entries the file never
/// gives from uninitialised stack memory (found by tests/fuzz: the same file decoded to different pixels
/// twice).
inline BmpLayout read_bmp_layout(std::string_view data, const std::string& name, const char* caller) {
  auto fail = [&](const std::string& why) {
    TORCH_CHECK(false, caller, ": cannot read ", name, ": corrupt or unsupported BMP: ", why);
  };
  auto u16 = [&](size_t at) -> uint32_t {
    if (at + 2 > data.size()) fail("the headers end early (truncated file?)");
    return static_cast<uint8_t>(data[at]) | (static_cast<uint8_t>(data[at + 1]) << 8);
  };
  auto u32 = [&](size_t at) -> uint32_t { return u16(at) | (u16(at + 2) << 16); };
  BmpLayout layout;
  const uint32_t header_size = u32(14);
  if (header_size != 12 && header_size != 40 && header_size != 56 && header_size != 108 && header_size != 124)
    fail("a header of " + std::to_string(header_size) + " bytes (12, 40, 56, 108 and 124 are read)");
  const bool core = header_size == 12;
  int64_t signed_height = 0;
  if (core) {
    layout.width = u16(18);
    signed_height = u16(20);
  } else {
    layout.width = static_cast<int32_t>(u32(18));
    signed_height = static_cast<int32_t>(u32(22));
  }
  layout.top_down = signed_height < 0;
  layout.height = signed_height < 0 ? -signed_height : signed_height;
  const size_t fields = core ? 22 : 26;  // planes, then bits per pixel
  if (u16(fields) != 1) fail("planes is not 1");
  layout.bits_per_pixel = static_cast<int>(u16(fields + 2));
  const int bits = layout.bits_per_pixel;
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
    fail(std::to_string(bits) + " bits per pixel (1, 4, 8, 16, 24 and 32 are read)");
  const uint32_t compression = core ? 0 : u32(30);
  if (compression == 1 || compression == 2)
    fail("RLE compression is not supported; save it uncompressed or as PNG");
  if (compression != 0 && !(compression == 3 && (bits == 16 || bits == 32)))
    fail("compression " + std::to_string(compression) + " with " + std::to_string(bits) + " bits per pixel");
  size_t header_end = 14 + header_size;
  if (bits == 16) {
    layout.masks[0] = 31u << 10, layout.masks[1] = 31u << 5, layout.masks[2] = 31u;
  } else if (bits == 32) {
    layout.masks[0] = 0xffu << 16, layout.masks[1] = 0xffu << 8, layout.masks[2] = 0xffu;
  }
  if (compression == 3) {
    const size_t at = header_size == 40 ? header_end : 54;  // after a 40-byte header, or inside a larger one
    if (header_size == 40) header_end += 12;
    for (size_t i = 0; i < 3; ++i) layout.masks[i] = u32(at + 4 * i);
    for (const uint32_t mask : layout.masks) {
      const int count = __builtin_popcount(mask);
      if (count == 0 || count > 8)
        fail("a colour bit mask of " + std::to_string(count) + " bits (1 to 8 are read)");
    }
  }
  const auto offset = static_cast<size_t>(u32(10));
  if (offset < header_end)
    fail("the pixels start at byte " + std::to_string(offset) + ", inside the headers");
  layout.pixel_offset = offset;
  if (bits <= 8) {
    layout.palette_offset = header_end;
    layout.palette_entry_size = core ? 3 : 4;
    layout.palette_entries = std::min<size_t>((offset - header_end) / layout.palette_entry_size, 256);
    if (layout.palette_entries == 0) fail("no palette for " + std::to_string(bits) + " bits per pixel");
  }
  layout.row_bytes =
      static_cast<size_t>((std::clamp<int64_t>(layout.width, 0, kMaxImageSide) * bits + 31) / 32 * 4);
  return layout;
}

/// Decodes the pixels of a BMP whose header was checked, as RGB samples [H, W, 3] (stb's results for what stb
/// reads; palette indices beyond the palette and truncated pixel data are errors, not black or garbage).
inline torch::Tensor decode_bmp(std::string_view data, const std::string& name, const char* caller) {
  const auto layout = read_bmp_layout(data, name, caller);
  const int64_t width = layout.width, height = layout.height;  // bounded by check_image_header
  const size_t needed = layout.row_bytes * static_cast<size_t>(height);
  TORCH_CHECK(layout.pixel_offset <= data.size() && data.size() - layout.pixel_offset >= needed, caller,
              ": cannot read ", name, ": its BMP header declares ", width, "x", height, " pixels of ",
              layout.bits_per_pixel, " bits (", needed, " bytes from byte ", layout.pixel_offset,
              ") but the file holds ", data.size() - std::min(data.size(), layout.pixel_offset),
              " (truncated?)");
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  auto samples = torch::empty({height, width, 3}, torch::kUInt8);
  auto* out = samples.data_ptr<uint8_t>();
  // stb's scaling of an n-bit channel to 8 bits: the top bits, repeated into the low ones.
  auto channel = [](uint32_t value, uint32_t mask) -> uint8_t {
    static constexpr std::array<unsigned, 9> multiply = {0, 0xff, 0x55, 0x49, 0x11, 0x21, 0x41, 0x81, 0x01};
    static constexpr std::array<unsigned, 9> shift = {0, 0, 0, 1, 0, 2, 4, 6, 0};
    const int bits = __builtin_popcount(mask);
    const int high = 31 - __builtin_clz(mask);
    uint32_t v = value & mask;
    v = high >= 7 ? v >> (high - 7) : v << (7 - high);
    v >>= 8 - bits;
    return static_cast<uint8_t>((v * multiply[bits]) >> shift[bits]);
  };
  for (int64_t row = 0; row < height; ++row) {
    const uint8_t* line = bytes + layout.pixel_offset + layout.row_bytes * static_cast<size_t>(row);
    uint8_t* pixel = out + 3 * width * (layout.top_down ? row : height - 1 - row);
    for (int64_t x = 0; x < width; ++x, pixel += 3) {
      switch (layout.bits_per_pixel) {
        case 1:
        case 4:
        case 8: {
          const int bits = layout.bits_per_pixel;
          const int64_t bit = x * bits;
          const unsigned index = (line[bit / 8] >> (8 - bits - bit % 8)) & ((1u << bits) - 1);
          TORCH_CHECK(index < layout.palette_entries, caller, ": cannot read ", name,
                      ": corrupt BMP: pixel (", x, ", ", layout.top_down ? row : height - 1 - row,
                      ") uses palette entry ", index, " of ", layout.palette_entries);
          const uint8_t* entry = bytes + layout.palette_offset + index * layout.palette_entry_size;
          pixel[0] = entry[2], pixel[1] = entry[1], pixel[2] = entry[0];
          break;
        }
        case 24:
          pixel[0] = line[3 * x + 2], pixel[1] = line[3 * x + 1], pixel[2] = line[3 * x];
          break;
        default: {  // 16 or 32 bits, by masks
          const uint8_t* p = line + x * (layout.bits_per_pixel / 8);
          const uint32_t value = layout.bits_per_pixel == 16
                                     ? static_cast<uint32_t>(p[0] | (p[1] << 8))
                                     : static_cast<uint32_t>(p[0] | (p[1] << 8) | (p[2] << 16)) |
                                           (static_cast<uint32_t>(p[3]) << 24);
          for (int c = 0; c < 3; ++c) pixel[c] = channel(value, layout.masks[c]);
        }
      }
    }
  }
  return samples;
}

/// PGM/PPM (netpbm P5/P6) header: "P5|P6", whitespace and # comments, width, height, maxval, one whitespace.
inline ImageHeader read_pnm_header(std::string_view data, const std::string& name, const char* caller) {
  const char type = data[1];
  TORCH_CHECK(type == '5' || type == '6', caller, ": cannot read ", name, ": PNM type P", type,
              (type == '2' || type == '3') ? " (plain-text samples)" : (type == '7' ? " (PAM)" : " (bitmap)"),
              " is not supported; save it as binary PGM (P5) or PPM (P6), or as PNG");
  size_t position = 2;
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
  };
  auto read_number = [&](const char* what, int64_t largest) {
    while (position < data.size() && (is_space(data[position]) || data[position] == '#')) {
      if (data[position] == '#') {
        while (position < data.size() && data[position] != '\n' && data[position] != '\r') ++position;
      } else {
        ++position;
      }
    }
    int64_t value = 0;
    size_t digits = 0;
    while (position < data.size() && data[position] >= '0' && data[position] <= '9') {
      const int digit = data[position++] - '0';
      TORCH_CHECK(value <= (largest - digit) / 10, caller, ": cannot read ", name, ": the PNM header's ",
                  what, " exceeds ", largest, " (corrupt file?)");
      value = value * 10 + digit;
      ++digits;
    }
    TORCH_CHECK(digits > 0, caller, ": cannot read ", name, ": the PNM header lacks its ", what,
                " (truncated or corrupt file?)");
    return value;
  };
  ImageHeader header;
  header.format = ImageFormat::pnm;
  header.channels = type == '6' ? 3 : 1;
  header.width = read_number("width", kMaxImageSide);
  header.height = read_number("height", kMaxImageSide);
  header.max_value = static_cast<int>(read_number("maxval", 65535));
  TORCH_CHECK(header.max_value > 0, caller, ": cannot read ", name,
              ": the PNM maxval is 0; it must be 1 to 65535");
  TORCH_CHECK(position < data.size() && is_space(data[position]), caller, ": cannot read ", name,
              ": the PNM header does not end in a whitespace byte after maxval (truncated or corrupt file?)");
  header.bytes_per_sample = header.max_value > 255 ? 2 : 1;
  header.data_offset = position + 1;
  return header;
}

/// The header of an encoded image, without decoding it: PGM/PPM parsed here, the rest through stb_info after
/// the JPEG check (and, for PNG, after the size check: stb_info fails on PNGs over 1 GiB with "unknown image
/// type"). Throws c10::Error naming `name` for what is not an image diffpost reads, a corrupt JPEG, or a PNG
/// that check_declared_size refuses.
inline ImageHeader read_image_header(std::string_view data, const ImageReadOptions& options,
                                     const std::string& name, const char* caller) {
  TORCH_CHECK(!data.empty(), caller, ": cannot read ", name, ": the file is empty");
  const auto format = sniff_image_format(data);
  if (format == ImageFormat::pnm) return read_pnm_header(data, name, caller);
  if (format == ImageFormat::bmp) {
    const auto layout = read_bmp_layout(data, name, caller);
    ImageHeader header;
    header.format = format;
    header.width = layout.width;
    header.height = layout.height;
    header.channels = 3;
    return header;
  }
  if (format == ImageFormat::png && data.size() >= 24 && data.substr(12, 4) == "IHDR") {
    auto be32 = [&](size_t at) {
      int64_t value = 0;
      for (size_t i = 0; i < 4; ++i) value = (value << 8) | static_cast<uint8_t>(data[at + i]);
      return value;
    };
    check_declared_size(format, be32(16), be32(20), options, name, caller);
  }
  TORCH_CHECK(data.size() <= static_cast<size_t>(std::numeric_limits<int>::max()), caller, ": cannot read ",
              name, ": ", data.size(), " bytes are more than the decoder takes (2 GiB)");
  if (format == ImageFormat::png) {
    const auto problem = find_png_chunk_problem(data);
    TORCH_CHECK(problem.empty(), caller, ": cannot read ", name, ": corrupt PNG: ", problem,
                "; refused before decoding");
  }
  if (format == ImageFormat::jpeg) {
    const auto problem = find_jpeg_table_problem(data);
    TORCH_CHECK(problem.empty(), caller, ": cannot read ", name, ": corrupt JPEG: ", problem,
                "; refused before decoding");
  }
  const auto* bytes = reinterpret_cast<const stbi_uc*>(data.data());
  const int length = static_cast<int>(data.size());
  int width = 0, height = 0, channels = 0;
  {
    StbBudget budget(size_t{1} << 20);  // headers need a few kB (stb's JPEG and GIF decoder state)
    TORCH_CHECK(stbi_info_from_memory(bytes, length, &width, &height, &channels), caller, ": cannot read ",
                name, ": ", stbi_failure_reason(),
                format == ImageFormat::other
                    ? std::string(" (diffpost reads ") + kImageFormatsRead + ")"
                    : std::string(" (corrupt ") + image_format_name(format) + " header)");
  }
  ImageHeader header;
  header.format = format;
  header.width = width;
  header.height = height;
  header.channels = channels;
  if (stbi_is_16_bit_from_memory(bytes, length)) {
    header.bytes_per_sample = 2;
    header.max_value = 65535;
  }
  return header;
}

/// Samples [H, W, C] of any integer dtype, C in 1..4, converted to `wanted` channels (0: 1 for gray and gray
/// + alpha, 3 for colour) the way stb converts: alpha dropped, gray repeated, luma (77 R + 150 G + 29 B)
/// >> 8.
inline torch::Tensor convert_channels(const torch::Tensor& samples, int wanted) {
  const int64_t have = samples.size(2);
  if (wanted == 0) wanted = have <= 2 ? 1 : 3;
  using torch::indexing::Slice;
  if (have <= 2) {
    const auto gray = samples.index({Slice(), Slice(), Slice(0, 1)});
    return wanted == 1 ? gray : gray.expand({-1, -1, 3});
  }
  auto rgb = samples.index({Slice(), Slice(), Slice(0, 3)});
  if (wanted == 3) return rgb;
  const auto wide = rgb.to(torch::kInt32);
  return (wide.select(2, 0) * 77 + wide.select(2, 1) * 150 + wide.select(2, 2) * 29)
      .bitwise_right_shift(8)
      .unsqueeze(2);
}

/// [H, W, C] integer samples with full intensity `max_value` -> [1, C, H, W] float32 in [-1, 1].
inline torch::Tensor samples_to_image(const torch::Tensor& samples, int max_value) {
  return (samples.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32).clamp_max(max_value) / max_value * 2.0 -
          1.0)
      .contiguous();
}

/// Decodes the samples of a PGM/PPM whose header was read.
inline torch::Tensor decode_pnm(std::string_view data, const ImageHeader& header, const std::string& name,
                                const char* caller) {
  const int64_t count = header.width * header.height * header.channels;  // bounded by check_image_header
  const int64_t bytes = count * header.bytes_per_sample;
  const auto available = static_cast<int64_t>(data.size() - std::min(data.size(), header.data_offset));
  TORCH_CHECK(available >= bytes, caller, ": cannot read ", name, ": its PGM/PPM header declares ",
              header.width, "x", header.height, "x", header.channels, " samples of ", header.bytes_per_sample,
              " byte(s) (", bytes, " bytes) but the file holds ", available,
              " after the header (truncated?)");
  const auto* raw = reinterpret_cast<const uint8_t*>(data.data() + header.data_offset);
  torch::Tensor samples;
  if (header.bytes_per_sample == 1) {
    samples = torch::from_blob(const_cast<uint8_t*>(raw), {count}, torch::kUInt8).clone();
  } else {
    samples = torch::empty({count}, torch::kInt32);
    auto* out = samples.data_ptr<int32_t>();
    for (int64_t i = 0; i < count; ++i) out[i] = (raw[2 * i] << 8) | raw[2 * i + 1];  // big-endian
  }
  return samples.view({header.height, header.width, header.channels});
}

/// Decodes with stb, under an allocation budget of what the checked header justifies: twice the encoded size
/// (compressed data gathered in one buffer) plus 24 bytes per pixel and sample byte (the largest need is a
/// progressive CMYK JPEG: coefficients and planes of four components, plus the output) on blocks padded to
/// 32 pixels, plus 16 MiB for tables.
inline torch::Tensor decode_with_stb(std::string_view data, const ImageHeader& header,
                                     const std::string& name, const char* caller) {
  const auto padded = static_cast<size_t>((header.width + 32) * (header.height + 32));
  const size_t limit =
      2 * data.size() + 24 * padded * static_cast<size_t>(header.bytes_per_sample) + (size_t{16} << 20);
  StbBudget budget(limit);
  const auto* bytes = reinterpret_cast<const stbi_uc*>(data.data());
  const int length = static_cast<int>(data.size());
  int width = 0, height = 0, channels = 0;
  void* pixels =
      header.bytes_per_sample == 2
          ? static_cast<void*>(stbi_load_16_from_memory(bytes, length, &width, &height, &channels, 0))
          : static_cast<void*>(stbi_load_from_memory(bytes, length, &width, &height, &channels, 0));
  const char* format = image_format_name(header.format);
  TORCH_CHECK(pixels != nullptr || stb_allocations().refused == 0, caller, ": cannot decode ", name,
              ": the decoder asked for more memory than a ", header.width, "x", header.height, " ", format,
              " needs (", limit, " bytes; corrupt or hostile file?)");
  TORCH_CHECK(pixels != nullptr, caller, ": cannot decode ", name, ": ", stbi_failure_reason(), " (corrupt ",
              format, "?)");
  const std::unique_ptr<void, decltype(&stbi_image_free)> free_pixels(pixels, &stbi_image_free);
  TORCH_CHECK(width == header.width && height == header.height && channels >= 1 && channels <= 4, caller,
              ": cannot decode ", name, ": its header declares ", header.width, "x", header.height,
              " pixels but the decoder produced ", width, "x", height, "x", channels, " (corrupt ", format,
              "?)");
  if (header.bytes_per_sample == 1)
    return torch::from_blob(pixels, {height, width, channels}, torch::kUInt8).clone();
  // uint16 samples: LibTorch 1.13 has no uint16 dtype, so reinterpret as int16 and undo the sign.
  return torch::from_blob(pixels, {height, width, channels}, torch::kInt16)
      .to(torch::kInt32)
      .bitwise_and(0xFFFF);
}

/// Reads at most `max_bytes` of the regular file `path` into memory.
inline std::string read_image_file(const std::string& path, int64_t max_bytes, const char* caller) {
  namespace fs = std::filesystem;
  std::error_code error;
  TORCH_CHECK(fs::is_regular_file(path, error), caller, ": cannot read '", path,
              "': no such file (or not a regular file)");
  const auto size = fs::file_size(path, error);
  TORCH_CHECK(!error, caller, ": cannot read '", path, "': ", error.message());
  TORCH_CHECK(size <= static_cast<uintmax_t>(std::max<int64_t>(max_bytes, 0)), caller, ": '", path, "' is ",
              size, " bytes, more than the limit of ", max_bytes,
              " bytes for an image file; check the file, or raise ImageReadOptions::max_file_bytes");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), caller, ": cannot read '", path, "': ", std::strerror(errno));
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(in.gcount()));  // a file that shrank meanwhile reads as truncated
  return bytes;
}

inline void check_image_read_options(const ImageReadOptions& options, const char* caller) {
  TORCH_CHECK(options.channels() == 0 || options.channels() == 1 || options.channels() == 3, caller,
              ": channels must be 0 (keep), 1 or 3, got ", options.channels());
  TORCH_CHECK(options.max_pixels() > 0 && options.height() >= 0 && options.width() >= 0, caller,
              ": ImageReadOptions max_pixels must be positive and height, width >= 0, got max_pixels ",
              options.max_pixels(), ", height ", options.height(), ", width ", options.width());
}

/// Header check, then decode, then channel conversion and scaling; `name` is how errors name the image.
inline torch::Tensor decode_image_bytes(std::string_view data, const ImageReadOptions& options,
                                        const std::string& name, const char* caller) {
  check_image_read_options(options, caller);
  const auto header = read_image_header(data, options, name, caller);
  check_image_header(header, options, name, caller);
  const auto samples = header.format == ImageFormat::pnm   ? decode_pnm(data, header, name, caller)
                       : header.format == ImageFormat::bmp ? decode_bmp(data, name, caller)
                                                           : decode_with_stb(data, header, name, caller);
  return samples_to_image(convert_channels(samples, options.channels()), header.max_value);
}

}  // namespace detail

/// Reads an image file into a float32 CPU tensor [1, C, H, W] with values in [-1, 1] (x = 2 s / max - 1, max
/// = 255 for 8-bit samples, 65535 for 16-bit PNGs, maxval for PGM/PPM; 16-bit samples keep their precision).
/// Reads PNG, JPEG, BMP, GIF (first frame), TGA and binary PGM/PPM; the header is checked before decoding, so
/// an image larger than `options.max_pixels()` (default 4096 x 4096) or of another size than
/// `options.height()` x `options.width()` is refused without being decoded. Throws c10::Error naming the path
/// and the reason when the file is missing, too large, not an image, corrupt or of the wrong size.
inline torch::Tensor load_image(const std::string& path, const ImageReadOptions& options) {
  detail::check_image_read_options(options, "load_image");
  const auto bytes = detail::read_image_file(path, options.max_file_bytes(), "load_image");
  return detail::decode_image_bytes(bytes, options, "'" + path + "'", "load_image");
}

/// `load_image(path, ImageReadOptions{}.channels(channels))`: 0 keeps the file's colour kind (1 for gray or
/// gray + alpha, 3 for RGB or RGBA; alpha is dropped), 1 converts to gray, 3 to RGB.
inline torch::Tensor load_image(const std::string& path, int channels = 0) {
  return load_image(path, ImageReadOptions{}.channels(channels));
}

/// The height and width of the image file `path`, read from its checked header without decoding the pixels
/// (so a folder's sizes can be compared before any image is decoded). Throws c10::Error as load_image does
/// for a file that is missing, too large, not an image or declares a refused size.
inline std::array<int64_t, 2> read_image_size(const std::string& path, const ImageReadOptions& options = {}) {
  detail::check_image_read_options(options, "read_image_size");
  const auto bytes = detail::read_image_file(path, options.max_file_bytes(), "read_image_size");
  const std::string name = "'" + path + "'";
  const auto header = detail::read_image_header(bytes, options, name, "read_image_size");
  detail::check_image_header(header, options, name, "read_image_size");
  return {header.height, header.width};
}

/// Decodes an image held in memory (the bytes of a PNG, JPEG, ... file) exactly as load_image decodes a file;
/// `name` is how errors refer to it.
inline torch::Tensor decode_image(std::string_view bytes, const ImageReadOptions& options = {},
                                  const std::string& name = "the image in memory") {
  return detail::decode_image_bytes(bytes, options, name, "decode_image");
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

namespace detail {

/// stb_easy_font's glyph metrics, in font pixels: lines are 12 apart and their ink lies in the first 9 rows
/// (7 for capitals and digits, 2 more for descenders).
inline constexpr int64_t kFontLineAdvance = 12;
inline constexpr int64_t kFontInkHeight = 9;
/// Most quads stb_easy_font draws for one character ('X' takes 11); 64 bytes of vertices each.
inline constexpr std::size_t kFontQuadsPerCharacter = 16;

/// Refuses a grid text that stb_easy_font cannot draw: it has glyphs for printable ASCII (32 to 126) only,
/// and '\n' starts a new line. `what` names the text in the message ("column label 2").
inline void check_grid_text(const std::string& text, const std::string& what) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto code = static_cast<unsigned char>(text[i]);
    TORCH_CHECK(text[i] == '\n' || (code >= 32 && code <= 126), "save_grid: ", what, " \"", text,
                "\" has the byte ", static_cast<int>(code), " at position ", i,
                "; labels and captions are drawn with a built-in ASCII font: use printable ASCII characters "
                "(codes 32 to 126) and '\\n' for a line break (write \"dB\", not a symbol, and spell out "
                "accented letters)");
  }
}

/// The ink of `text` drawn with stb_easy_font, each font pixel a `scale` x `scale` square: a bool mask
/// [lines * 12 - 3, width] x scale, where width reaches the right edge of the last ink; 0 x 0 for a text
/// without ink.
inline torch::Tensor grid_text_ink(const std::string& text, int64_t scale) {
  std::vector<char> characters(text.begin(), text.end());
  characters.push_back('\0');  // stb takes a mutable C string
  std::vector<char> vertices(64 * kFontQuadsPerCharacter * text.size() + 64);
  const int quads = stb_easy_font_print(0.0f, 0.0f, characters.data(), nullptr, vertices.data(),
                                        static_cast<int>(vertices.size()));
  struct Rectangle {
    int64_t left, top, right, bottom;
  };
  std::vector<Rectangle> rectangles;
  int64_t width = 0;
  for (std::size_t q = 0; q < static_cast<std::size_t>(quads); ++q) {
    // Four vertices of 16 bytes (x, y, z as floats, then a colour): the first is the top-left corner, the
    // third the bottom-right one.
    std::array<float, 2> top_left{}, bottom_right{};
    std::memcpy(top_left.data(), vertices.data() + 64 * q, sizeof(top_left));
    std::memcpy(bottom_right.data(), vertices.data() + 64 * q + 32, sizeof(bottom_right));
    rectangles.push_back({std::lround(top_left[0]), std::lround(top_left[1]), std::lround(bottom_right[0]),
                          std::lround(bottom_right[1])});
    width = std::max(width, rectangles.back().right);
  }
  if (width == 0) return torch::zeros({0, 0}, torch::kBool);
  const int64_t lines = 1 + std::count(text.begin(), text.end(), '\n');
  const int64_t height = (lines - 1) * kFontLineAdvance + kFontInkHeight;
  auto ink = torch::zeros({height * scale, width * scale}, torch::kBool);
  for (const auto& r : rectangles)
    ink.slice(0, r.top * scale, r.bottom * scale).slice(1, r.left * scale, r.right * scale).fill_(true);
  return ink;
}

}  // namespace detail

/// Layout of `save_grid`. Without labels and captions (the default) the grid is images and gaps only; text
/// is drawn with a built-in bitmap font (stb_easy_font, printable ASCII), black on a light background and
/// white on a dark one, at `text_scale` font pixels per font unit (0: 1 for images narrower than 256 pixels,
/// then one more per 128 pixels, so that 256-pixel images get 2).
struct GridOptions {
  TORCH_ARG(int64_t, gap) = 2;          ///< pixels between neighbouring images and around the grid
  TORCH_ARG(double, background) = 1.0;  ///< fill value of gaps and padding, in [-1, 1] (1 = white)
  TORCH_ARG(bool, overwrite) = false;   ///< replace an existing file
  /// One label per column ("" leaves a column unlabelled), or none: drawn in a band above the grid, '\n'
  /// breaking lines (e.g. "sr\ndps"). Labels are centred horizontally over their columns when every one fits
  /// the width of its column, and otherwise all turned 90 degrees (reading bottom to top).
  TORCH_ARG(std::vector<std::string>, column_labels);
  /// A short text under each cell's image (e.g. its PSNR, "21.4"), rows x cells as the cells are placed (a
  /// batch fills several), "" for none; or no captions at all. When any caption is non-empty, every row gets
  /// a band below it for them, and a column is widened to its widest caption.
  TORCH_ARG(std::vector<std::vector<std::string>>, cell_captions);
  /// Font pixels per font unit of labels and captions; 0 chooses from the image size (see above).
  TORCH_ARG(int64_t, text_scale) = 0;
};

/// Writes a grid of images as one PNG: `rows[r]` is one row of the grid, each tensor either one image
/// ([C, H, W] / [1, C, H, W]) or a batch [B, C, H, W] that fills B consecutive cells. Images of different
/// sizes are placed at the top-left of their cell (cell height = tallest in the row, width = widest in the
/// column); gray images are shown as gray RGB when any image has colour. Handy for "truth | measurement |
/// restored", with `GridOptions::column_labels` naming the columns and `GridOptions::cell_captions` scoring
/// the cells; without them the image holds nothing but the cells and the gaps.
inline void save_grid(const std::vector<std::vector<torch::Tensor>>& rows, const std::string& path,
                      const GridOptions& options = GridOptions{}) {
  TORCH_CHECK(!rows.empty(), "save_grid: no rows given");
  TORCH_CHECK(options.gap() >= 0, "save_grid: gap must be >= 0, got ", options.gap());
  TORCH_CHECK(options.text_scale() >= 0, "save_grid: text_scale must be >= 0 (0 = from the image size), got ",
              options.text_scale());
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
  const auto& labels = options.column_labels();
  const auto& captions = options.cell_captions();
  TORCH_CHECK(labels.empty() || labels.size() == columns, "save_grid: ", labels.size(),
              " column labels for a grid of ", columns,
              " columns; give one label per column (\"\" for none) or no labels");
  TORCH_CHECK(captions.empty() || captions.size() == cells.size(), "save_grid: captions for ",
              captions.size(), " rows, but the grid has ", cells.size(),
              "; give one row of captions per row or no captions");
  for (std::size_t r = 0; r < captions.size(); ++r)
    TORCH_CHECK(captions[r].size() == cells[r].size(), "save_grid: ", captions[r].size(),
                " captions for row ", r, " of ", cells[r].size(),
                " cells (a batch [B, C, H, W] fills B cells); give one caption per cell (\"\" for none)");
  for (std::size_t c = 0; c < labels.size(); ++c)
    detail::check_grid_text(labels[c], "column label " + std::to_string(c));
  for (std::size_t r = 0; r < captions.size(); ++r)
    for (std::size_t c = 0; c < captions[r].size(); ++c)
      detail::check_grid_text(captions[r][c],
                              "the caption of row " + std::to_string(r) + ", column " + std::to_string(c));

  std::vector<int64_t> row_height(cells.size(), 0), column_width(columns, 0);
  for (std::size_t r = 0; r < cells.size(); ++r) {
    for (std::size_t c = 0; c < cells[r].size(); ++c) {
      row_height[r] = std::max(row_height[r], cells[r][c].size(1));
      column_width[c] = std::max(column_width[c], cells[r][c].size(2));
    }
  }
  const int64_t widest = *std::max_element(column_width.begin(), column_width.end());
  const int64_t scale = options.text_scale() > 0 ? options.text_scale() : std::max<int64_t>(1, widest / 128);
  // The text, as ink masks: captions widen their columns, then labels are turned if any does not fit.
  std::vector<torch::Tensor> label_ink;
  std::vector<std::vector<torch::Tensor>> caption_ink;
  int64_t caption_band = 0;
  for (std::size_t r = 0; r < captions.size(); ++r) {
    caption_ink.emplace_back();
    for (std::size_t c = 0; c < captions[r].size(); ++c) {
      caption_ink[r].push_back(detail::grid_text_ink(captions[r][c], scale));
      column_width[c] = std::max(column_width[c], caption_ink[r][c].size(1));
      caption_band = std::max(caption_band, caption_ink[r][c].size(0));
    }
  }
  const int64_t text_margin = 2 * scale;  // between an image and its caption, and below the labels
  if (caption_band > 0) caption_band += text_margin;
  bool turned = false;
  for (std::size_t c = 0; c < labels.size(); ++c) {
    label_ink.push_back(detail::grid_text_ink(labels[c], scale));
    turned = turned || label_ink[c].size(1) > column_width[c];
  }
  int64_t header = 0;
  for (std::size_t c = 0; c < labels.size(); ++c) {
    if (turned) {
      label_ink[c] = torch::rot90(label_ink[c], 1, {0, 1});  // counterclockwise: reads bottom to top
      column_width[c] = std::max(column_width[c], label_ink[c].size(1));
    }
    header = std::max(header, label_ink[c].size(0));
  }
  if (header > 0) header += text_margin;

  const int64_t gap = options.gap();
  int64_t total_height = gap + header, total_width = gap;
  for (auto h : row_height) total_height += h + caption_band + gap;
  for (auto w : column_width) total_width += w + gap;
  auto canvas = torch::full({channels, total_height, total_width}, options.background(), torch::kFloat64);
  const double ink_value = options.background() >= 0.0 ? -1.0 : 1.0;
  const auto draw = [&](const torch::Tensor& ink, int64_t top, int64_t left) {
    if (ink.numel() == 0) return;
    canvas.slice(1, top, top + ink.size(0)).slice(2, left, left + ink.size(1)).masked_fill_(ink, ink_value);
  };
  int64_t left = gap;
  for (std::size_t c = 0; c < label_ink.size(); ++c) {
    // Bottom-aligned over the column, so that one-line and turned labels start just above the images.
    draw(label_ink[c], gap + header - text_margin - label_ink[c].size(0),
         left + (column_width[c] - label_ink[c].size(1)) / 2);
    left += column_width[c] + gap;
  }
  int64_t top = gap + header;
  for (std::size_t r = 0; r < cells.size(); ++r) {
    left = gap;
    for (std::size_t c = 0; c < cells[r].size(); ++c) {
      const auto& image = cells[r][c];
      canvas.slice(1, top, top + image.size(1))
          .slice(2, left, left + image.size(2))
          .copy_(image.expand({channels, image.size(1), image.size(2)}));
      if (r < caption_ink.size()) {
        // Under its own image, centred on it as far as the column allows (a caption may be wider).
        const auto& ink = caption_ink[r][c];
        draw(
            ink, top + image.size(1) + text_margin,
            std::clamp(left + (image.size(2) - ink.size(1)) / 2, left, left + column_width[c] - ink.size(1)));
      }
      left += column_width[c] + gap;
    }
    top += row_height[r] + caption_band + gap;
  }
  detail::write_png(detail::to_pixels(canvas, "save_grid"), path, options.overwrite(), "save_grid");
}

}  // namespace diffpost
