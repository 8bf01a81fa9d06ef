// Private to diffpost: not part of the public API, may change without notice.
//
// numpy's .npy format (numpy/lib/format.py, "NEP 1"), read and written without Python: the magic string
// "\x93NUMPY", a major and a minor version byte, the header length (2 bytes little-endian in version 1.0, 4
// in versions 2.0 and 3.0), then the header, a Python dict literal such as
//   {'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }
// padded with spaces and a newline, then the elements in C (or Fortran) order. The header is parsed by a
// small grammar that accepts exactly that dict (string, bool and tuple-of-int values; Python 2's `3L`
// integers), never by evaluating it, and every size is checked against the bytes at hand before anything is
// allocated. Object arrays (`|O`, pickled Python objects) and structured dtypes are refused.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffpost::detail {

inline constexpr std::string_view kNpyMagic("\x93NUMPY", 6);
/// Longest header read. numpy itself refuses headers over 10,000 bytes unless told otherwise
/// (`max_header_size`); the limit here only bounds the work on a corrupt length.
inline constexpr size_t kMaxNpyHeaderBytes = size_t{1} << 20;

/// What a .npy header declares.
struct NpyHeader {
  std::string descr;           ///< numpy's type string, e.g. "<f8"
  torch::ScalarType dtype{};   ///< the tensor type the elements are read as
  bool swap_bytes = false;     ///< big-endian elements of more than one byte
  bool fortran_order = false;  ///< elements stored column-major
  std::vector<int64_t> shape;  ///< empty for a 0-d array
  int64_t numel = 1;           ///< product of `shape`, checked for overflow
  size_t data_offset = 0;      ///< where the elements start
};

/// The tensor type of a numpy type string ("<f8", "|u1", ">i4", ...) and whether its bytes need swapping
/// on this little-endian reader, or nullopt with `reason` set.
inline std::optional<std::pair<torch::ScalarType, bool>> npy_scalar_type(std::string_view descr,
                                                                         std::string& reason) {
  if (descr.size() < 2 || (descr[0] != '<' && descr[0] != '>' && descr[0] != '|')) {
    reason = "is not a simple numpy type string (byte order '<', '>' or '|', a kind and a size)";
    return std::nullopt;
  }
  const char order = descr[0];
  const std::string_view kind_and_size = descr.substr(1);
  struct Known {
    std::string_view name;
    torch::ScalarType type;
  };
  static constexpr std::array<Known, 11> known{{{"f2", torch::kFloat16},
                                                {"f4", torch::kFloat32},
                                                {"f8", torch::kFloat64},
                                                {"i1", torch::kInt8},
                                                {"i2", torch::kInt16},
                                                {"i4", torch::kInt32},
                                                {"i8", torch::kInt64},
                                                {"u1", torch::kUInt8},
                                                {"b1", torch::kBool},
                                                {"c8", torch::kComplexFloat},
                                                {"c16", torch::kComplexDouble}}};
  for (const auto& candidate : known) {
    if (candidate.name != kind_and_size) continue;
    const auto size = c10::elementSize(candidate.type);
    if (size > 1 && order == '|') {
      reason = "has no byte order ('|') for a multi-byte type";
      return std::nullopt;
    }
    // Complex elements are two floats, each swapped on its own.
    return std::make_pair(candidate.type, size > 1 && order == '>');
  }
  if (kind_and_size == "O") {
    reason = "holds Python objects (dtype object), which only pickle can read; diffpost reads numeric arrays";
  } else if (!kind_and_size.empty() && kind_and_size[0] == 'u') {
    reason = "is an unsigned integer type wider than one byte, which LibTorch has no type for";
  } else {
    reason = "is not a numeric type diffpost reads (f2 f4 f8, i1 i2 i4 i8, u1, b1, c8 c16)";
  }
  return std::nullopt;
}

/// The numpy type string of a tensor type, little-endian ("<f8", "|u1", ...).
inline std::string npy_descr(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat16:
      return "<f2";
    case torch::kFloat32:
      return "<f4";
    case torch::kFloat64:
      return "<f8";
    case torch::kInt8:
      return "|i1";
    case torch::kInt16:
      return "<i2";
    case torch::kInt32:
      return "<i4";
    case torch::kInt64:
      return "<i8";
    case torch::kUInt8:
      return "|u1";
    case torch::kBool:
      return "|b1";
    case torch::kComplexFloat:
      return "<c8";
    case torch::kComplexDouble:
      return "<c16";
    default:
      break;
  }
  TORCH_CHECK(false, "write_npz: tensors of type ", type,
              " have no numpy equivalent here; convert them (e.g. bfloat16 to float32) first");
  return "";
}

/// The recursive-descent reader of the header dict. Positions are offsets into `text`.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, const std::string& context) : text_(text), context_(context) {}

  /// Parses the dict and fills the fields of `header` it holds.
  void parse(NpyHeader& header) {
    bool has_descr = false, has_order = false, has_shape = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const auto key = string_literal("a key");
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        TORCH_CHECK(!has_descr, context_, ": the .npy header names 'descr' twice");
        has_descr = true;
        TORCH_CHECK(peek() == '\'' || peek() == '"', context_,
                    ": the .npy header's 'descr' is not a type string (a structured dtype?); diffpost reads "
                    "plain numeric arrays");
        header.descr = string_literal("'descr'");
      } else if (key == "fortran_order") {
        TORCH_CHECK(!has_order, context_, ": the .npy header names 'fortran_order' twice");
        has_order = true;
        header.fortran_order = boolean();
      } else if (key == "shape") {
        TORCH_CHECK(!has_shape, context_, ": the .npy header names 'shape' twice");
        has_shape = true;
        header.shape = int_tuple();
      } else {
        TORCH_CHECK(false, context_, ": the .npy header has an unknown key '", key,
                    "' (expected 'descr', 'fortran_order' and 'shape')");
      }
      skip_space();
      if (peek() == ',') {
        ++position_;
        continue;
      }
      skip_space();
      TORCH_CHECK(peek() == '}', context_, ": the .npy header has '", printable(peek()), "' at offset ",
                  position_, " where ',' or '}' belongs");
      break;
    }
    expect('}');
    skip_space();
    TORCH_CHECK(position_ == text_.size(), context_, ": the .npy header continues after its dict (offset ",
                position_, ")");
    TORCH_CHECK(has_descr && has_order && has_shape, context_, ": the .npy header lacks ",
                !has_descr   ? "'descr'"
                : !has_order ? "'fortran_order'"
                             : "'shape'");
  }

 private:
  [[nodiscard]] char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }

  static std::string printable(char c) {
    if (c == '\0') return "the end";
    if (c >= 0x20 && c < 0x7f) return {1, c};
    return "byte " + std::to_string(static_cast<unsigned char>(c));
  }

  void skip_space() {
    while (position_ < text_.size() && (text_[position_] == ' ' || text_[position_] == '\n' ||
                                        text_[position_] == '\t' || text_[position_] == '\r'))
      ++position_;
  }

  void expect(char c) {
    TORCH_CHECK(peek() == c, context_, ": the .npy header has ", printable(peek()), " at offset ", position_,
                " where '", std::string(1, c), "' belongs");
    ++position_;
  }

  // A Python string literal in single or double quotes, without escapes (numpy never writes any).
  std::string string_literal(const char* what) {
    const char quote = peek();
    TORCH_CHECK(quote == '\'' || quote == '"', context_, ": the .npy header has ", printable(quote),
                " at offset ", position_, " where ", what, " (a quoted string) belongs");
    const auto end = text_.find(quote, position_ + 1);
    TORCH_CHECK(end != std::string_view::npos, context_, ": the .npy header has an unterminated string");
    std::string value(text_.substr(position_ + 1, end - position_ - 1));
    TORCH_CHECK(value.find('\\') == std::string::npos, context_,
                ": the .npy header has an escape sequence in a string, which numpy never writes");
    position_ = end + 1;
    return value;
  }

  bool boolean() {
    if (text_.substr(position_, 4) == "True") {
      position_ += 4;
      return true;
    }
    if (text_.substr(position_, 5) == "False") {
      position_ += 5;
      return false;
    }
    TORCH_CHECK(false, context_, ": the .npy header's 'fortran_order' is not True or False (offset ",
                position_, ")");
    return false;
  }

  // A non-negative decimal integer, with Python 2's optional L suffix, at most 2^62.
  int64_t integer() {
    const size_t start = position_;
    int64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      TORCH_CHECK(value <= (int64_t{1} << 62) / 10, context_,
                  ": the .npy header's shape has a dimension over "
                  "2^62 (offset ",
                  start, ")");
      value = value * 10 + (peek() - '0');
      ++position_;
    }
    TORCH_CHECK(position_ > start, context_, ": the .npy header's shape has ", printable(peek()),
                " at offset ", position_, " where a dimension (a non-negative integer) belongs");
    if (peek() == 'L') ++position_;
    return value;
  }

  // (), (n,), (n, m), (n, m,) ...
  std::vector<int64_t> int_tuple() {
    std::vector<int64_t> values;
    expect('(');
    skip_space();
    while (peek() != ')') {
      TORCH_CHECK(values.size() < 64, context_, ": the .npy header's shape has more than 64 dimensions");
      values.push_back(integer());
      skip_space();
      if (peek() == ',') {
        ++position_;
        skip_space();
      } else {
        TORCH_CHECK(peek() == ')', context_, ": the .npy header's shape has ", printable(peek()),
                    " at offset ", position_, " where ',' or ')' belongs");
      }
    }
    ++position_;
    return values;
  }

  std::string_view text_;
  const std::string& context_;
  size_t position_ = 0;
};

/// Parses the preamble and header of the .npy bytes `bytes` and checks that the elements they declare are
/// exactly the bytes that follow. `context` (e.g. "'stats.npz' array 'mu'") leads every error.
inline NpyHeader parse_npy_header(std::string_view bytes, const std::string& context) {
  TORCH_CHECK(bytes.size() >= 10 && bytes.substr(0, kNpyMagic.size()) == kNpyMagic, context,
              ": not a .npy array (it does not start with numpy's magic string \\x93NUMPY)");
  const auto major = static_cast<unsigned char>(bytes[6]);
  const auto minor = static_cast<unsigned char>(bytes[7]);
  TORCH_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, context, ": .npy format version ",
              static_cast<int>(major), ".", static_cast<int>(minor),
              " is not one numpy writes (1.0, 2.0, 3.0)");
  const size_t length_bytes = major == 1 ? 2 : 4;
  TORCH_CHECK(bytes.size() >= 8 + length_bytes, context, ": the .npy preamble is truncated");
  uint64_t header_length = 0;
  for (size_t i = 0; i < length_bytes; ++i)
    header_length |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
  const size_t header_start = 8 + length_bytes;
  TORCH_CHECK(header_length <= kMaxNpyHeaderBytes, context, ": the .npy header claims ", header_length,
              " bytes, more than the ", kMaxNpyHeaderBytes, " read (corrupt?)");
  TORCH_CHECK(header_length <= bytes.size() - header_start, context, ": the .npy header claims ",
              header_length, " bytes but only ", bytes.size() - header_start, " follow (truncated?)");
  const auto text = bytes.substr(header_start, static_cast<size_t>(header_length));
  // Versions 1 and 2 are latin-1, version 3 UTF-8; the grammar needs ASCII only.
  TORCH_CHECK(std::all_of(text.begin(), text.end(), [](char c) { return c != '\0'; }), context,
              ": the .npy header holds a NUL byte (corrupt?)");

  NpyHeader header;
  NpyHeaderParser(text, context).parse(header);
  std::string reason;
  const auto type = npy_scalar_type(header.descr, reason);
  TORCH_CHECK(type.has_value(), context, ": element type '", header.descr, "' ", reason);
  header.dtype = type->first;
  header.swap_bytes = type->second;
  header.data_offset = header_start + static_cast<size_t>(header_length);

  const auto element_size = static_cast<int64_t>(c10::elementSize(header.dtype));
  const int64_t max_numel = std::numeric_limits<int64_t>::max() / element_size;
  header.numel = 1;
  for (const auto dimension : header.shape) {
    TORCH_CHECK(dimension == 0 || header.numel <= max_numel / dimension, context, ": shape ",
                c10::IntArrayRef(header.shape), " has more elements than can be addressed (corrupt?)");
    header.numel *= dimension;
  }
  const auto data_bytes = bytes.size() - header.data_offset;
  TORCH_CHECK(static_cast<uint64_t>(header.numel) * static_cast<uint64_t>(element_size) == data_bytes,
              context, ": shape ", c10::IntArrayRef(header.shape), " of '", header.descr, "' needs ",
              header.numel * element_size, " bytes of data but ", data_bytes,
              " follow the header (truncated or corrupt?)");
  return header;
}

/// The array stored in the .npy bytes `bytes`, as a contiguous CPU tensor of its shape in C order (a
/// Fortran-ordered array is transposed into place; big-endian elements are swapped). Throws c10::Error
/// naming `context` for anything that is not a well-formed array of a supported type.
inline torch::Tensor decode_npy(std::string_view bytes, const std::string& context) {
  const auto header = parse_npy_header(bytes, context);
  const bool is_bool = header.dtype == torch::kBool;
  // Booleans are read as bytes and compared with 0: a byte other than 0 or 1 is not a valid C++ bool.
  auto flat =
      torch::empty({header.numel}, torch::TensorOptions().dtype(is_bool ? torch::kUInt8 : header.dtype));
  if (header.numel > 0) std::memcpy(flat.data_ptr(), bytes.data() + header.data_offset, flat.nbytes());
  if (header.swap_bytes) {
    // Complex numbers are swapped per component.
    const auto component =
        at::isComplexType(header.dtype) ? c10::elementSize(header.dtype) / 2 : c10::elementSize(header.dtype);
    auto* data = static_cast<unsigned char*>(flat.data_ptr());
    for (size_t offset = 0; offset < flat.nbytes(); offset += component)
      std::reverse(data + offset, data + offset + component);
  }
  if (is_bool) flat = flat.ne(0);
  if (!header.fortran_order) return flat.view(header.shape);
  // Column-major: the reversed shape in row-major order, transposed back.
  std::vector<int64_t> reversed(header.shape.rbegin(), header.shape.rend());
  std::vector<int64_t> order(header.shape.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(order.size() - 1 - i);
  return flat.view(reversed).permute(order).contiguous();
}

/// The .npy bytes (format version 1.0, little-endian, C order) of `tensor`, as numpy.save writes them: the
/// header padded with spaces and a newline so that the elements start at a multiple of 64 bytes.
inline std::string encode_npy(const torch::Tensor& tensor) {
  const auto values = tensor.detach().to(torch::kCPU).contiguous();
  std::string shape = "(";
  for (int64_t i = 0; i < values.dim(); ++i) {
    shape += std::to_string(values.size(i));
    if (values.dim() == 1 || i + 1 < values.dim()) shape += ",";
    if (i + 1 < values.dim()) shape += " ";
  }
  shape += ")";
  std::string header = "{'descr': '" + npy_descr(values.scalar_type()) +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t unpadded = kNpyMagic.size() + 4 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  TORCH_CHECK(header.size() <= 0xffff, "write_npz: a tensor of shape ", values.sizes(),
              " needs a header longer than .npy format 1.0 allows");
  std::string bytes(kNpyMagic);
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>((header.size() >> 8) & 0xff);
  bytes += header;
  const auto* data = static_cast<const char*>(values.data_ptr());
  if (values.scalar_type() == torch::kBool) {
    const auto as_bytes = values.to(torch::kUInt8);
    bytes.append(static_cast<const char*>(as_bytes.data_ptr()), as_bytes.nbytes());
  } else {
    bytes.append(data, values.nbytes());
  }
  return bytes;
}

}  // namespace diffpost::detail
