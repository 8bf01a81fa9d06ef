// Private to diffpost: not part of the public API, may change without notice.
//
// The zip archives `torch.save` writes (PyTorch >= 1.6) and numpy's `.npz` files, read and written with zlib
// alone. LibTorch's own
// reader (caffe2::serialize::PyTorchStreamReader) changes between releases (version records, serialization
// ids, allocation before validation), so diffpost keeps the format in its own hands: every size is checked
// against the file before anything is allocated, and every failure is a c10::Error naming the file.
//
// Layout (APPNOTE.TXT, PKWARE's zip specification, sections 4.3 and 4.4): local file headers each followed by
// their data, then the central directory, then the end-of-central-directory record (with its zip64 forms
// when sizes or offsets exceed 32 bits). torch.save stores (method 0) every record in one top-level folder
// and aligns record data to 64 bytes with an extra
// field, so that a reader can map tensors in place. The folder is "archive" in recent PyTorch releases and
// the file's stem in older ones (Debian's torch 1.13 writes "tiny_state_dict/" for tiny_state_dict.pt).
// numpy's `savez` / `savez_compressed` (Python's zipfile) write one `<name>.npy` record per array at the top
// level, stored or deflated: the flat layout.
#pragma once

#include <c10/util/Exception.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace diffpost::detail {

/// How the records of an archive are named: torch.save puts every record in one top-level folder, whose name
/// the reader strips; numpy's .npz files have no folder.
enum class ZipLayout { torch_save, flat };

/// One record of a zip archive, as its central directory describes it. `name` is relative to the archive's
/// top-level folder (torch.save) or the whole stored name (flat archives).
struct ZipRecord {
  std::string name;
  uint16_t method = 0;  ///< 0 stored, 8 deflated
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;  ///< uncompressed
  uint64_t local_header_offset = 0;
};

namespace zip {

inline constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
inline constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
inline constexpr uint32_t kEndSignature = 0x06054b50;
inline constexpr uint32_t kZip64EndSignature = 0x06064b50;
inline constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
inline constexpr uint16_t kZip64ExtraId = 0x0001;
inline constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", the alignment padding PyTorch's writer uses
inline constexpr size_t kLocalHeaderSize = 30;
inline constexpr size_t kCentralHeaderSize = 46;
inline constexpr size_t kEndSize = 22;
inline constexpr size_t kZip64EndSize = 56;
inline constexpr size_t kZip64LocatorSize = 20;
inline constexpr uint64_t kAlignment = 64;
// Deflate cannot expand data by more than about 1032:1 (zlib's FAQ); a record claiming more is corrupt.
inline constexpr uint64_t kMaxDeflateRatio = 1032;

inline uint64_t read_le(const unsigned char* bytes, int count) {
  uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

inline void append_le(std::string& out, uint64_t value, int count) {
  for (int i = 0; i < count; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

/// CRC-32 (the zip and zlib polynomial) of `size` bytes, in chunks that fit zlib's unsigned count.
inline uint32_t crc32_of(const void* data, uint64_t size, uint32_t crc = 0) {
  const auto* bytes = static_cast<const Bytef*>(data);
  while (size > 0) {
    const auto chunk = static_cast<uInt>(std::min<uint64_t>(size, uint64_t{1} << 30));
    crc = static_cast<uint32_t>(::crc32(crc, bytes, chunk));
    bytes += chunk;
    size -= chunk;
  }
  return crc;
}

}  // namespace zip

/// Reads the records of a zip archive written by torch.save (or, with ZipLayout::flat, by numpy's savez).
/// The constructor reads and validates the central directory only (its size is bounded by the file's);
/// `read` then reads one record into memory the caller has sized from `ZipRecord::size`, which the
/// constructor has checked against the file.
class ZipArchiveReader {
 public:
  /// Opens `path`; `context` (e.g. "checkpoint '/models/ffhq_10m.pt'") leads every error message.
  ZipArchiveReader(const std::filesystem::path& path, std::string context,
                   ZipLayout layout = ZipLayout::torch_save)
      : context_(std::move(context)), layout_(layout), file_(path, std::ios::binary) {
    TORCH_CHECK(file_.good(), context_, ": cannot be opened for reading");
    file_.seekg(0, std::ios::end);
    const auto end = file_.tellg();
    TORCH_CHECK(end >= 0, context_, ": cannot be read (seek failed)");
    file_size_ = static_cast<uint64_t>(end);
    read_central_directory();
  }

  /// Every record, in the order of the central directory.
  const std::vector<ZipRecord>& records() const noexcept { return records_; }

  /// The archive's top-level folder ("archive", or the file's stem for older torch.save); empty for a flat
  /// archive.
  const std::string& folder() const noexcept { return folder_; }

  /// The record called `name` (relative to the top-level folder, if any), or nullptr.
  const ZipRecord* find(std::string_view name) const {
    auto found = index_.find(std::string(name));
    return found == index_.end() ? nullptr : &records_[found->second];
  }

  /// Reads `record` into `destination`, which holds `record.size` bytes, and checks its CRC-32.
  void read(const ZipRecord& record, void* destination) {
    const uint64_t data_offset = data_offset_of(record);
    if (record.method == 0) {
      read_at(data_offset, destination, record.size, record.name);
    } else {
      inflate_record(record, data_offset, destination);
    }
    TORCH_CHECK(zip::crc32_of(destination, record.size) == record.crc32, context_, ": record '", record.name,
                "' is corrupt (its CRC-32 does not match)");
  }

  /// Reads `record` into a string (for the pickle and other small records).
  std::string read_string(const ZipRecord& record) {
    std::string bytes(static_cast<size_t>(record.size), '\0');
    read(record, bytes.data());
    return bytes;
  }

 private:
  void read_at(uint64_t offset, void* destination, uint64_t size, std::string_view what) {
    TORCH_CHECK(offset <= file_size_ && size <= file_size_ - offset, context_,
                ": ends early (truncated?) inside ", what);
    file_.clear();
    file_.seekg(static_cast<std::streamoff>(offset));
    auto* out = static_cast<char*>(destination);
    while (size > 0) {
      const auto chunk = static_cast<std::streamsize>(std::min<uint64_t>(size, uint64_t{1} << 30));
      file_.read(out, chunk);
      TORCH_CHECK(file_.gcount() == chunk, context_, ": cannot be read inside ", what, " (truncated?)");
      out += chunk;
      size -= static_cast<uint64_t>(chunk);
    }
  }

  std::string read_bytes_at(uint64_t offset, uint64_t size, std::string_view what) {
    std::string bytes(static_cast<size_t>(size), '\0');
    read_at(offset, bytes.data(), size, what);
    return bytes;
  }

  void read_central_directory() {
    TORCH_CHECK(file_size_ >= zip::kEndSize, context_, ": only ", file_size_,
                " bytes, too short for a zip archive (truncated?)");
    // The end record sits in the last 22 bytes plus a comment of at most 65535 bytes.
    const uint64_t tail_size = std::min<uint64_t>(file_size_, zip::kEndSize + 0xffff);
    const auto tail = read_bytes_at(file_size_ - tail_size, tail_size, "the end of the archive");
    const auto* bytes = reinterpret_cast<const unsigned char*>(tail.data());
    int64_t found = -1;
    for (auto i = static_cast<int64_t>(tail_size - zip::kEndSize); i >= 0; --i) {
      if (zip::read_le(bytes + i, 4) == zip::kEndSignature &&
          static_cast<uint64_t>(i) + zip::kEndSize + zip::read_le(bytes + i + 20, 2) == tail_size) {
        found = i;
        break;
      }
    }
    TORCH_CHECK(found >= 0, context_, ": no end-of-central-directory record (truncated?)");
    const unsigned char* end = bytes + found;
    const uint64_t end_offset = file_size_ - tail_size + static_cast<uint64_t>(found);
    TORCH_CHECK(zip::read_le(end + 4, 2) == 0 && zip::read_le(end + 6, 2) == 0, context_,
                ": a multi-volume zip archive, which ", writer_name(), " never writes");
    uint64_t count = zip::read_le(end + 10, 2);
    uint64_t directory_size = zip::read_le(end + 12, 4);
    uint64_t directory_offset = zip::read_le(end + 16, 4);
    uint64_t directory_end = end_offset;
    // zip64: a locator right before the end record points to the zip64 end record, whose fields replace
    // the 16- and 32-bit ones (writers set those to 0xffff... only when they overflow, or not at all).
    std::string locator;
    if (end_offset >= zip::kZip64LocatorSize) {
      locator =
          read_bytes_at(end_offset - zip::kZip64LocatorSize, zip::kZip64LocatorSize, "the zip64 locator");
    }
    const auto* l = reinterpret_cast<const unsigned char*>(locator.data());
    if (!locator.empty() && zip::read_le(l, 4) == zip::kZip64LocatorSignature) {
      const uint64_t locator_offset = end_offset - zip::kZip64LocatorSize;
      const uint64_t zip64_end_offset = zip::read_le(l + 8, 8);
      TORCH_CHECK(
          zip64_end_offset <= locator_offset && locator_offset - zip64_end_offset >= zip::kZip64EndSize,
          context_, ": zip64 end record out of place (corrupt?)");
      const auto zip64_end = read_bytes_at(zip64_end_offset, zip::kZip64EndSize, "the zip64 end record");
      const auto* z = reinterpret_cast<const unsigned char*>(zip64_end.data());
      TORCH_CHECK(zip::read_le(z, 4) == zip::kZip64EndSignature, context_,
                  ": zip64 end record missing where its locator points (corrupt?)");
      count = zip::read_le(z + 32, 8);
      directory_size = zip::read_le(z + 40, 8);
      directory_offset = zip::read_le(z + 48, 8);
      directory_end = zip64_end_offset;
    } else {
      TORCH_CHECK(count != 0xffff && directory_size != 0xffffffff && directory_offset != 0xffffffff, context_,
                  ": zip64 locator missing (truncated or corrupt?)");
    }
    TORCH_CHECK(count > 0, context_, ": an empty zip archive, with nothing ", writer_name(), " writes");
    TORCH_CHECK(directory_offset <= directory_end && directory_size <= directory_end - directory_offset,
                context_, ": the zip central directory lies outside the file (truncated or corrupt?)");
    TORCH_CHECK(count <= directory_size / zip::kCentralHeaderSize, context_, ": the zip archive claims ",
                count, " records, more than its central directory of ", directory_size,
                " bytes can hold (corrupt?)");
    directory_start_ = directory_offset;
    const auto directory = read_bytes_at(directory_offset, directory_size, "the zip central directory");
    parse_directory(directory, count);
  }

  void parse_directory(const std::string& directory, uint64_t count) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(directory.data());
    const uint64_t size = directory.size();
    uint64_t position = 0;
    records_.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      TORCH_CHECK(size - position >= zip::kCentralHeaderSize &&
                      zip::read_le(bytes + position, 4) == zip::kCentralHeaderSignature,
                  context_, ": zip central directory entry ", i, " is malformed (corrupt?)");
      const unsigned char* h = bytes + position;
      const auto flags = static_cast<uint16_t>(zip::read_le(h + 8, 2));
      ZipRecord record;
      record.method = static_cast<uint16_t>(zip::read_le(h + 10, 2));
      record.crc32 = static_cast<uint32_t>(zip::read_le(h + 16, 4));
      record.compressed_size = zip::read_le(h + 20, 4);
      record.size = zip::read_le(h + 24, 4);
      const uint64_t name_size = zip::read_le(h + 28, 2);
      const uint64_t extra_size = zip::read_le(h + 30, 2);
      const uint64_t comment_size = zip::read_le(h + 32, 2);
      record.local_header_offset = zip::read_le(h + 42, 4);
      const uint64_t entry_size = zip::kCentralHeaderSize + name_size + extra_size + comment_size;
      TORCH_CHECK(entry_size <= size - position, context_, ": zip central directory entry ", i,
                  " runs past the directory (corrupt?)");
      std::string full_name(reinterpret_cast<const char*>(h + zip::kCentralHeaderSize), name_size);
      read_zip64_extra(h + zip::kCentralHeaderSize + name_size, extra_size, record, full_name);
      position += entry_size;

      TORCH_CHECK((flags & 0x1) == 0, context_, ": record '", full_name, "' is encrypted");
      TORCH_CHECK(record.method == 0 || record.method == 8, context_, ": record '", full_name,
                  "' uses zip compression method ", record.method,
                  "; only stored (0) and deflated (8) are read");
      // Sizes are checked against the file here, before anyone allocates for them.
      TORCH_CHECK(record.local_header_offset < directory_start_ &&
                      record.compressed_size <= directory_start_ - record.local_header_offset,
                  context_, ": record '", full_name, "' claims ", record.compressed_size, " bytes at offset ",
                  record.local_header_offset, ", beyond the archive's data (truncated or corrupt?)");
      if (record.method == 0) {
        TORCH_CHECK(record.size == record.compressed_size, context_, ": stored record '", full_name,
                    "' claims ", record.size, " bytes but occupies ", record.compressed_size);
      } else {
        TORCH_CHECK(record.size / zip::kMaxDeflateRatio <= record.compressed_size + 1, context_, ": record '",
                    full_name, "' claims to inflate ", record.compressed_size, " bytes to ", record.size,
                    ", more than deflate can (corrupt or a zip bomb)");
      }

      if (layout_ == ZipLayout::flat) {
        record.name = full_name;
      } else {
        const auto slash = full_name.find('/');
        TORCH_CHECK(slash != std::string::npos && slash > 0, context_, ": record '", full_name,
                    "' is not inside a top-level folder, as torch.save writes every record");
        std::string folder = full_name.substr(0, slash);
        if (i == 0) folder_ = folder;
        TORCH_CHECK(folder == folder_, context_, ": records in two top-level folders ('", folder_, "' and '",
                    folder, "'); torch.save writes one");
        record.name = full_name.substr(slash + 1);
      }
      TORCH_CHECK(index_.emplace(record.name, records_.size()).second, context_, ": record '", full_name,
                  "' is stored twice");
      records_.push_back(std::move(record));
    }
  }

  // The zip64 extra field replaces, in this order, each of size, compressed size and offset that reads
  // 0xffffffff in the fixed header.
  void read_zip64_extra(const unsigned char* extra, uint64_t extra_size, ZipRecord& record,
                        const std::string& name) const {
    const bool need_size = record.size == 0xffffffff;
    const bool need_compressed = record.compressed_size == 0xffffffff;
    const bool need_offset = record.local_header_offset == 0xffffffff;
    if (!need_size && !need_compressed && !need_offset) return;
    uint64_t position = 0;
    while (extra_size - position >= 4) {
      const auto id = zip::read_le(extra + position, 2);
      const uint64_t length = zip::read_le(extra + position + 2, 2);
      TORCH_CHECK(length <= extra_size - position - 4, context_, ": record '", name,
                  "' has a malformed extra field");
      if (id == zip::kZip64ExtraId) {
        const unsigned char* field = extra + position + 4;
        uint64_t used = 0;
        auto take = [&](uint64_t& value) {
          TORCH_CHECK(length - used >= 8, context_, ": record '", name, "' has a short zip64 extra field");
          value = zip::read_le(field + used, 8);
          used += 8;
        };
        if (need_size) take(record.size);
        if (need_compressed) take(record.compressed_size);
        if (need_offset) take(record.local_header_offset);
        return;
      }
      position += 4 + length;
    }
    TORCH_CHECK(false, context_, ": record '", name, "' needs a zip64 extra field but has none (corrupt?)");
  }

  uint64_t data_offset_of(const ZipRecord& record) {
    const std::string what = "the local header of '" + record.name + "'";
    const auto header = read_bytes_at(record.local_header_offset, zip::kLocalHeaderSize, what);
    const auto* h = reinterpret_cast<const unsigned char*>(header.data());
    TORCH_CHECK(zip::read_le(h, 4) == zip::kLocalHeaderSignature, context_, ": record '", record.name,
                "' has no local header where the directory says (corrupt?)");
    const uint64_t data_offset = record.local_header_offset + zip::kLocalHeaderSize +
                                 zip::read_le(h + 26, 2) + zip::read_le(h + 28, 2);
    TORCH_CHECK(data_offset <= directory_start_ && record.compressed_size <= directory_start_ - data_offset,
                context_, ": record '", record.name, "' runs into the central directory (corrupt?)");
    return data_offset;
  }

  void inflate_record(const ZipRecord& record, uint64_t data_offset, void* destination) {
    z_stream stream{};
    TORCH_CHECK(inflateInit2(&stream, -MAX_WBITS) == Z_OK, context_, ": zlib failed to start inflating '",
                record.name, "'");
    std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&stream, inflateEnd);
    std::vector<char> input(static_cast<size_t>(std::clamp<uint64_t>(record.compressed_size, 1, 1 << 20)));
    uint64_t remaining_in = record.compressed_size;
    uint64_t offset = data_offset;
    auto* out = static_cast<Bytef*>(destination);
    uint64_t remaining_out = record.size;
    Bytef overflow = 0;  // once the declared size is reached, one more byte of output means a lie
    for (;;) {
      if (stream.avail_in == 0 && remaining_in > 0) {
        const uint64_t chunk = std::min<uint64_t>(remaining_in, input.size());
        read_at(offset, input.data(), chunk, record.name);
        offset += chunk;
        remaining_in -= chunk;
        stream.next_in = reinterpret_cast<Bytef*>(input.data());
        stream.avail_in = static_cast<uInt>(chunk);
      }
      const bool full = remaining_out == 0;
      stream.next_out = full ? &overflow : out;
      stream.avail_out = full ? 1 : static_cast<uInt>(std::min<uint64_t>(remaining_out, uint64_t{1} << 30));
      const uInt offered_out = stream.avail_out;
      const uInt offered_in = stream.avail_in;
      const int status = inflate(&stream, Z_NO_FLUSH);
      const uInt produced = offered_out - stream.avail_out;
      TORCH_CHECK(!full || produced == 0, context_, ": record '", record.name,
                  "' inflates to more than its declared ", record.size, " bytes (corrupt?)");
      out += full ? 0 : produced;
      remaining_out -= full ? 0 : produced;
      if (status == Z_STREAM_END) break;
      const bool progressed = produced > 0 || stream.avail_in < offered_in;
      TORCH_CHECK((status == Z_OK || status == Z_BUF_ERROR) && (progressed || remaining_in > 0), context_,
                  ": record '", record.name, "' does not inflate (corrupt?)",
                  stream.msg ? std::string(": ") + stream.msg : std::string());
      TORCH_CHECK(stream.avail_out == 0 || stream.avail_in > 0 || remaining_in > 0, context_, ": record '",
                  record.name, "' ends before its compressed data does (truncated?)");
    }
    TORCH_CHECK(remaining_out == 0, context_, ": record '", record.name, "' inflates to ",
                record.size - remaining_out, " bytes, not its declared ", record.size, " (corrupt?)");
  }

  const char* writer_name() const { return layout_ == ZipLayout::flat ? "numpy" : "torch.save"; }

  std::string context_;
  ZipLayout layout_;
  std::ifstream file_;
  uint64_t file_size_ = 0;
  uint64_t directory_start_ = 0;
  std::string folder_;
  std::vector<ZipRecord> records_;
  std::unordered_map<std::string, size_t> index_;
};

/// Writes a zip archive the way torch.save does: every record stored (no compression) under one top-level
/// folder, its data aligned to 64 bytes, zip64 records where sizes or offsets need them. Timestamps are
/// zero, so that the same records give the same bytes. Nothing is buffered beyond one header: record data
/// goes straight to the stream. An empty `folder` writes the records at the top level, as numpy's savez
/// does.
class ZipArchiveWriter {
 public:
  ZipArchiveWriter(std::ostream& out, std::string folder) : out_(out), folder_(std::move(folder)) {}

  /// Appends record `name` (relative to the folder) holding `size` bytes at `data`.
  void write_record(const std::string& name, const void* data, uint64_t size) {
    ZipRecord record;
    record.name = folder_.empty() ? name : folder_ + "/" + name;
    record.size = record.compressed_size = size;
    record.crc32 = zip::crc32_of(data, size);
    record.local_header_offset = position_;
    TORCH_CHECK(record.name.size() <= 0xffff, "zip record name too long: ", record.name);

    const bool zip64 = size >= 0xffffffff || position_ >= 0xffffffff;
    std::string extra;
    if (zip64) {
      zip::append_le(extra, zip::kZip64ExtraId, 2);
      zip::append_le(extra, 16, 2);
      zip::append_le(extra, size, 8);
      zip::append_le(extra, size, 8);
    }
    // Pad with an "FB" extra field so that the data starts on a 64-byte boundary, as PyTorch's writer does.
    const uint64_t unpadded = position_ + zip::kLocalHeaderSize + record.name.size() + extra.size();
    uint64_t padding = (zip::kAlignment - unpadded % zip::kAlignment) % zip::kAlignment;
    if (padding != 0 && padding < 4) padding += zip::kAlignment;
    if (padding != 0) {
      zip::append_le(extra, zip::kPaddingExtraId, 2);
      zip::append_le(extra, padding - 4, 2);
      extra.append(padding - 4, 'Z');
    }

    std::string header;
    zip::append_le(header, zip::kLocalHeaderSignature, 4);
    zip::append_le(header, zip64 ? 45 : 20, 2);  // version needed to extract
    zip::append_le(header, 0, 2);                // flags
    zip::append_le(header, 0, 2);                // method: stored
    zip::append_le(header, 0, 4);                // time and date
    zip::append_le(header, record.crc32, 4);
    zip::append_le(header, zip64 ? 0xffffffff : size, 4);
    zip::append_le(header, zip64 ? 0xffffffff : size, 4);
    zip::append_le(header, record.name.size(), 2);
    zip::append_le(header, extra.size(), 2);
    header += record.name;
    header += extra;
    put(header.data(), header.size());
    put(data, size);
    records_.push_back(std::move(record));
  }

  /// Writes the central directory and the end records. No record may be added afterwards.
  void finish() {
    const uint64_t directory_offset = position_;
    for (const auto& record : records_) {
      const bool big_size = record.size >= 0xffffffff;
      const bool big_offset = record.local_header_offset >= 0xffffffff;
      std::string extra;
      if (big_size || big_offset) {
        zip::append_le(extra, zip::kZip64ExtraId, 2);
        zip::append_le(extra, (big_size ? 16 : 0) + (big_offset ? 8 : 0), 2);
        if (big_size) {
          zip::append_le(extra, record.size, 8);
          zip::append_le(extra, record.compressed_size, 8);
        }
        if (big_offset) zip::append_le(extra, record.local_header_offset, 8);
      }
      std::string header;
      zip::append_le(header, zip::kCentralHeaderSignature, 4);
      zip::append_le(header, (big_size || big_offset) ? 45 : 20, 2);  // version made by
      zip::append_le(header, (big_size || big_offset) ? 45 : 20, 2);  // version needed to extract
      zip::append_le(header, 0, 2);
      zip::append_le(header, 0, 2);
      zip::append_le(header, 0, 4);
      zip::append_le(header, record.crc32, 4);
      zip::append_le(header, big_size ? 0xffffffff : record.compressed_size, 4);
      zip::append_le(header, big_size ? 0xffffffff : record.size, 4);
      zip::append_le(header, record.name.size(), 2);
      zip::append_le(header, extra.size(), 2);
      zip::append_le(header, 0, 2);  // comment
      zip::append_le(header, 0, 2);  // disk
      zip::append_le(header, 0, 2);  // internal attributes
      zip::append_le(header, 0, 4);  // external attributes
      zip::append_le(header, big_offset ? 0xffffffff : record.local_header_offset, 4);
      header += record.name;
      header += extra;
      put(header.data(), header.size());
    }
    const uint64_t directory_size = position_ - directory_offset;
    const uint64_t count = records_.size();
    const bool zip64 = count >= 0xffff || directory_size >= 0xffffffff || directory_offset >= 0xffffffff;
    std::string end;
    if (zip64) {
      const uint64_t zip64_end_offset = position_;
      zip::append_le(end, zip::kZip64EndSignature, 4);
      zip::append_le(end, zip::kZip64EndSize - 12, 8);
      zip::append_le(end, 45, 2);
      zip::append_le(end, 45, 2);
      zip::append_le(end, 0, 4);
      zip::append_le(end, 0, 4);
      zip::append_le(end, count, 8);
      zip::append_le(end, count, 8);
      zip::append_le(end, directory_size, 8);
      zip::append_le(end, directory_offset, 8);
      zip::append_le(end, zip::kZip64LocatorSignature, 4);
      zip::append_le(end, 0, 4);
      zip::append_le(end, zip64_end_offset, 8);
      zip::append_le(end, 1, 4);
    }
    zip::append_le(end, zip::kEndSignature, 4);
    zip::append_le(end, 0, 4);  // disk numbers
    zip::append_le(end, zip64 ? 0xffff : count, 2);
    zip::append_le(end, zip64 ? 0xffff : count, 2);
    zip::append_le(end, zip64 ? 0xffffffff : directory_size, 4);
    zip::append_le(end, zip64 ? 0xffffffff : directory_offset, 4);
    zip::append_le(end, 0, 2);  // comment
    put(end.data(), end.size());
  }

 private:
  void put(const void* data, uint64_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const auto chunk = static_cast<std::streamsize>(std::min<uint64_t>(size, uint64_t{1} << 30));
      out_.write(bytes, chunk);
      bytes += chunk;
      size -= static_cast<uint64_t>(chunk);
      position_ += static_cast<uint64_t>(chunk);
    }
  }

  std::ostream& out_;
  std::string folder_;
  uint64_t position_ = 0;
  std::vector<ZipRecord> records_;
};

}  // namespace diffpost::detail
