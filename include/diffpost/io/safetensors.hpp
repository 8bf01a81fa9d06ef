// Reading and writing safetensors files (huggingface/safetensors): the weight format of the diffusers
// ecosystem, and the safe one, holding no pickle and so no code at all. An 8-byte little-endian header
// length, a JSON header {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {string: string}} padded
// with spaces to 8 bytes, then the raw little-endian tensor bytes. The header is parsed with nlohmann::json
// and checked whole - its length against a limit and the file, UTF-8, every dtype, shape, offset, size,
// overlap and hole, and the file's total size - before a single tensor is allocated; a malformed file is one
// c10::Error naming the file and the problem. `read_state_dict` (io/checkpoint.hpp) reads these files too.
// docs/checkpoints.md describes the format and the checks.
#pragma once

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/detail/safetensors_format.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// A safetensors file read into memory: its tensors (in the order of their data, which is the order the
/// writer chose) and its `__metadata__` (diffusers and safetensors' torch API write {"format": "pt"}).
struct SafetensorsFile {
  StateDict tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads the safetensors file at `path`. Tensors are created on the CPU in their stored dtype: F64, F32,
/// F16, BF16, I64, I32, I16, I8, U8 and BOOL (other dtypes of the format are refused by name). Refused, each
/// with one c10::Error naming the file and the problem, before anything is allocated: a file shorter than 8
/// bytes; a header length over 100,000,000 bytes (the format's limit) or past the end of the file; a header
/// that is not UTF-8, not JSON, not an object, or names a key twice; a tensor entry that is not exactly
/// {"dtype", "shape", "data_offsets"}, has an unknown dtype, a negative, fractional or overflowing size, or
/// offsets whose span differs from dtype size x element count; offsets that overlap, leave a hole, or reach
/// past the end of the file; bytes after the last tensor; `__metadata__` values that are not strings. BOOL
/// tensors must hold only 0 and 1.
inline SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  auto contents = detail::read_safetensors_file(path, "safetensors file " + detail::quoted(path));
  SafetensorsFile file{StateDict(detail::quoted(path)), std::move(contents.metadata)};
  for (auto& [name, tensor] : contents.tensors) file.tensors.insert(name, std::move(tensor));
  return file;
}

/// Writes `state` to `path` as a safetensors file, byte for byte as safetensors' own writer (`save_file`,
/// `serialize`) lays it out: tensors ordered by decreasing dtype alignment, then by name, their data
/// contiguous from offset 0; the header compact JSON with `__metadata__` first and each tensor as
/// {"dtype","shape","data_offsets"}, padded with spaces to a multiple of 8 bytes. `metadata` defaults to
/// {"format": "pt"}, what diffusers' `save_pretrained` writes. Tensors are written from the CPU, contiguous,
/// each with its own bytes (views of one storage become separate copies; safetensors has no sharing).
/// Names must be valid UTF-8; dtypes outside F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL are refused.
/// Written to a temporary sibling and renamed into place; an existing file is replaced only with
/// `SaveOptions{}.overwrite(true)`.
inline void save_safetensors(const StateDict& state, const std::filesystem::path& path,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                             const SaveOptions& options = {}) {
  const std::string context = "save_safetensors";
  std::vector<std::pair<const StateDict::Entry*, const detail::SafetensorsDtype*>> order;
  for (const auto& entry : state) {
    TORCH_CHECK(entry.second.defined(), context, ": tensor '", entry.first, "' is undefined");
    const auto* dtype = detail::safetensors_dtype(entry.second.scalar_type());
    TORCH_CHECK(
        dtype != nullptr, context, ": tensor '", entry.first, "' has dtype ", entry.second.scalar_type(),
        ", which safetensors files written by diffpost do not hold (F64, F32, F16, BF16, I64, I32, I16, "
        "I8, U8, BOOL); convert it first");
    TORCH_CHECK(detail::first_invalid_utf8(entry.first) == std::string_view::npos, context, ": tensor name '",
                entry.first, "' is not valid UTF-8");
    TORCH_CHECK(entry.first != "__metadata__", context,
                ": '__metadata__' is reserved and cannot name a tensor");
    order.emplace_back(&entry, dtype);
  }
  for (const auto& [key, value] : metadata) {
    TORCH_CHECK(detail::first_invalid_utf8(key) == std::string_view::npos &&
                    detail::first_invalid_utf8(value) == std::string_view::npos,
                context, ": metadata entry '", key, "' is not valid UTF-8");
  }
  // The reference writer's order (safetensors `prepare`): decreasing dtype alignment, then name.
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.second->rank != b.second->rank) return a.second->rank > b.second->rank;
    return a.first->first < b.first->first;
  });
  std::vector<detail::SafetensorsEntry> entries;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [entry, dtype] : order) {
    auto tensor = entry->second.detach().to(torch::kCPU).contiguous();
    const auto bytes = static_cast<uint64_t>(tensor.nbytes());
    entries.push_back({entry->first, dtype, tensor.sizes().vec(), offset, offset + bytes});
    offset += bytes;
    data.push_back(std::move(tensor));
  }
  const std::string header = detail::safetensors_header_json(entries, metadata);
  TORCH_CHECK(header.size() <= detail::kSafetensorsMaxHeaderBytes, context, ": the header would be ",
              header.size(), " bytes, over the format's limit of ", detail::kSafetensorsMaxHeaderBytes);
  detail::write_file_atomically(path, options.overwrite(), context,
                                "pass SaveOptions{}.overwrite(true) to replace it", [&](std::ostream& file) {
                                  std::array<char, 8> length{};
                                  uint64_t n = header.size();
                                  for (auto& byte : length) {
                                    byte = static_cast<char>(n & 0xFFu);
                                    n >>= 8;
                                  }
                                  file.write(length.data(), 8);
                                  file.write(header.data(), static_cast<std::streamsize>(header.size()));
                                  for (const auto& tensor : data)
                                    file.write(static_cast<const char*>(tensor.data_ptr()),
                                               static_cast<std::streamsize>(tensor.nbytes()));
                                });
}

/// Writes the parameters and buffers of `module` (in `state_dict(module)` order and names) as a safetensors
/// file; see save_safetensors for the layout, the metadata and the overwrite rule.
inline void save_safetensors(const torch::nn::Module& module, const std::filesystem::path& path,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                             const SaveOptions& options = {}) {
  save_safetensors(state_dict(module), path, metadata, options);
}

/// `save_safetensors(*holder, ...)` for module holders.
template <class Contained>
void save_safetensors(const torch::nn::ModuleHolder<Contained>& holder, const std::filesystem::path& path,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                      const SaveOptions& options = {}) {
  save_safetensors(*holder.ptr(), path, metadata, options);
}

}  // namespace diffpost
