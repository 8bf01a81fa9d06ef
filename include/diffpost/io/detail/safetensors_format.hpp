// Private to diffpost: not part of the public API, may change without notice.
//
// The safetensors format (huggingface/safetensors, `safetensors/src/tensor.rs`): an 8-byte little-endian
// header length N, N bytes of UTF-8 JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, optional
// "__metadata__": {string: string}} padded with spaces, then the tensors' raw little-endian bytes, offsets
// counted from the end of the header. Everything here works on the header alone, so that a file is
// validated completely - lengths, UTF-8, JSON, every offset, size and dtype/shape agreement, overlaps, holes
// and the file's total size - before a single tensor is allocated. The rules are the reference reader's
// (`Metadata::validate`): tensors sorted by offset must tile the data section from 0 to its end.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffpost::detail {

/// The largest header the reference reader accepts (its MAX_HEADER_SIZE, 100 MB); a header length above it is
/// refused before anything is read.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

/// One dtype of the format: its name in the header, the LibTorch scalar type, and its rank in the writer's
/// order (the reference's `Dtype` enum order, which increases with alignment; tensors are written in
/// decreasing rank, then by name).
struct SafetensorsDtype {
  std::string_view name;
  torch::ScalarType type;
  int rank;
};

/// The dtypes diffpost reads and writes (the format also has U16/U32/U64, 8-bit and sub-byte floats, which
/// LibTorch 1.13 lacks).
inline constexpr std::array<SafetensorsDtype, 10> kSafetensorsDtypes{{{"BOOL", torch::kBool, 0},
                                                                      {"U8", torch::kByte, 4},
                                                                      {"I8", torch::kChar, 5},
                                                                      {"I16", torch::kShort, 11},
                                                                      {"F16", torch::kHalf, 13},
                                                                      {"BF16", torch::kBFloat16, 14},
                                                                      {"I32", torch::kInt, 15},
                                                                      {"F32", torch::kFloat, 17},
                                                                      {"F64", torch::kDouble, 19},
                                                                      {"I64", torch::kLong, 20}}};

/// The format's entry for a LibTorch scalar type, or nullptr.
inline const SafetensorsDtype* safetensors_dtype(torch::ScalarType type) {
  for (const auto& dtype : kSafetensorsDtypes)
    if (dtype.type == type) return &dtype;
  return nullptr;
}

/// The entry for a dtype name of the header, or nullptr.
inline const SafetensorsDtype* safetensors_dtype(std::string_view name) {
  for (const auto& dtype : kSafetensorsDtypes)
    if (dtype.name == name) return &dtype;
  return nullptr;
}

/// One tensor of a validated header; `begin` and `end` count bytes from the start of the data section.
struct SafetensorsEntry {
  std::string name;
  const SafetensorsDtype* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

/// A validated header: the tensors in the order of their data, the `__metadata__` pairs, and where the data
/// section starts in the file (8 + the header length).
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;
};

/// Reads the header length from the first 8 bytes of a file of `file_size` bytes and checks it: at most
/// kSafetensorsMaxHeaderBytes and within the file.
inline uint64_t safetensors_header_length(std::string_view first_bytes, uint64_t file_size,
                                          const std::string& context) {
  TORCH_CHECK(first_bytes.size() == 8 && file_size >= 8, context, " is ", file_size,
              " bytes long, too short for the 8-byte header length of a safetensors file");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(first_bytes[i]);
  TORCH_CHECK(length <= kSafetensorsMaxHeaderBytes, context, ": header length ", length,
              " bytes (the first 8 bytes, little-endian) is over the format's limit of ",
              kSafetensorsMaxHeaderBytes, " bytes; not a safetensors file, or a corrupt one");
  TORCH_CHECK(length >= 2, context, ": header length ", length,
              " bytes is too short for a JSON header ('{}' at least)");
  TORCH_CHECK(length <= file_size - 8, context, ": header length ", length,
              " bytes runs past the end of the ", file_size, "-byte file (truncated?)");
  return length;
}

/// The offset of the first byte of `text` that is not well-formed UTF-8 (RFC 3629: no overlong forms, no
/// surrogates, nothing above U+10FFFF), or npos.
inline size_t first_invalid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    size_t length = 0;
    uint32_t code = 0;
    if (byte < 0x80) {
      ++i;
      continue;
    }
    if (byte >= 0xC2 && byte <= 0xDF) {
      length = 2;
      code = byte & 0x1Fu;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      length = 3;
      code = byte & 0x0Fu;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      length = 4;
      code = byte & 0x07u;
    } else {
      return i;
    }
    if (i + length > text.size()) return i;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0u) != 0x80u) return i;
      code = (code << 6) | (next & 0x3Fu);
    }
    const bool overlong = (length == 3 && code < 0x800) || (length == 4 && code < 0x10000);
    if (overlong || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) return i;
    i += length;
  }
  return std::string_view::npos;
}

/// A SAX handler (nlohmann::json_sax) that reads a safetensors header straight into a SafetensorsHeader,
/// without building a JSON document: it knows the only shapes a header may have (an object of objects, whose
/// values are strings or flat lists of integers), so a hostile header cannot nest deeply, grow long lists or
/// make it allocate more than a small multiple of its own size. The first problem stops the parse and is kept
/// in `error`.
class SafetensorsHeaderReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit SafetensorsHeaderReader(SafetensorsHeader& header) : header_(header) {}

  std::string error;

  bool null() override { return scalar("null"); }
  bool boolean(bool /*value*/) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t value) override {
    return value < 0 ? scalar("a negative number") : count(static_cast<uint64_t>(value));
  }
  bool number_unsigned(number_unsigned_t value) override { return count(value); }
  bool number_float(number_float_t /*value*/, const string_t& text) override {
    return scalar("the fraction " + text.substr(0, 32));
  }
  bool string(string_t& value) override {
    if (depth_ == 2 && in_metadata_) {
      if (!header_.metadata.emplace(key_, value).second)
        return fail("__metadata__ names '" + key_ + "' twice");
      return true;
    }
    if (depth_ == 2 && field_ == "dtype") {
      entry_.dtype = safetensors_dtype(value);
      if (entry_.dtype == nullptr)
        return fail(where() + " has dtype '" + value.substr(0, 32) +
                    "', which diffpost does not read (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
      return true;
    }
    return scalar("a string");
  }
  bool binary(binary_t& /*value*/) override { return scalar("binary data"); }

  bool start_object(std::size_t /*elements*/) override {
    if (depth_ == 0) {
      ++depth_;
      return true;
    }
    if (depth_ == 1) {
      ++depth_;
      in_metadata_ = name_ == "__metadata__";
      entry_ = SafetensorsEntry{};
      entry_.name = name_;
      seen_fields_.clear();
      return true;
    }
    return scalar("an object");
  }
  bool end_object() override {
    if (depth_ == 2 && !in_metadata_) {
      for (const char* field : {"dtype", "shape", "data_offsets"})
        if (!seen_fields_.contains(field)) return fail(where() + " lacks " + field);
      header_.entries.push_back(std::move(entry_));
    }
    --depth_;
    in_metadata_ = false;
    return true;
  }
  bool start_array(std::size_t /*elements*/) override {
    if (depth_ != 2 || in_metadata_ || (field_ != "shape" && field_ != "data_offsets"))
      return scalar("a list");
    ++depth_;
    items_ = 0;
    return true;
  }
  bool end_array() override {
    --depth_;
    if (field_ == "data_offsets" && items_ != 2)
      return fail(where() + " data_offsets has " + std::to_string(items_) + " entries, not [begin, end]");
    return true;
  }
  bool key(string_t& value) override {
    if (depth_ == 1) {
      if (!names_.insert(value).second) return fail("the header names '" + value + "' twice");
      name_ = value;
      return true;
    }
    if (in_metadata_) {
      key_ = value;
      return true;
    }
    if (value != "dtype" && value != "shape" && value != "data_offsets")
      return fail(where() + " has an unknown field '" + value.substr(0, 64) +
                  "' (expected dtype, shape, data_offsets)");
    if (!seen_fields_.insert(value).second) return fail(where() + " names '" + value + "' twice");
    field_ = value;
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& e) override {
    if (error.empty()) error = std::string("the header is not valid JSON: ") + e.what();
    return false;
  }

 private:
  [[nodiscard]] std::string where() const { return "tensor '" + entry_.name + "'"; }
  bool fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }
  // A value of the wrong kind where it stands.
  bool scalar(const std::string& what) {
    if (depth_ == 0) return fail("the header is " + what + ", not a JSON object of tensors");
    if (depth_ == 1) return fail("header entry '" + name_ + "' is " + what + ", not an object");
    if (in_metadata_)
      return fail("__metadata__ entry '" + key_ + "' is " + what + "; metadata values must be strings");
    if (depth_ == 2)
      return fail(where() + " " + field_ + " is " + what +
                  (field_ == "dtype" ? ", not a string" : ", not a list"));
    return fail(where() + " " + field_ + " entry is " + what + "; expected a non-negative integer");
  }
  // A non-negative integer inside shape or data_offsets.
  bool count(uint64_t value) {
    if (depth_ != 3) return scalar("a number");
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return fail(where() + " " + field_ + " entry " + std::to_string(value) + " is too large");
    ++items_;
    if (field_ == "shape") {
      if (items_ > 64) return fail(where() + " shape has more than 64 dimensions");
      entry_.shape.push_back(static_cast<int64_t>(value));
    } else if (items_ == 1) {
      entry_.begin = value;
    } else if (items_ == 2) {
      entry_.end = value;
    } else {
      return fail(where() + " data_offsets has more than 2 entries, not [begin, end]");
    }
    return true;
  }

  SafetensorsHeader& header_;
  int depth_ = 0;
  bool in_metadata_ = false;
  std::string name_, key_, field_;
  std::set<std::string> names_, seen_fields_;
  SafetensorsEntry entry_;
  size_t items_ = 0;
};

/// Parses and validates the JSON header `text` (the `length` bytes after the first 8) of a file of
/// `file_size` bytes: UTF-8, one JSON object whose keys appear once, `__metadata__` a map of strings, every
/// other entry exactly {"dtype", "shape", "data_offsets"} with a known dtype, non-negative shape entries
/// whose product times the element size fits in 64 bits and equals end - begin, and offsets that, sorted,
/// tile the data section without overlap or hole and end exactly at the end of the file. Throws one
/// c10::Error naming `context` and the first problem.
inline SafetensorsHeader parse_safetensors_header(std::string_view text, uint64_t file_size,
                                                  const std::string& context) {
  if (const auto bad = first_invalid_utf8(text); bad != std::string_view::npos) {
    TORCH_CHECK(false, context, ": the JSON header is not valid UTF-8 (byte ", bad + 8, " of the file is ",
                static_cast<int>(static_cast<unsigned char>(text[bad])), ")");
  }
  SafetensorsHeader header;
  header.data_start = 8 + text.size();
  SafetensorsHeaderReader reader(header);
  bool parsed = false;
  try {
    parsed = nlohmann::json::sax_parse(text.begin(), text.end(), &reader);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, context, ": the header is not valid JSON: ", e.what());
  }
  TORCH_CHECK(parsed && reader.error.empty(), context, ": ",
              reader.error.empty() ? std::string("the header is not valid JSON") : reader.error);

  for (const auto& entry : header.entries) {
    const std::string where = "tensor '" + entry.name + "'";
    // Byte size with overflow checks: the product must fit before it is compared.
    uint64_t bytes = c10::elementSize(entry.dtype->type);
    const bool empty = std::find(entry.shape.begin(), entry.shape.end(), 0) != entry.shape.end();
    for (const int64_t size : entry.shape) {
      const auto value = static_cast<uint64_t>(size);
      TORCH_CHECK(empty || bytes <= std::numeric_limits<uint64_t>::max() / value, context, ": ", where,
                  " shape ", c10::IntArrayRef(entry.shape), " of ", entry.dtype->name,
                  " has more bytes than 64 bits can count");
      bytes = empty ? 0 : bytes * value;
    }
    TORCH_CHECK(entry.begin <= entry.end, context, ": ", where, " data_offsets [", entry.begin, ", ",
                entry.end, "] end before they begin");
    TORCH_CHECK(entry.end - entry.begin == bytes, context, ": ", where, " is ", entry.dtype->name,
                " of shape ", c10::IntArrayRef(entry.shape), " (", bytes, " bytes) but its data_offsets [",
                entry.begin, ", ", entry.end, "] span ", entry.end - entry.begin, " bytes");
  }

  std::stable_sort(header.entries.begin(), header.entries.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_bytes = file_size - header.data_start;
  uint64_t expected = 0;
  for (size_t i = 0; i < header.entries.size(); ++i) {
    const auto& entry = header.entries[i];
    TORCH_CHECK(entry.end <= data_bytes, context, ": tensor '", entry.name, "' data_offsets [", entry.begin,
                ", ", entry.end, "] reach past the ", data_bytes, " data bytes of the file (truncated?)");
    TORCH_CHECK(entry.begin >= expected, context, ": tensor '", entry.name, "' data_offsets [", entry.begin,
                ", ", entry.end, "] overlap tensor '", header.entries[i - 1].name, "' ending at ", expected);
    TORCH_CHECK(entry.begin == expected, context, ": bytes ", expected, " to ", entry.begin,
                " of the data belong to no tensor (a hole before tensor '", entry.name,
                "'); safetensors data must be contiguous");
    expected = entry.end;
  }
  TORCH_CHECK(expected == data_bytes, context, ": the tensors cover ", expected,
              " data bytes but the file holds ", data_bytes, " after its header (", data_bytes - expected,
              " bytes belong to no tensor)");
  return header;
}

/// The header of a file holding `entries` (their offsets already laid out) and `metadata`, as the reference
/// writer makes it: compact JSON, `__metadata__` first when given, tensors in data order, each as
/// {"dtype","shape","data_offsets"}, padded with spaces to a multiple of 8 bytes.
inline std::string safetensors_header_json(const std::vector<SafetensorsEntry>& entries,
                                           const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& meta = root["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
  }
  for (const auto& entry : entries) {
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = std::string(entry.dtype->name);
    info["shape"] = entry.shape;
    info["data_offsets"] = {entry.begin, entry.end};
    root[entry.name] = std::move(info);
  }
  std::string text = root.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return text;
}

/// The tensors of a safetensors file in the order of their data, and its `__metadata__`.
struct SafetensorsContents {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads the safetensors file at `path`: the header is read and validated whole (parse_safetensors_header)
/// before any tensor is allocated, so the tensors allocated add up to the file's size at most. Tensors are
/// created on the CPU in their stored dtype; BOOL tensors must hold only 0 and 1. Errors name `context`.
inline SafetensorsContents read_safetensors_file(const std::filesystem::path& path,
                                                 const std::string& context) {
  std::error_code error;
  TORCH_CHECK(std::filesystem::exists(path, error), context, " does not exist");
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), context, " is not a regular file");
  const uint64_t file_size = std::filesystem::file_size(path, error);
  TORCH_CHECK(!error, context, " cannot be read: ", error.message());
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK(file.good(), context, " cannot be opened for reading");
  std::array<char, 8> head{};
  file.read(head.data(), static_cast<std::streamsize>(std::min<uint64_t>(8, file_size)));
  TORCH_CHECK(!file.bad(), context, " cannot be read");
  const auto length = safetensors_header_length(
      std::string_view(head.data(), std::min<uint64_t>(8, file_size)), file_size, context);
  std::string text(length, '\0');
  file.read(text.data(), static_cast<std::streamsize>(length));
  TORCH_CHECK(file.gcount() == static_cast<std::streamsize>(length), context,
              " ends inside its header (truncated?)");
  const auto header = parse_safetensors_header(text, file_size, context);

  SafetensorsContents contents;
  contents.metadata = header.metadata;
  contents.tensors.reserve(header.entries.size());
  for (const auto& entry : header.entries) {
    auto tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype->type));
    const auto bytes = static_cast<std::streamsize>(entry.end - entry.begin);
    if (bytes > 0) {
      file.seekg(static_cast<std::streamoff>(header.data_start + entry.begin));
      file.read(static_cast<char*>(tensor.data_ptr()), bytes);
      TORCH_CHECK(file.gcount() == bytes, context, " ends inside tensor '", entry.name, "' (truncated?)");
    }
    if (entry.dtype->type == torch::kBool) {
      const auto* raw = static_cast<const unsigned char*>(tensor.data_ptr());
      TORCH_CHECK(std::all_of(raw, raw + bytes, [](unsigned char b) { return b <= 1; }), context,
                  ": BOOL tensor '", entry.name, "' holds bytes other than 0 and 1");
    }
    contents.tensors.emplace_back(entry.name, std::move(tensor));
  }
  return contents;
}

/// Whether the file at `path` is read as safetensors: its name ends in `.safetensors`, or its first 8 bytes
/// are a plausible header length (at most kSafetensorsMaxHeaderBytes) followed by '{'.
inline bool looks_like_safetensors(const std::filesystem::path& path, std::string_view first_bytes) {
  if (path.extension() == ".safetensors") return true;
  if (first_bytes.size() < 9 || first_bytes[8] != '{') return false;
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(first_bytes[i]);
  return length >= 2 && length <= kSafetensorsMaxHeaderBytes;
}

}  // namespace diffpost::detail
