// Reading and writing PyTorch checkpoints in the format the published diffusion checkpoints use
// (`torch.save(model.state_dict(), path)`: a zip archive holding `<archive>/data.pkl`, one record
// `<archive>/data/<key>` per storage and `<archive>/version`), without Python and without LibTorch's
// `torch::pickle_load`, which in LibTorch 1.13 rejects the `collections.OrderedDict` such files hold.
// The pickle is interpreted by a small inert stack machine (io/detail/pickle.hpp) that never executes
// anything. See docs/checkpoints.md for the format, the supported variants and the errors.
#pragma once

#include <torch/torch.h>

#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/detail/pickle.hpp>
#include <diffpost/io/detail/safetensors_format.hpp>
#include <diffpost/io/detail/zip_archive.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace diffpost {

/// An ordered list of (name, tensor) pairs with lookup by name: what `model.state_dict()` is in Python. Keeps
/// the file's order (which is the order Python's `state_dict()` walks the modules in), the per-module
/// `_metadata` versions that torch.save stores alongside, and a description of where it came from (the file
/// and, for a nested checkpoint, the key) for error messages. Tensors read from a file live on the CPU in the
/// file's dtype; tensors that shared a storage in the file share it here too.
class StateDict {
 public:
  using Entry = std::pair<std::string, torch::Tensor>;

  StateDict() = default;
  explicit StateDict(std::string origin) : origin_(std::move(origin)) {}

  /// Appends `name`; a name can appear only once.
  void insert(std::string name, torch::Tensor tensor) {
    TORCH_CHECK(!contains(name), "StateDict: key '", name, "' inserted twice", origin_suffix());
    index_.emplace(name, entries_.size());
    entries_.emplace_back(std::move(name), std::move(tensor));
  }

  bool contains(const std::string& name) const { return index_.contains(name); }

  /// The tensor stored under `name`, or nullptr.
  const torch::Tensor* find(const std::string& name) const {
    auto found = index_.find(name);
    return found == index_.end() ? nullptr : &entries_[found->second].second;
  }

  /// The tensor stored under `name`; throws c10::Error naming the key when it is absent.
  const torch::Tensor& at(const std::string& name) const {
    const auto* tensor = find(name);
    TORCH_CHECK(tensor != nullptr, "StateDict: no key '", name, "'", origin_suffix(), " (it has ", size(),
                " keys)");
    return *tensor;
  }

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  auto begin() const { return entries_.begin(); }
  auto end() const { return entries_.end(); }
  const std::vector<Entry>& entries() const { return entries_; }

  /// The names in order.
  std::vector<std::string> keys() const {
    std::vector<std::string> names;
    names.reserve(entries_.size());
    for (const auto& [name, tensor] : entries_) names.push_back(name);
    return names;
  }

  /// Total number of elements over all tensors (the parameter count when only parameters are stored).
  int64_t numel() const {
    int64_t total = 0;
    for (const auto& [name, tensor] : entries_) total += tensor.numel();
    return total;
  }

  /// Where the entries came from, e.g. "'/models/ffhq_10m.pt'" or "'ckpt.pt' (key 'ema')"; empty if built in
  /// memory.
  const std::string& origin() const { return origin_; }

  /// Per-module versions from the file's `_metadata` (module prefix -> `version`), in file order. torch.save
  /// stores them so that `load_state_dict` can upgrade old layouts; save_checkpoint writes them back.
  std::vector<std::pair<std::string, int64_t>>& module_versions() { return module_versions_; }
  const std::vector<std::pair<std::string, int64_t>>& module_versions() const { return module_versions_; }

 private:
  std::string origin_suffix() const { return origin_.empty() ? "" : " in " + origin_; }

  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
  std::string origin_;
  std::vector<std::pair<std::string, int64_t>> module_versions_;
};

/// How `read_state_dict` finds the state dict inside a file. `key` selects an entry of a top-level dict
/// (e.g. "ema" in a training checkpoint holding both "model" and "ema"); when empty, the file's top-level
/// dict is used if it maps names to tensors, else the one entry among "state_dict", "model_state_dict",
/// "model", "ema", "ema_model", "net" that holds such a dict.
///
/// `prefix` selects one sub-module of the state dict: only the entries whose names start with it are kept,
/// with the prefix removed (e.g. "model.diffusion_model." for the UNet of a CompVis LDM checkpoint, whose
/// names then read "input_blocks.0.0.weight"; the trailing dot may be left out). Strict: a prefix that no
/// entry has is refused with the sub-module prefixes the file does have.
///
/// `ema` (needs `prefix`) takes the exponential-moving-average copy that CompVis ldm's LitEma keeps next to
/// the model: for prefix "<root>.<path>." its entries are "<root>_ema." + "<path>.<name>" with the dots
/// removed (e.g. "model_ema.diffusion_modelinput_blocks00weight" for
/// "model.diffusion_model.input_blocks.0.0.weight"). They are mapped back to the model's names; entries
/// LitEma does not track (buffers) keep the model's own values, as ldm's `ema_scope` does. Refused when the
/// file has no EMA entries for the prefix, when an EMA entry has another shape or matches no model entry, and
/// when two model names lose their dots to the same EMA name.
struct ReadOptions {
  TORCH_ARG(std::string, key) = "";
  TORCH_ARG(std::string, prefix) = "";
  TORCH_ARG(bool, ema) = false;
};

/// The sub-module of `state` under `prefix`, or its EMA copy (defined below, see ReadOptions).
inline StateDict select_module(const StateDict& state, std::string prefix, bool ema = false);

/// Keys tried, in order, when a checkpoint nests its state dict inside a bigger dict and no key was chosen.
inline const std::vector<std::string>& nested_state_dict_keys() {
  static const std::vector<std::string> keys = {"state_dict", "model_state_dict", "model",
                                                "ema",        "ema_model",        "net"};
  return keys;
}

namespace detail {

inline std::string quoted(const std::filesystem::path& path) {
  std::string text(1, '\'');  // built piecewise: GCC 12 warns falsely on "'" + string + "'"
  text += path.string();
  text += '\'';
  return text;
}

// A dict whose keys are all strings and whose values are all tensors (empty included).
inline bool is_tensor_dict(const PickleValue& value) {
  if (!value.is(PickleValue::Kind::Dict)) return false;
  return std::all_of(value.entries.begin(), value.entries.end(), [](const auto& entry) {
    return entry.first->is(PickleValue::Kind::String) && entry.second->is(PickleValue::Kind::Tensor);
  });
}

inline std::string list_dict_keys(const PickleValue& dict, size_t limit = 12) {
  std::string names;
  size_t shown = 0;
  for (const auto& [key, value] : dict.entries) {
    if (shown == limit) {
      names += ", ... (" + std::to_string(dict.entries.size() - limit) + " more)";
      break;
    }
    if (shown++) names += ", ";
    names += key->is(PickleValue::Kind::String) ? "'" + key->text + "'" : describe(*key);
    names += ": " + describe(*value);
  }
  return names.empty() ? "none" : names;
}

// The dict of tensors the user asked for, following ReadOptions (see there).
inline const PickleValue& select_state_dict(const PickleValue& top, const ReadOptions& options,
                                            const std::string& context, std::string& chosen_key) {
  using K = PickleValue::Kind;
  TORCH_CHECK(!top.is(K::Opaque), context, " holds ", describe(top),
              ", not a state dict (a whole pickled model or custom object, e.g. torch.save(model)); "
              "diffpost never executes pickled code. In Python, re-save it with "
              "torch.save(model.state_dict(), path)");
  TORCH_CHECK(top.is(K::Dict), context, " holds ", describe(top), ", not a dict of tensors (a state dict)");
  if (!options.key().empty()) {
    auto nested = top.get(options.key());
    TORCH_CHECK(nested != nullptr, context, " has no key '", options.key(),
                "'; its keys: ", list_dict_keys(top));
    TORCH_CHECK(is_tensor_dict(*nested), context, " key '", options.key(), "' holds ", describe(*nested),
                ", not a dict of tensors; its entries: ",
                nested->is(K::Dict) ? list_dict_keys(*nested) : std::string("-"));
    chosen_key = options.key();
    return *nested;
  }
  if (is_tensor_dict(top)) return top;
  std::vector<std::string> candidates;
  for (const auto& key : nested_state_dict_keys()) {
    if (auto nested = top.get(key); nested && is_tensor_dict(*nested)) candidates.push_back(key);
  }
  TORCH_CHECK(!candidates.empty(), context,
              " is a dict but neither a state dict (name -> tensor) nor a checkpoint nesting one under ",
              c10::Join(", ", nested_state_dict_keys()), "; its keys: ", list_dict_keys(top),
              ". Choose the entry with ReadOptions{}.key(\"...\")");
  TORCH_CHECK(candidates.size() == 1, context, " holds several state dicts (keys '",
              c10::Join("', '", candidates), "'); choose one with ReadOptions{}.key(\"", candidates.back(),
              "\")");
  chosen_key = candidates.front();
  return *top.get(chosen_key);
}

inline std::vector<std::pair<std::string, int64_t>> read_module_versions(const PickleValue& dict) {
  using K = PickleValue::Kind;
  std::vector<std::pair<std::string, int64_t>> versions;
  if (!dict.attributes || !dict.attributes->is(K::Dict)) return versions;
  auto metadata = dict.attributes->get("_metadata");
  if (!metadata || !metadata->is(K::Dict)) return versions;
  for (const auto& [prefix, entry] : metadata->entries) {
    if (!prefix->is(K::String) || !entry->is(K::Dict)) continue;
    if (auto version = entry->get("version"); version && version->is(K::Int)) {
      versions.emplace_back(prefix->text, version->integer);
    }
  }
  return versions;
}

// First bytes of a legacy (pre-1.6, non-zip) torch.save file: PROTO 2 then LONG1 of its 10-byte magic number.
inline bool looks_like_legacy_torch_save(std::string_view head) {
  return head.size() >= 4 && head.substr(0, 4) == std::string_view("\x80\x02\x8a\x0a", 4);
}

// The StateDict that `top` (the unpickled file) holds, selected as ReadOptions says.
inline StateDict state_dict_from(const PickleGraph& graph, const std::filesystem::path& path,
                                 const ReadOptions& options, const std::string& context) {
  const auto& top = graph.root();
  std::string chosen_key;
  const auto& dict = select_state_dict(*top, options, context, chosen_key);
  StateDict state(quoted(path) + (chosen_key.empty() ? "" : " (key '" + chosen_key + "')"));
  for (const auto& [key, value] : dict.entries) state.insert(key->text, value->tensor);
  state.module_versions() = read_module_versions(dict);
  if (options.prefix().empty() && !options.ema()) return state;
  return select_module(state, options.prefix(), options.ema());
}

// The legacy (torch < 1.6) torch.save layout, one file of consecutive pickles: the magic number, the protocol
// version 1001, a sys_info dict, the object (storages as persistent ids), the sorted list of storage keys,
// then for each key an int64 element count followed by the raw little-endian elements.
inline StateDict read_legacy_torch_save(const std::filesystem::path& path, const ReadOptions& options,
                                        const std::string& context) {
  using K = PickleValue::Kind;
  std::ifstream file(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  TORCH_CHECK(!file.bad(), context, " cannot be read");
  std::string_view rest(bytes);

  static constexpr std::string_view magic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
  TORCH_CHECK(rest.substr(0, magic.size()) == magic, context,
              " starts like a legacy torch.save file but lacks its magic number");
  rest.remove_prefix(magic.size());
  auto next_pickle = [&](StorageLoader loader) {
    Unpickler unpickler(rest, std::move(loader), context + " (legacy format)");
    auto graph = unpickler.parse();
    rest.remove_prefix(unpickler.position());
    return graph;
  };
  const auto protocol_graph = next_pickle(nullptr);
  const auto& protocol = protocol_graph.root();
  TORCH_CHECK(protocol->is(K::Int) && protocol->integer == 1001, context,
              ": unknown legacy torch.save protocol version ", protocol->is(K::Int) ? protocol->integer : -1,
              " (expected 1001)");
  const auto sys_info_graph = next_pickle(nullptr);
  const auto& sys_info = sys_info_graph.root();
  if (auto little = sys_info->is(K::Dict) ? sys_info->get("little_endian") : nullptr; little) {
    TORCH_CHECK(little->is(K::Bool) && little->boolean, context, " was written on a big-endian machine");
  }
  // Storages come after the object: allocate them now, fill them once their bytes are reached.
  std::unordered_map<std::string, torch::Tensor> storages;
  const auto top_graph = next_pickle([&](std::string_view key, torch::ScalarType type, int64_t numel) {
    // The bytes must be in the file, which bounds what a corrupt element count can make us allocate.
    TORCH_CHECK(numel <= static_cast<int64_t>(bytes.size() / c10::elementSize(type)), context, ": storage '",
                key, "' claims ", numel, " elements of ", type,
                ", more than the file holds (truncated or corrupt?)");
    auto storage = torch::empty({numel}, torch::TensorOptions().dtype(type));
    storages.emplace(std::string(key), storage);
    return storage;
  });
  const auto keys_graph = next_pickle(nullptr);
  const auto& keys = keys_graph.root();
  TORCH_CHECK(keys->is(K::List), context, ": the legacy storage key list is ", describe(*keys));
  std::unordered_set<std::string> filled;
  for (const auto& key : keys->items) {
    TORCH_CHECK(key->is(K::String), context, ": a legacy storage key is ", describe(*key));
    auto found = storages.find(key->text);
    TORCH_CHECK(found != storages.end(), context, ": storage '", key->text, "' is stored but never used");
    TORCH_CHECK(filled.insert(key->text).second, context, ": storage '", key->text, "' is stored twice");
    auto& storage = found->second;
    TORCH_CHECK(rest.size() >= 8, context, " ends early (truncated?) before storage '", key->text, "'");
    int64_t numel = 0;
    std::memcpy(&numel, rest.data(), 8);
    rest.remove_prefix(8);
    const auto nbytes = static_cast<size_t>(storage.nbytes());
    TORCH_CHECK(numel == storage.numel(), context, ": storage '", key->text, "' holds ", numel,
                " elements but its tensors need ", storage.numel());
    TORCH_CHECK(rest.size() >= nbytes, context, " ends early (truncated?) inside storage '", key->text, "'");
    std::memcpy(storage.data_ptr(), rest.data(), nbytes);
    rest.remove_prefix(nbytes);
  }
  TORCH_CHECK(filled.size() == storages.size(), context, ": ", storages.size() - filled.size(),
              " storages are used but not stored (truncated?)");
  return state_dict_from(top_graph, path, options, context);
}

}  // namespace detail

namespace detail {

inline std::string without_dots(std::string_view name) {
  std::string text;
  text.reserve(name.size());
  for (char c : name)
    if (c != '.') text += c;
  return text;
}

// The module prefixes of `state`'s names, two levels deep ("model.diffusion_model.",
// "first_stage_model.encoder.", "model_ema."), in file order, for error messages.
inline std::string list_module_prefixes(const StateDict& state, size_t limit = 16) {
  std::vector<std::string> prefixes;
  std::unordered_set<std::string> seen;
  for (const auto& [name, tensor] : state) {
    const auto first = name.find('.');
    if (first == std::string::npos) continue;  // a top-level buffer such as "betas"
    const auto second = name.find('.', first + 1);
    const auto cut = second == std::string::npos ? first : second;
    auto prefix = name.substr(0, cut + 1);
    if (seen.insert(prefix).second) prefixes.push_back(std::move(prefix));
  }
  if (prefixes.empty()) return "none (all its names are top-level)";
  std::string text;
  for (size_t i = 0; i < prefixes.size() && i < limit; ++i) text += (i ? ", '" : "'") + prefixes[i] + "'";
  if (prefixes.size() > limit) text += ", ... (" + std::to_string(prefixes.size() - limit) + " more)";
  return text;
}

}  // namespace detail

/// The sub-module of `state` under `prefix` (with or without its trailing dot), names stripped of it, or with
/// `ema` its EMA copy in CompVis ldm's LitEma layout mapped back to those names: see ReadOptions for the
/// rules and the errors. Module versions (`_metadata`) under the prefix are kept, stripped. Tensors are
/// shared, not copied.
inline StateDict select_module(const StateDict& state, std::string prefix, bool ema) {
  const std::string where = state.origin().empty() ? "the state dict" : state.origin();
  TORCH_CHECK(!prefix.empty() || !ema,
              "select_module: the EMA copy (ema) is kept per sub-module; give the "
              "prefix of the module it averages, e.g. \"model.diffusion_model.\"");
  if (!prefix.empty() && prefix.back() != '.') prefix += '.';
  std::vector<std::pair<std::string, const torch::Tensor*>> selected;
  for (const auto& [name, tensor] : state) {
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0)
      selected.emplace_back(name.substr(prefix.size()), &tensor);
  }
  TORCH_CHECK(!selected.empty(), where, " has no sub-module '", prefix,
              "' (no entry starts with it); the "
              "sub-modules it has: ",
              detail::list_module_prefixes(state), ". Choose one of those as the prefix");
  StateDict result(where + " (prefix '" + prefix + "'" + (ema ? ", EMA weights" : "") + ")");
  for (const auto& [module, version] : state.module_versions()) {
    if (module + "." == prefix) {
      result.module_versions().emplace_back("", version);
    } else if (module.size() > prefix.size() && module.compare(0, prefix.size(), prefix) == 0) {
      result.module_versions().emplace_back(module.substr(prefix.size()), version);
    }
  }
  if (!ema) {
    for (const auto& [name, tensor] : selected) result.insert(name, *tensor);
    return result;
  }
  // LitEma (ldm/modules/ema.py) registers one buffer per parameter of the module it averages, named without
  // dots, next to its own `decay` and `num_updates`.
  const auto root_end = prefix.find('.');
  const std::string ema_root = prefix.substr(0, root_end) + "_ema.";
  const std::string ema_path = detail::without_dots(prefix.substr(root_end + 1));
  std::unordered_map<std::string, std::string> model_name_of;  // EMA name -> model name
  for (const auto& [name, tensor] : selected) {
    const auto ema_name = ema_root + ema_path + detail::without_dots(name);
    const auto [found, inserted] = model_name_of.emplace(ema_name, name);
    TORCH_CHECK(inserted, where, ": the EMA copy cannot tell '", prefix, found->second, "' from '", prefix,
                name, "': both are '", ema_name,
                "' once their dots are removed (LitEma's naming); load the model's "
                "own weights (ema false)");
  }
  std::unordered_map<std::string, const torch::Tensor*> ema_tensor_of;  // model name -> EMA tensor
  std::vector<std::string> unmatched;
  for (const auto& [name, tensor] : state) {
    if (name.compare(0, ema_root.size(), ema_root) != 0 || name == ema_root + "decay" ||
        name == ema_root + "num_updates")
      continue;
    if (name.compare(ema_root.size(), ema_path.size(), ema_path) != 0) continue;  // another module's EMA
    auto found = model_name_of.find(name);
    if (found == model_name_of.end()) {
      unmatched.push_back(name);
      continue;
    }
    const auto& model_tensor = state.at(prefix + found->second);
    TORCH_CHECK(tensor.sizes() == model_tensor.sizes(), where, ": EMA entry '", name, "' has shape ",
                tensor.sizes(), " but '", prefix, found->second, "' has ", model_tensor.sizes());
    ema_tensor_of.emplace(found->second, &tensor);
  }
  TORCH_CHECK(unmatched.empty(), where, ": ", unmatched.size(), " EMA entries match no entry under '", prefix,
              "', e.g. '", unmatched.empty() ? "" : unmatched.front(),
              "'; the EMA copy does not belong to this module");
  TORCH_CHECK(!ema_tensor_of.empty(), where, " has no EMA copy of '", prefix, "' (no entry '", ema_root,
              ema_path, "...', the LitEma layout of CompVis ldm); the sub-modules it has: ",
              detail::list_module_prefixes(state), ". Load the model's own weights (ema false)");
  for (const auto& [name, tensor] : selected) {
    auto found = ema_tensor_of.find(name);
    result.insert(name, found == ema_tensor_of.end() ? *tensor : *found->second);
  }
  return result;
}

/// The diffusion schedule buffers of `state` (CompVis ldm's `register_schedule`: betas, alphas_cumprod,
/// alphas_cumprod_prev, sqrt_alphas_cumprod, ..., posterior_mean_coef2), the top-level entries of those names
/// that the file has, in file order; empty when it has none.
inline StateDict schedule_buffers(const StateDict& state) {
  static const std::unordered_set<std::string> names{"betas",
                                                     "alphas_cumprod",
                                                     "alphas_cumprod_prev",
                                                     "sqrt_alphas_cumprod",
                                                     "sqrt_one_minus_alphas_cumprod",
                                                     "log_one_minus_alphas_cumprod",
                                                     "sqrt_recip_alphas_cumprod",
                                                     "sqrt_recipm1_alphas_cumprod",
                                                     "posterior_variance",
                                                     "posterior_log_variance_clipped",
                                                     "posterior_mean_coef1",
                                                     "posterior_mean_coef2"};
  StateDict buffers(state.origin());
  for (const auto& [name, tensor] : state)
    if (names.contains(name)) buffers.insert(name, tensor);
  return buffers;
}

/// The schedule stored in `state` (its `betas`, read as float64; a 1-D tensor of values in (0, 1]), or
/// nullopt when it has no `betas`. When the file also has `alphas_cumprod`, it must equal the cumulative
/// product of 1 - betas to the precision it was stored in (1e-5 relative in float32), else the file
/// contradicts itself and c10::Error says so.
inline std::optional<DiffusionSchedule> schedule_from_state_dict(const StateDict& state) {
  const auto* betas = state.find("betas");
  if (betas == nullptr) return std::nullopt;
  const std::string where = state.origin().empty() ? "the state dict" : state.origin();
  TORCH_CHECK(betas->dim() == 1 && betas->numel() > 0 && betas->is_floating_point(), where,
              ": 'betas' is a tensor of shape ", betas->sizes(), " and dtype ", betas->scalar_type(),
              ", not a 1-D float tensor of the schedule's betas");
  const auto betas64 = betas->to(torch::kFloat64).contiguous();
  std::vector<double> values(betas64.data_ptr<double>(), betas64.data_ptr<double>() + betas64.numel());
  DiffusionSchedule schedule(values);
  if (const auto* stored = state.find("alphas_cumprod")) {
    TORCH_CHECK(stored->sizes() == betas->sizes(), where, ": 'alphas_cumprod' has shape ", stored->sizes(),
                " but 'betas' has ", betas->sizes());
    const auto expected = torch::cumprod(1 - betas64, 0);
    const auto error = (stored->to(torch::kFloat64) - expected).abs().max().item<double>();
    const double tolerance = stored->scalar_type() == torch::kFloat64 ? 1e-12 : 1e-5;
    TORCH_CHECK(error <= tolerance, where,
                ": 'alphas_cumprod' differs from the cumulative product of 1 - betas "
                "by up to ",
                error, " (more than ", tolerance, "); the file's schedule buffers contradict each other");
  }
  return schedule;
}

/// Reads the state dict stored in the PyTorch checkpoint at `path`, as written by
/// `torch.save(model.state_dict(), path)` (the zip format of torch >= 1.6, and the legacy format before it):
/// an OrderedDict with `_metadata`, a plain dict of tensors, or a dict nesting one of those under a key (see
/// ReadOptions); or a safetensors file (safetensors' `save_file`, diffusers' `save_pretrained`), recognised
/// by its `.safetensors` name or its header (io/safetensors.hpp has the format, its checks and its metadata).
/// Tensors are created on the CPU in their stored dtype (float32, float16, bfloat16, float64, int64, ...)
/// whatever device they were saved from; storage offsets, strides and storages shared between tensors are
/// preserved. Throws c10::Error naming the path and the problem when the file is missing, unreadable,
/// truncated, not a checkpoint, or does not hold a state dict.
inline StateDict read_state_dict(const std::filesystem::path& path, const ReadOptions& options = {}) {
  const std::string context = "checkpoint " + detail::quoted(path);
  std::error_code error;
  TORCH_CHECK(std::filesystem::exists(path, error), context, " does not exist");
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), context, " is not a regular file");
  {
    std::ifstream probe(path, std::ios::binary);
    TORCH_CHECK(probe.good(), context, " cannot be opened for reading");
    std::array<char, 9> head{};
    probe.read(head.data(), static_cast<std::streamsize>(head.size()));
    const std::string_view first(head.data(), static_cast<size_t>(probe.gcount()));
    TORCH_CHECK(!first.empty(), context, " is empty");
    if (detail::looks_like_legacy_torch_save(first)) {
      probe.close();
      return detail::read_legacy_torch_save(path, options, context);
    }
    if (first.substr(0, 4) != std::string_view("PK\x03\x04", 4) &&
        detail::looks_like_safetensors(path, first)) {
      probe.close();
      TORCH_CHECK(options.key().empty(), context,
                  " is a safetensors file, one flat dict of tensors; ReadOptions key '", options.key(),
                  "' selects an entry of a nested torch.save checkpoint and does not apply");
      auto contents = detail::read_safetensors_file(path, "safetensors file " + detail::quoted(path));
      StateDict state(detail::quoted(path));
      for (auto& [name, tensor] : contents.tensors) state.insert(name, std::move(tensor));
      return options.prefix().empty() && !options.ema()
                 ? state
                 : select_module(state, options.prefix(), options.ema());
    }
    TORCH_CHECK(first.substr(0, 4) == std::string_view("PK\x03\x04", 4), context,
                " is not a PyTorch checkpoint: it does not start like a zip archive (torch.save since 1.6 "
                "writes zip archives), a legacy torch.save file or a safetensors file (name it *.safetensors "
                "to have it read as one)");
  }

  std::optional<detail::ZipArchiveReader> opened;
  try {
    opened.emplace(path, context);
  } catch (const c10::Error& e) {
    std::string reason = e.what_without_backtrace();
    if (reason.rfind(context, 0) == 0) reason.erase(0, reason.find_first_not_of(": ", context.size()));
    TORCH_CHECK(false, context, " is not a readable PyTorch zip archive (truncated or corrupt?): ", reason);
  }
  auto& archive = *opened;
  TORCH_CHECK(archive.find("constants.pkl") == nullptr && archive.find("code/__torch__.py") == nullptr,
              context,
              " is a TorchScript archive (torch.jit.save), not a torch.save state dict; load it with "
              "TorchScriptScoreModel (diffpost/models/torchscript.hpp) or torch::jit::load");
  const auto* pickle_record = archive.find("data.pkl");
  TORCH_CHECK(pickle_record != nullptr, context,
              " is a zip archive without data.pkl, not a torch.save checkpoint");
  const std::string pickle = archive.read_string(*pickle_record);

  auto load_storage = [&](std::string_view key, torch::ScalarType type, int64_t numel) {
    const std::string name = "data/" + std::string(key);
    const auto* record = archive.find(name);
    TORCH_CHECK(record != nullptr, context, " lacks the record '", name, "' its data.pkl refers to");
    const auto element_size = static_cast<int64_t>(c10::elementSize(type));
    // Checked before allocating: the record's size was checked against the file when the archive was opened.
    TORCH_CHECK(
        numel >= 0 && static_cast<uint64_t>(numel) <= record->size / static_cast<uint64_t>(element_size),
        context, ": record '", name, "' holds ", record->size, " bytes, but its storage needs ", numel,
        " elements of ", type);
    auto bytes =
        torch::empty({static_cast<int64_t>(record->size)}, torch::TensorOptions().dtype(torch::kUInt8));
    archive.read(*record, bytes.data_ptr());
    return bytes.narrow(0, 0, numel * element_size).view(type);
  };

  detail::Unpickler unpickler(pickle, load_storage, context);
  return detail::state_dict_from(unpickler.parse(), path, options, context);
}

/// The state dict of `module` in the order Python's `state_dict()` uses (module by module, depth first, each
/// module's parameters before its buffers), with a `_metadata` version of 1 (torch.nn.Module's default) for
/// every module. The tensors are the module's own (no copy).
inline StateDict state_dict(const torch::nn::Module& module) {
  StateDict state;
  std::function<void(const torch::nn::Module&, const std::string&)> walk = [&](const torch::nn::Module& m,
                                                                               const std::string& prefix) {
    state.module_versions().emplace_back(prefix, 1);
    const std::string dotted = prefix.empty() ? "" : prefix + ".";
    // Undefined tensors (a C++ convolution without bias registers one) are not state, as in Python's None.
    for (const auto& item : m.named_parameters(false)) {
      if (item.value().defined()) state.insert(dotted + item.key(), item.value());
    }
    for (const auto& item : m.named_buffers(false)) {
      if (item.value().defined()) state.insert(dotted + item.key(), item.value());
    }
    for (const auto& child : m.named_children()) walk(*child.value(), dotted + child.key());
  };
  walk(module, "");
  return state;
}

/// Description of the configuration a file was made for, appended to load errors (e.g. one for the ADM UNet
/// that reads channel counts off the tensor shapes). Returns an empty string if
/// unsure.
using CheckpointDescriber = std::function<std::string(const StateDict&)>;

/// How `load_state_dict` matches a file to a model. `strict` (default true): every model parameter and buffer
/// must be in the file and every file entry in the model, as Python's `load_state_dict(strict=True)`. Shapes
/// must always match, strict or not. `describe_file` (optional) is called on failure and its text appended.
struct LoadOptions {
  TORCH_ARG(bool, strict) = true;
  TORCH_ARG(CheckpointDescriber, describe_file) = nullptr;
};

/// What `load_state_dict` did: the keys it copied, and (in non-strict mode) the ones it skipped.
struct LoadReport {
  std::vector<std::string> loaded;      ///< model keys filled from the file
  std::vector<std::string> missing;     ///< model keys absent from the file (non-strict mode only)
  std::vector<std::string> unexpected;  ///< file keys absent from the model (non-strict mode only)
};

namespace detail {

inline std::string shape_string(const torch::Tensor& tensor) {
  return c10::str(tensor.sizes());
}

inline void append_list(std::ostringstream& out, const char* title, const std::vector<std::string>& lines,
                        size_t limit = 10) {
  if (lines.empty()) return;
  out << "\n  " << title << " (" << lines.size() << "):";
  for (size_t i = 0; i < lines.size() && i < limit; ++i) out << "\n    " << lines[i];
  if (lines.size() > limit) out << "\n    ... and " << lines.size() - limit << " more";
}

}  // namespace detail

/// Copies the tensors of `state` into the parameters and buffers of `module` (matched by their dotted names),
/// converting each to the dtype and device of the model's tensor, under NoGradGuard. Nothing is copied unless
/// the whole file matches: on a mismatch it throws c10::Error that leads with the first mismatching key and
/// its shapes, then lists the mis-shaped keys (name, file shape, model shape), the missing and the unexpected
/// keys (ten of each, then a count), then the `describe_file` text. There is no silent random start.
inline LoadReport load_state_dict(torch::nn::Module& module, const StateDict& state,
                                  const LoadOptions& options = {}) {
  const StateDict model = diffpost::state_dict(module);
  std::vector<std::string> mis_shaped, missing, unexpected;
  std::string first_problem;
  for (const auto& [name, target] : model) {
    const auto* source = state.find(name);
    if (source == nullptr) {
      missing.push_back(name + " " + detail::shape_string(target));
      if (first_problem.empty() && options.strict()) {
        first_problem =
            "'" + name + "' (model shape " + detail::shape_string(target) + ") is missing from the file";
      }
    } else if (source->sizes() != target.sizes()) {
      mis_shaped.push_back(name + ": file " + detail::shape_string(*source) + ", model " +
                           detail::shape_string(target));
      if (first_problem.empty()) {
        first_problem = "'" + name + "' has shape " + detail::shape_string(*source) + " in the file but " +
                        detail::shape_string(target) + " in the model";
      }
    }
  }
  for (const auto& [name, tensor] : state) {
    if (!model.contains(name)) {
      unexpected.push_back(name + " " + detail::shape_string(tensor));
      if (first_problem.empty() && options.strict()) {
        first_problem =
            "'" + name + "' (file shape " + detail::shape_string(tensor) + ") is not in the model";
      }
    }
  }

  const bool fails = !mis_shaped.empty() || (options.strict() && (!missing.empty() || !unexpected.empty()));
  if (fails) {
    std::ostringstream message;
    message << "load_state_dict: "
            << (state.origin().empty() ? std::string("the state dict") : state.origin())
            << " does not match the model (" << state.size() << " tensors in the file, " << model.size()
            << " in the model). First mismatch: " << first_problem << ".";
    detail::append_list(message, "mis-shaped keys", mis_shaped);
    if (options.strict()) {
      detail::append_list(message, "missing keys", missing);
      detail::append_list(message, "unexpected keys", unexpected);
    }
    if (options.describe_file()) {
      try {
        if (auto description = options.describe_file()(state); !description.empty())
          message << "\n" << description;
      } catch (const std::exception& e) {
        message << "\n(could not describe the file: " << e.what() << ")";
      }
    }
    TORCH_CHECK(false, message.str());
  }

  LoadReport report;
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : model) {
    if (const auto* source = state.find(name)) {
      // Same TensorImpl as the module's parameter, so this writes into the model; copy_ converts
      // dtype/device.
      torch::Tensor destination = target;
      destination.copy_(*source);
      report.loaded.push_back(name);
    } else {
      report.missing.push_back(name);
    }
  }
  for (const auto& [name, tensor] : state) {
    if (!model.contains(name)) report.unexpected.push_back(name);
  }
  return report;
}

/// `load_state_dict(*holder, ...)` for module holders, so that `load_state_dict(unet, state)` works.
template <class Contained>
LoadReport load_state_dict(const torch::nn::ModuleHolder<Contained>& holder, const StateDict& state,
                           const LoadOptions& options = {}) {
  return load_state_dict(*holder.ptr(), state, options);
}

/// Reads the checkpoint at `path` and loads it into `module`: `load_state_dict(module, read_state_dict(path,
/// read_options), options)`. All errors name the path.
inline LoadReport load_checkpoint(torch::nn::Module& module, const std::filesystem::path& path,
                                  const LoadOptions& options = {}, const ReadOptions& read_options = {}) {
  return load_state_dict(module, read_state_dict(path, read_options), options);
}

/// `load_checkpoint(*holder, ...)` for module holders, so that `load_checkpoint(unet, "ffhq_10m.pt")` works.
template <class Contained>
LoadReport load_checkpoint(const torch::nn::ModuleHolder<Contained>& holder,
                           const std::filesystem::path& path, const LoadOptions& options = {},
                           const ReadOptions& read_options = {}) {
  return load_checkpoint(*holder.ptr(), path, options, read_options);
}

/// How checkpoints are written. `overwrite` (default false): replace an existing file at the target path;
/// without it, writing over an existing file throws and leaves the file alone. `key` (default empty): store
/// the state dict as the one entry of a top-level dict under this key, as a PyTorch Lightning `.ckpt` holds
/// it under "state_dict" (read back with ReadOptions{}.key(...) or, for the usual keys, automatically).
struct SaveOptions {
  TORCH_ARG(bool, overwrite) = false;
  TORCH_ARG(std::string, key) = "";
};

namespace detail {

// data.pkl for `state`, as torch.save(OrderedDict) writes it (protocol 2), and the storages it refers to:
// one per distinct storage (tensors sharing a storage keep sharing it), numbered "0", "1", ... in order of
// use.
struct SerializedStateDict {
  std::string pickle;
  std::vector<torch::Tensor> storages;  // flat, contiguous, CPU
};

inline SerializedStateDict serialize_state_dict(const StateDict& state, const std::string& top_key = "") {
  SerializedStateDict out;
  PickleWriter writer;
  std::unordered_map<const void*, size_t> storage_index;

  // Mirrors Python's pickler so that the bytes equal what torch.save writes: tuples of length 1-3 use
  // TUPLE1-3, longer ones MARK ... TUPLE, empty ones EMPTY_TUPLE (never memoized); dict items go in batches
  // of at most 1000, a batch of one as SETITEM; objects seen before (the same string or global) are a BINGET.
  auto int_tuple = [&writer](c10::IntArrayRef values) {
    if (values.empty()) return writer.empty_tuple();
    if (values.size() > 3) writer.mark();
    for (auto v : values) writer.integer(v);
    writer.tuple(values.size());
  };
  auto ordered_dict = [&writer] {
    writer.global("collections", "OrderedDict");
    writer.empty_tuple();
    writer.reduce();
    writer.put_anonymous();
  };
  auto batched_items = [&writer](size_t count, const std::function<void(size_t)>& write_item) {
    for (size_t begin = 0; begin < count; begin += 1000) {
      const size_t batch = std::min<size_t>(1000, count - begin);
      if (batch > 1) writer.mark();
      for (size_t i = begin; i < begin + batch; ++i) write_item(i);
      if (batch > 1)
        writer.setitems();
      else
        writer.setitem();
    }
  };

  if (!top_key.empty()) {  // {top_key: OrderedDict(...)}: the dict, then its one item
    writer.empty_dict();
    writer.put_anonymous();
    writer.string(top_key);
  }
  ordered_dict();
  const auto& entries = state.entries();
  batched_items(entries.size(), [&](size_t i) {
    const auto& name = entries[i].first;
    torch::Tensor tensor = entries[i].second.detach();
    const auto* impl = tensor.storage().unsafeGetStorageImpl();
    auto found = storage_index.find(impl);
    if (found == storage_index.end()) {
      const auto element_size = static_cast<int64_t>(tensor.element_size());
      const int64_t storage_numel = static_cast<int64_t>(tensor.storage().nbytes()) / element_size;
      auto flat = tensor.as_strided({storage_numel}, {1}, 0);
      found = storage_index.emplace(impl, out.storages.size()).first;
      out.storages.push_back(flat.to(torch::kCPU).contiguous());
    }
    const auto key = std::to_string(found->second);
    writer.string(name);
    writer.global("torch._utils", "_rebuild_tensor_v2");
    writer.mark();  // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    writer.mark();  // persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
    writer.string("storage", "storage");
    writer.global("torch", storage_class_name(tensor.scalar_type()));
    writer.string(key, "storage key " + key);
    writer.string("cpu", "cpu");
    writer.integer(out.storages[found->second].numel());
    writer.tuple(5);
    writer.binpersid();
    writer.integer(tensor.storage_offset());
    int_tuple(tensor.sizes());
    int_tuple(tensor.strides());
    writer.boolean(false);
    ordered_dict();
    writer.tuple(6);
    writer.reduce();
    writer.put_anonymous();
  });

  // BUILD state {'_metadata': OrderedDict(prefix -> {'version': v})}: the OrderedDict's attribute dict.
  writer.empty_dict();
  writer.put_anonymous();
  batched_items(1, [&](size_t) {
    writer.string("_metadata");
    ordered_dict();
    const auto& versions = state.module_versions();
    batched_items(versions.size(), [&](size_t i) {
      writer.string(versions[i].first);
      writer.empty_dict();
      writer.put_anonymous();
      batched_items(1, [&](size_t) {
        writer.string("version", "version");
        writer.integer(versions[i].second);
      });
    });
  });
  writer.build();
  if (!top_key.empty()) writer.setitem();
  writer.stop();
  out.pickle = writer.bytes();
  return out;
}

}  // namespace detail

/// Writes `state` to `path` in the format `torch.save(OrderedDict)` uses (zip archive `archive/` with
/// data.pkl, data/<key> and version), so that Python's `torch.load(path)` returns an OrderedDict and
/// `model.load_state_dict(torch.load(path))` works. Tensors are written from the CPU with their dtype,
/// offsets and strides; tensors sharing a storage keep sharing it. The file is written to a temporary sibling
/// and renamed into place, so a crash never leaves a half-written checkpoint; an existing file is replaced
/// only with `SaveOptions{}.overwrite(true)`.
inline void save_state_dict(const StateDict& state, const std::filesystem::path& path,
                            const SaveOptions& options = {}) {
  auto serialized = detail::serialize_state_dict(state, options.key());
  detail::write_file_atomically(
      path, options.overwrite(), "save_checkpoint", "pass SaveOptions{}.overwrite(true) to replace it",
      [&](std::ostream& file) {
        // Records as torch.save writes them: folder "archive" (PyTorch >= 1.13), file format version 3.
        detail::ZipArchiveWriter writer(file, "archive");
        writer.write_record("data.pkl", serialized.pickle.data(), serialized.pickle.size());
        for (size_t i = 0; i < serialized.storages.size(); ++i) {
          const auto& storage = serialized.storages[i];
          writer.write_record("data/" + std::to_string(i), storage.data_ptr(), storage.nbytes());
        }
        writer.write_record("version", "3\n", 2);
        writer.finish();
      });
}

/// Writes the parameters and buffers of `module` to `path` like Python's `torch.save(model.state_dict(),
/// path)` (see save_state_dict for the format and the overwrite rule).
inline void save_checkpoint(const torch::nn::Module& module, const std::filesystem::path& path,
                            const SaveOptions& options = {}) {
  save_state_dict(state_dict(module), path, options);
}

/// `save_checkpoint(*holder, ...)` for module holders.
template <class Contained>
void save_checkpoint(const torch::nn::ModuleHolder<Contained>& holder, const std::filesystem::path& path,
                     const SaveOptions& options = {}) {
  save_checkpoint(*holder.ptr(), path, options);
}

}  // namespace diffpost
