// Private to diffpost: not part of the public API, may change without notice.
//
// A small, inert interpreter for the Python pickle stream that `torch.save` writes into `data.pkl`, and a
// writer for the same subset. It understands the opcodes of protocols 2 to 4 that a state dict, a plain dict
// of tensors or a training checkpoint uses, and it never executes anything: GLOBAL only records a name, and
// REDUCE / NEWOBJ / BUILD are interpreted for a short allow-list of callables (collections.OrderedDict,
// torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, ...). Every other callable yields an
// inert `Opaque` value that remembers the callable's name, so that a caller can reject it with an error that
// says what the file holds (for example a whole pickled model) instead of what went wrong deep inside a
// parser. BUILD, APPEND(S) and SETITEM(S) on such a value (an object's state, the items of a foreign list or
// dict subclass, as in Lightning checkpoints) leave it as it is.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace diffpost::detail {

struct PickleValue;
using PickleValuePtr = std::shared_ptr<PickleValue>;

/// One value of the unpickled object graph. Lists and dicts are shared through the memo, hence shared_ptr.
struct PickleValue {
  enum class Kind {
    None,
    Bool,
    Int,
    Float,
    String,
    Bytes,
    Tuple,
    List,
    Dict,
    Global,
    Storage,
    Tensor,
    Opaque
  };

  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double floating = 0.0;
  std::string text;                                                ///< String, Bytes, Global/Opaque name
  std::vector<PickleValuePtr> items;                               ///< Tuple, List
  std::vector<std::pair<PickleValuePtr, PickleValuePtr>> entries;  ///< Dict, in insertion order
  PickleValuePtr attributes;  ///< Dict: the state BUILD gave an OrderedDict (holds `_metadata`)
  bool ordered = false;       ///< Dict: built by collections.OrderedDict
  torch::Tensor tensor;       ///< Storage (flat, 1-D) and Tensor
  /// Dict: position in `entries` of each string key, kept by the Unpickler so that SETITEMS on a dict of
  /// n keys costs O(n), not O(n^2).
  std::unordered_map<std::string, size_t> string_keys;

  PickleValue() = default;
  PickleValue(const PickleValue&) = delete;
  PickleValue& operator=(const PickleValue&) = delete;

  /// Frees nested containers with a loop instead of recursion: a hostile pickle can nest lists 150,000 deep,
  /// and the implicit destructor would recurse once per level and overflow the stack.
  ~PickleValue() {
    if (items.empty() && entries.empty() && !attributes) return;
    std::vector<PickleValuePtr> pending;
    release_children(*this, pending);
    while (!pending.empty()) {
      PickleValuePtr value = std::move(pending.back());
      pending.pop_back();
      if (value.use_count() == 1) release_children(*value, pending);
    }  // `value` is destroyed here with no children left, so its own destructor returns at once
  }

  /// Moves the values `value` holds (items, entries, attributes) to `out`, leaving it empty.
  static void release_children(PickleValue& value, std::vector<PickleValuePtr>& out) {
    for (auto& item : value.items) out.push_back(std::move(item));
    value.items.clear();
    for (auto& [key, item] : value.entries) {
      out.push_back(std::move(key));
      out.push_back(std::move(item));
    }
    value.entries.clear();
    value.string_keys.clear();
    if (value.attributes) out.push_back(std::move(value.attributes));
  }

  static PickleValuePtr make(Kind kind) {
    auto value = std::make_shared<PickleValue>();
    value->kind = kind;
    return value;
  }
  static PickleValuePtr make_int(int64_t v) {
    auto value = make(Kind::Int);
    value->integer = v;
    return value;
  }
  static PickleValuePtr make_string(std::string s, Kind kind = Kind::String) {
    auto value = make(kind);
    value->text = std::move(s);
    return value;
  }

  bool is(Kind k) const { return kind == k; }

  /// Value stored under string key `key` in a Dict, or nullptr.
  PickleValuePtr get(std::string_view key) const {
    for (const auto& [k, v] : entries) {
      if (k->is(Kind::String) && k->text == key) return v;
    }
    return nullptr;
  }
};

/// The result of a parse: the top-level value, plus every list, tuple and dict the parse built. A corrupt or
/// hostile pickle can put a container inside itself (memo + APPEND), a shared_ptr cycle that would never be
/// freed; on destruction the graph empties all those containers, which breaks any cycle. Keep it alive while
/// using values reached from root().
class PickleGraph {
 public:
  PickleGraph(PickleValuePtr root, std::vector<std::weak_ptr<PickleValue>> containers)
      : root_(std::move(root)), containers_(std::move(containers)) {}
  PickleGraph(PickleGraph&&) noexcept = default;
  PickleGraph& operator=(PickleGraph&&) = delete;
  PickleGraph(const PickleGraph&) = delete;
  PickleGraph& operator=(const PickleGraph&) = delete;
  ~PickleGraph() { clear_containers(containers_); }

  [[nodiscard]] const PickleValuePtr& root() const { return root_; }

  static void clear_containers(const std::vector<std::weak_ptr<PickleValue>>& containers) {
    std::vector<PickleValuePtr> released;
    for (const auto& weak : containers) {
      if (auto value = weak.lock()) PickleValue::release_children(*value, released);
    }
  }  // `released` frees the values here; none holds another any more, so nothing recurses

 private:
  PickleValuePtr root_;
  std::vector<std::weak_ptr<PickleValue>> containers_;
};

/// Human-readable kind of a value, for error messages ("a tuple", "an object built by argparse.Namespace").
inline std::string describe(const PickleValue& value) {
  using K = PickleValue::Kind;
  switch (value.kind) {
    case K::None:
      return "None";
    case K::Bool:
      return "a bool";
    case K::Int:
      return "an int";
    case K::Float:
      return "a float";
    case K::String:
      return "a string";
    case K::Bytes:
      return "a bytes object";
    case K::Tuple:
      return "a tuple";
    case K::List:
      return "a list";
    case K::Dict:
      return value.ordered ? "an OrderedDict" : "a dict";
    case K::Global:
      return "the Python global " + value.text;
    case K::Storage:
      return "a torch storage";
    case K::Tensor:
      return "a tensor";
    case K::Opaque:
      return "an object built by " + value.text;
  }
  return "an unknown value";
}

/// Element type of a `torch.<Name>Storage` global, or nullopt when the name is not a supported storage class.
inline std::optional<torch::ScalarType> storage_scalar_type(std::string_view global_name) {
  static const auto known = std::to_array<std::pair<std::string_view, torch::ScalarType>>({
      {"torch.FloatStorage", torch::kFloat32},
      {"torch.DoubleStorage", torch::kFloat64},
      {"torch.HalfStorage", torch::kFloat16},
      {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kInt64},
      {"torch.IntStorage", torch::kInt32},
      {"torch.ShortStorage", torch::kInt16},
      {"torch.CharStorage", torch::kInt8},
      {"torch.ByteStorage", torch::kUInt8},
      {"torch.BoolStorage", torch::kBool},
      {"torch.ComplexFloatStorage", torch::kComplexFloat},
      {"torch.ComplexDoubleStorage", torch::kComplexDouble},
  });
  for (const auto& [name, type] : known) {
    if (name == global_name) return type;
  }
  return std::nullopt;
}

/// Name of the `torch.<Name>Storage` class Python uses for a dtype (inverse of storage_scalar_type).
inline std::string storage_class_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32:
      return "FloatStorage";
    case torch::kFloat64:
      return "DoubleStorage";
    case torch::kFloat16:
      return "HalfStorage";
    case torch::kBFloat16:
      return "BFloat16Storage";
    case torch::kInt64:
      return "LongStorage";
    case torch::kInt32:
      return "IntStorage";
    case torch::kInt16:
      return "ShortStorage";
    case torch::kInt8:
      return "CharStorage";
    case torch::kUInt8:
      return "ByteStorage";
    case torch::kBool:
      return "BoolStorage";
    case torch::kComplexFloat:
      return "ComplexFloatStorage";
    case torch::kComplexDouble:
      return "ComplexDoubleStorage";
    default:
      break;
  }
  TORCH_CHECK(false, "save_checkpoint: tensors of dtype ", type,
              " have no torch.*Storage class in the checkpoint format; convert them first (e.g. to float32)");
}

/// Turns the persistent id of a storage, ('storage', torch.FloatStorage, key, location, numel), into a flat
/// 1-D tensor holding that storage's elements. Supplied by the container reader (zip or legacy file).
using StorageLoader =
    std::function<torch::Tensor(std::string_view key, torch::ScalarType type, int64_t numel)>;

/// The interpreter. `context` names the file in every error.
class Unpickler {
 public:
  Unpickler(std::string_view data, StorageLoader load_storage, std::string context)
      : data_(data), load_storage_(std::move(load_storage)), context_(std::move(context)) {}
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  /// After a failed parse, frees what was built so far (it may hold reference cycles).
  ~Unpickler() { PickleGraph::clear_containers(containers_); }

  /// Bytes consumed so far; after parse(), the length of the pickle (legacy files hold several in a row).
  size_t position() const noexcept { return position_; }

  /// Interprets the stream up to STOP and returns the top-level object with the containers it owns. Every
  /// failure is a c10::Error that names the file (`context`) and the byte where it happened.
  PickleGraph parse() {
    try {
      return interpret();
    } catch (const c10::Error&) {
      throw;
    } catch (const std::bad_alloc&) {
      TORCH_CHECK(false, context_, ": out of memory at byte ", position_, " of data.pkl (", data_.size(),
                  " bytes; corrupt or hostile pickle?)");
    } catch (const std::exception& e) {
      TORCH_CHECK(false, context_, ": cannot read data.pkl at byte ", position_, ": ", e.what());
    }
  }

 private:
  PickleGraph interpret() {
    while (true) {
      const size_t opcode_position = position_;
      const auto opcode = static_cast<uint8_t>(read_byte());
      switch (opcode) {
        case 0x80:
          read_byte();
          break;  // PROTO n
        case 0x95:
          read_bytes(8);
          break;     // FRAME: length prefix of a protocol-4 frame, data follows inline
        case '.': {  // STOP
          TORCH_CHECK(stack_.size() == 1 && marks_.empty(), context_, ": malformed pickle, ", stack_.size(),
                      " values on the stack at STOP (expected 1)");
          return {stack_.back(), std::move(containers_)};  // the graph owns the containers now
        }
        case '(':
          marks_.push_back(stack_.size());
          break;  // MARK
        case '0':
          pop();
          break;  // POP
        case '1':
          pop_to_mark();
          break;  // POP_MARK
        case '2':
          push(top());
          break;  // DUP
        case 'N':
          push(PickleValue::make(PickleValue::Kind::None));
          break;
        case 0x88:
        case 0x89: {  // NEWTRUE, NEWFALSE
          auto value = PickleValue::make(PickleValue::Kind::Bool);
          value->boolean = opcode == 0x88;
          push(value);
          break;
        }
        case 'K':
          push(PickleValue::make_int(static_cast<int64_t>(read_uint(1))));
          break;  // BININT1
        case 'M':
          push(PickleValue::make_int(static_cast<int64_t>(read_uint(2))));
          break;  // BININT2
        case 'J':
          push(PickleValue::make_int(static_cast<int32_t>(read_uint(4))));
          break;  // BININT
        case 0x8a:
          push(PickleValue::make_int(read_long(read_uint(1))));
          break;  // LONG1
        case 0x8b:
          push(PickleValue::make_int(read_long(read_uint(4))));
          break;     // LONG4
        case 'G': {  // BINFLOAT: big-endian IEEE double
          uint64_t bits = 0;
          for (char c : read_bytes(8)) bits = (bits << 8) | static_cast<uint8_t>(c);
          auto value = PickleValue::make(PickleValue::Kind::Float);
          std::memcpy(&value->floating, &bits, sizeof(bits));
          push(value);
          break;
        }
        case 'X':
          push(PickleValue::make_string(std::string(read_bytes(read_uint(4)))));
          break;  // BINUNICODE
        case 0x8c:
          push(PickleValue::make_string(std::string(read_bytes(read_uint(1)))));
          break;  // SHORT_BINUNICODE
        case 0x8d:
          push(PickleValue::make_string(std::string(read_bytes(read_uint(8)))));
          break;  // BINUNICODE8
        // Python 2's str: torch.load reads it as text (encoding='utf-8'), which legacy files written by
        // Python 2 need (their keys, storage types and `_metadata` are all SHORT_BINSTRING).
        case 'T':
          push(PickleValue::make_string(std::string(read_bytes(read_uint(4)))));
          break;  // BINSTRING (protocol 1, Python 2)
        case 'U':
          push(PickleValue::make_string(std::string(read_bytes(read_uint(1)))));
          break;  // SHORT_BINSTRING
        case 'B':
          push(PickleValue::make_string(std::string(read_bytes(read_uint(4))), PickleValue::Kind::Bytes));
          break;  // BINBYTES
        case 'C':
          push(PickleValue::make_string(std::string(read_bytes(read_uint(1))), PickleValue::Kind::Bytes));
          break;  // SHORT_BINBYTES
        case 0x8e:
          push(PickleValue::make_string(std::string(read_bytes(read_uint(8))), PickleValue::Kind::Bytes));
          break;  // BINBYTES8
        case ')':
          push(container(PickleValue::Kind::Tuple));
          break;  // EMPTY_TUPLE
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
          const size_t n = opcode - 0x84;
          TORCH_CHECK(stack_.size() >= n + floor(), context_, ": malformed pickle, TUPLE", n, " at byte ",
                      opcode_position, " with too few values on the stack");
          auto tuple = container(PickleValue::Kind::Tuple);
          tuple->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          push(tuple);
          break;
        }
        case 't': {  // TUPLE
          auto tuple = container(PickleValue::Kind::Tuple);
          tuple->items = pop_to_mark();
          push(tuple);
          break;
        }
        case ']':
          push(container(PickleValue::Kind::List));
          break;     // EMPTY_LIST
        case 'l': {  // LIST
          auto list = container(PickleValue::Kind::List);
          list->items = pop_to_mark();
          push(list);
          break;
        }
        case 'a': {  // APPEND
          auto value = pop();
          if (top()->is(PickleValue::Kind::Opaque)) break;  // a foreign list subclass: stays inert
          expect(top(), PickleValue::Kind::List, "APPEND")->items.push_back(value);
          break;
        }
        case 'e': {  // APPENDS
          auto values = pop_to_mark();
          if (top()->is(PickleValue::Kind::Opaque)) break;
          auto& list = expect(top(), PickleValue::Kind::List, "APPENDS")->items;
          list.insert(list.end(), values.begin(), values.end());
          break;
        }
        case '}':
          push(container(PickleValue::Kind::Dict));
          break;     // EMPTY_DICT
        case 'd': {  // DICT
          auto dict = container(PickleValue::Kind::Dict);
          set_items(*dict, pop_to_mark());
          push(dict);
          break;
        }
        case 's': {  // SETITEM
          auto value = pop();
          auto key = pop();
          // A foreign dict subclass (NEWOBJ then SETITEMS, e.g. Lightning's AttributeDict or a
          // collections.defaultdict) stays an inert placeholder: its items are dropped, never interpreted.
          if (top()->is(PickleValue::Kind::Opaque)) break;
          set_items(*expect(top(), PickleValue::Kind::Dict, "SETITEM"), {key, value});
          break;
        }
        case 'u': {  // SETITEMS
          auto values = pop_to_mark();
          if (top()->is(PickleValue::Kind::Opaque)) break;
          set_items(*expect(top(), PickleValue::Kind::Dict, "SETITEMS"), values);
          break;
        }
        case 'q':
          memo_[read_uint(1)] = top();
          break;  // BINPUT
        case 'r':
          memo_[read_uint(4)] = top();
          break;  // LONG_BINPUT
        case 0x94:
          memo_[memo_.size()] = top();
          break;  // MEMOIZE
        case 'h':
          push(memo_get(read_uint(1)));
          break;  // BINGET
        case 'j':
          push(memo_get(read_uint(4)));
          break;     // LONG_BINGET
        case 'c': {  // GLOBAL "module\nname\n"
          auto global = read_line();
          global += '.';
          global += read_line();
          push(PickleValue::make_string(std::move(global), PickleValue::Kind::Global));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop();
          auto module = pop();
          TORCH_CHECK(module->is(PickleValue::Kind::String) && name->is(PickleValue::Kind::String), context_,
                      ": malformed pickle, STACK_GLOBAL at byte ", opcode_position, " without two strings");
          push(PickleValue::make_string(module->text + "." + name->text, PickleValue::Kind::Global));
          break;
        }
        case 'Q': {  // BINPERSID
          auto pid = pop();
          push(load_persistent(*pid));
          break;
        }
        case 'R': {  // REDUCE
          auto args = pop();
          auto callable = pop();
          push(reduce(*callable, *args));
          break;
        }
        case 0x81: {  // NEWOBJ cls.__new__(cls, *args)
          auto args = pop();
          auto cls = pop();
          push(reduce(*cls, *args));
          break;
        }
        case 'b': {  // BUILD
          auto state = pop();
          build(top(), state);
          break;
        }
        default:
          TORCH_CHECK(
              false, context_, ": unsupported pickle opcode 0x", hex(opcode), " at byte ", opcode_position,
              " of data.pkl; diffpost reads the subset of pickle that torch.save uses for state dicts");
      }
    }
  }

  static std::string hex(uint8_t byte) {
    static const char* digits = "0123456789abcdef";
    return {digits[byte >> 4], digits[byte & 15]};
  }

  char read_byte() {
    TORCH_CHECK(position_ < data_.size(), context_, ": data.pkl ends early, at byte ", position_,
                " (truncated or not a pickle)");
    return data_[position_++];
  }
  std::string_view read_bytes(uint64_t n) {
    TORCH_CHECK(n <= data_.size() - position_, context_, ": data.pkl ends early, ", n,
                " bytes wanted at byte ", position_, " of ", data_.size(), " (truncated or not a pickle)");
    auto bytes = data_.substr(position_, n);
    position_ += n;
    return bytes;
  }
  uint64_t read_uint(int n) {  // little-endian unsigned
    uint64_t value = 0;
    auto bytes = read_bytes(n);
    for (int i = n - 1; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[i]);
    return value;
  }
  int64_t read_long(uint64_t n) {  // little-endian two's complement of n bytes
    TORCH_CHECK(n <= 8, context_, ": integer of ", n, " bytes in data.pkl does not fit in 64 bits");
    if (n == 0) return 0;
    auto bytes = read_bytes(n);
    uint64_t value = 0;
    for (int i = static_cast<int>(n) - 1; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[i]);
    if (n < 8 && (static_cast<uint8_t>(bytes[n - 1]) & 0x80)) value |= ~uint64_t{0} << (8 * n);
    return static_cast<int64_t>(value);
  }
  std::string read_line() {
    auto end = data_.find('\n', position_);
    TORCH_CHECK(end != std::string_view::npos, context_, ": data.pkl ends inside a GLOBAL name");
    std::string line(data_.substr(position_, end - position_));
    position_ = end + 1;
    return line;
  }

  // Lists, tuples and dicts are tracked so that cycles among them can be broken (see PickleGraph).
  PickleValuePtr container(PickleValue::Kind kind) {
    auto value = PickleValue::make(kind);
    containers_.push_back(value);
    return value;
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(PickleValuePtr value) { stack_.push_back(std::move(value)); }
  const PickleValuePtr& top() const {
    TORCH_CHECK(stack_.size() > floor(), context_, ": malformed pickle, empty stack at byte ", position_);
    return stack_.back();
  }
  PickleValuePtr pop() {
    auto value = top();
    stack_.pop_back();
    return value;
  }
  std::vector<PickleValuePtr> pop_to_mark() {
    TORCH_CHECK(!marks_.empty(), context_, ": malformed pickle, no MARK before byte ", position_);
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<PickleValuePtr> values(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return values;
  }
  PickleValuePtr memo_get(uint64_t index) const {
    auto found = memo_.find(index);
    TORCH_CHECK(found != memo_.end(), context_, ": malformed pickle, memo entry ", index,
                " read before written");
    return found->second;
  }
  const PickleValuePtr& expect(const PickleValuePtr& value, PickleValue::Kind kind,
                               const char* opcode) const {
    TORCH_CHECK(value->is(kind), context_, ": malformed pickle, ", opcode, " applied to ", describe(*value),
                " at byte ", position_);
    return value;
  }
  void set_items(PickleValue& dict, const std::vector<PickleValuePtr>& flat) {
    TORCH_CHECK(flat.size() % 2 == 0, context_, ": malformed pickle, odd number of values for a dict");
    for (size_t i = 0; i < flat.size(); i += 2) {
      // Python semantics: assigning an existing key replaces the value in place.
      if (flat[i]->is(PickleValue::Kind::String)) {
        const auto [position, inserted] = dict.string_keys.emplace(flat[i]->text, dict.entries.size());
        if (!inserted) {
          dict.entries[position->second].second = flat[i + 1];
          continue;
        }
      }
      dict.entries.emplace_back(flat[i], flat[i + 1]);
    }
  }

  // ('storage', torch.FloatStorage, key, location, numel[, view_metadata]) as torch.save's persistent_id
  // writes it.
  PickleValuePtr load_persistent(const PickleValue& pid) {
    using K = PickleValue::Kind;
    TORCH_CHECK(load_storage_ != nullptr, context_,
                ": malformed pickle, a storage reference where none may be");
    TORCH_CHECK(pid.is(K::Tuple) && pid.items.size() >= 5 && pid.items[0]->is(K::String) &&
                    pid.items[0]->text == "storage",
                context_, ": persistent id is ", describe(pid),
                ", expected ('storage', torch.<T>Storage, key, location, numel) as torch.save writes it");
    const auto& type = *pid.items[1];
    const auto& key = *pid.items[2];
    const auto& numel = *pid.items[4];
    TORCH_CHECK(type.is(K::Global), context_, ": storage type is ", describe(type),
                ", expected torch.<T>Storage");
    auto scalar_type = storage_scalar_type(type.text);
    TORCH_CHECK(
        scalar_type.has_value(), context_, ": storage class ", type.text,
        " is not supported (supported: Float, Double, Half, BFloat16, Long, Int, Short, Char, Byte, Bool, "
        "ComplexFloat, ComplexDouble storages)");
    TORCH_CHECK(key.is(K::String) && numel.is(K::Int), context_, ": malformed storage persistent id");
    TORCH_CHECK(numel.integer >= 0, context_, ": storage '", key.text, "' has a negative size");
    TORCH_CHECK(pid.items.size() == 5 || pid.items[5]->is(K::None), context_,
                ": storage views (legacy view_metadata) are not supported");
    auto cache_key = key.text;
    auto found = storages_.find(cache_key);
    if (found == storages_.end()) {
      // Several tensors may share one storage (views, tied weights): load it once, hand out views of it.
      auto storage = PickleValue::make(K::Storage);
      storage->tensor = load_storage_(key.text, *scalar_type, numel.integer);
      found = storages_.emplace(cache_key, storage).first;
    }
    TORCH_CHECK(found->second->tensor.scalar_type() == *scalar_type, context_, ": storage '", key.text,
                "' is used with two different dtypes");
    return found->second;
  }

  std::vector<int64_t> int_tuple(const PickleValue& value, const char* what) const {
    TORCH_CHECK(value.is(PickleValue::Kind::Tuple), context_, ": tensor ", what, " is ", describe(value),
                ", expected a tuple of ints");
    std::vector<int64_t> ints;
    for (const auto& item : value.items) {
      TORCH_CHECK(item->is(PickleValue::Kind::Int), context_, ": tensor ", what, " holds ", describe(*item));
      ints.push_back(item->integer);
    }
    return ints;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, ...): a strided view of the storage. The
  // numbers come from the file and may be anything, so each is checked before it is used in arithmetic.
  PickleValuePtr rebuild_tensor(const PickleValue& args) {
    using K = PickleValue::Kind;
    TORCH_CHECK(args.is(K::Tuple) && args.items.size() >= 4, context_, ": _rebuild_tensor arguments are ",
                describe(args), ", expected (storage, offset, size, stride, ...)");
    const auto& storage = *args.items[0];
    TORCH_CHECK(storage.is(K::Storage), context_, ": tensor built from ", describe(storage),
                ", not a storage");
    TORCH_CHECK(args.items[1]->is(K::Int), context_, ": tensor storage offset is ", describe(*args.items[1]));
    const int64_t offset = args.items[1]->integer;
    auto size = int_tuple(*args.items[2], "size");
    auto stride = int_tuple(*args.items[3], "stride");
    TORCH_CHECK(size.size() == stride.size(), context_, ": tensor size ", c10::IntArrayRef(size),
                " and stride ", c10::IntArrayRef(stride), " differ in length");
    const int64_t numel = storage.tensor.numel();
    TORCH_CHECK(offset >= 0, context_, ": tensor storage offset ", offset,
                " is negative (corrupt file?); offsets count elements from the start of the storage");
    bool empty = false;
    for (size_t d = 0; d < size.size(); ++d) {
      TORCH_CHECK(size[d] >= 0 && stride[d] >= 0, context_, ": tensor of size ", c10::IntArrayRef(size),
                  " and stride ", c10::IntArrayRef(stride), " has a negative entry (corrupt file?)");
      empty = empty || size[d] == 0;
    }
    // The view's element count (and LibTorch's contiguous strides for an empty one) must fit in int64, bytes
    // included.
    const auto element_size = static_cast<int64_t>(storage.tensor.element_size());
    int64_t elements = 1;
    for (int64_t s : size) {
      const int64_t factor = std::max<int64_t>(s, 1);
      TORCH_CHECK(elements <= std::numeric_limits<int64_t>::max() / element_size / factor, context_,
                  ": tensor of size ", c10::IntArrayRef(size), " has more elements than int64 can count");
      elements *= factor;
    }
    // The view must stay inside its storage: offset + sum((size-1)*stride) < numel.
    int64_t last = offset;
    for (size_t d = 0; d < size.size() && !empty; ++d) {
      if (stride[d] == 0) continue;
      // Overflow-safe form of last += (size - 1) * stride (a corrupt file may hold any numbers).
      TORCH_CHECK(size[d] - 1 <= (std::numeric_limits<int64_t>::max() - last) / stride[d], context_,
                  ": tensor of size ", c10::IntArrayRef(size), ", stride ", c10::IntArrayRef(stride),
                  " at offset ", offset, " reaches outside its storage of ", numel, " elements");
      last += (size[d] - 1) * stride[d];
    }
    TORCH_CHECK(empty || last < numel, context_, ": tensor of size ", c10::IntArrayRef(size), ", stride ",
                c10::IntArrayRef(stride), " at offset ", offset, " reaches outside its storage of ", numel,
                " elements");
    auto tensor = PickleValue::make(K::Tensor);
    tensor->tensor = empty ? torch::empty(size, storage.tensor.options())
                           : storage.tensor.as_strided(size, stride, offset);
    return tensor;
  }

  PickleValuePtr reduce(const PickleValue& callable, const PickleValue& args) {
    using K = PickleValue::Kind;
    if (callable.is(K::Global)) {
      const auto& name = callable.text;
      if (name == "collections.OrderedDict") {
        // Python 3 pickles OrderedDict() and then SETITEMS; Python 2 passes the items, OrderedDict([[key,
        // value], ...]) (its OrderedDict.__reduce__), as in the legacy files torch wrote under Python 2.
        TORCH_CHECK(args.is(K::Tuple) && args.items.size() <= 1, context_, ": OrderedDict built with ",
                    describe(args), "; expected OrderedDict() or OrderedDict([[key, value], ...])");
        auto dict = container(K::Dict);
        dict->ordered = true;
        if (!args.items.empty()) {
          const auto& pairs = *args.items[0];
          TORCH_CHECK(pairs.is(K::List), context_, ": OrderedDict built from ", describe(pairs),
                      ", expected a list of [key, value] pairs");
          std::vector<PickleValuePtr> flat;
          flat.reserve(2 * pairs.items.size());
          for (const auto& pair : pairs.items) {
            TORCH_CHECK((pair->is(K::List) || pair->is(K::Tuple)) && pair->items.size() == 2, context_,
                        ": OrderedDict built from a list holding ", describe(*pair),
                        ", not a [key, value] pair");
            flat.push_back(pair->items[0]);
            flat.push_back(pair->items[1]);
          }
          set_items(*dict, flat);
        }
        return dict;
      }
      if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
        return rebuild_tensor(args);
      }
      if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
        // nn.Parameter(data, requires_grad): the data is all a state dict needs.
        TORCH_CHECK(args.is(K::Tuple) && !args.items.empty() && args.items[0]->is(K::Tensor), context_,
                    ": _rebuild_parameter without a tensor");
        return args.items[0];
      }
    }
    // Anything else is recorded, never called.
    return PickleValue::make_string(
        callable.is(K::Global) || callable.is(K::Opaque) ? callable.text : describe(callable), K::Opaque);
  }

  void build(const PickleValuePtr& object, const PickleValuePtr& state) {
    using K = PickleValue::Kind;
    if (object->is(K::Dict) && object->ordered) {
      object->attributes = state;  // OrderedDict.__dict__, e.g. {'_metadata': ...}
      return;
    }
    if (object->is(K::Opaque)) return;  // stays inert
    TORCH_CHECK(false, context_, ": malformed pickle, BUILD applied to ", describe(*object));
  }

  std::string_view data_;
  StorageLoader load_storage_;
  std::string context_;
  size_t position_ = 0;
  std::vector<std::weak_ptr<PickleValue>> containers_;
  std::vector<PickleValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValuePtr> memo_;
  std::unordered_map<std::string, PickleValuePtr> storages_;
};

/// Writes the pickle subset torch.save emits (protocol 2), opcode by opcode.
class PickleWriter {
 public:
  PickleWriter() { bytes_ += "\x80\x02"; }  // PROTO 2

  const std::string& bytes() const { return bytes_; }

  void mark() { bytes_ += '('; }
  void stop() { bytes_ += '.'; }
  void empty_tuple() { bytes_ += ')'; }
  void empty_dict() { bytes_ += '}'; }
  void setitem() { bytes_ += 's'; }
  void setitems() { bytes_ += 'u'; }
  void reduce() { bytes_ += 'R'; }
  void build() { bytes_ += 'b'; }
  void binpersid() { bytes_ += 'Q'; }
  void boolean(bool value) { bytes_ += value ? '\x88' : '\x89'; }

  /// Smallest integer opcode for `value`, as Python's pickler chooses it.
  void integer(int64_t value) {
    if (value >= 0 && value < 256) {
      bytes_ += 'K';
      put_le(static_cast<uint64_t>(value), 1);
    } else if (value >= 0 && value < 65536) {
      bytes_ += 'M';
      put_le(static_cast<uint64_t>(value), 2);
    } else if (value >= INT32_MIN && value <= INT32_MAX) {
      bytes_ += 'J';
      put_le(static_cast<uint64_t>(static_cast<uint32_t>(static_cast<int32_t>(value))), 4);
    } else {
      // LONG1: minimal little-endian two's complement.
      std::string digits;
      auto v = static_cast<uint64_t>(value);
      for (int i = 0; i < 8; ++i) digits += static_cast<char>((v >> (8 * i)) & 0xff);
      while (digits.size() > 1) {
        const auto last = static_cast<uint8_t>(digits.back());
        const auto prev = static_cast<uint8_t>(digits[digits.size() - 2]);
        if ((last == 0x00 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80)))
          digits.pop_back();
        else
          break;
      }
      bytes_ += '\x8a';
      put_le(digits.size(), 1);
      bytes_ += digits;
    }
  }

  /// A str. With a non-empty `identity`, later strings with the same identity are a BINGET of the first (what
  /// Python's pickler does for the very same string object, e.g. an interned literal); otherwise a new value.
  void string(const std::string& value, const std::string& identity = "") {
    if (!identity.empty()) {
      if (auto found = memo_.find("s:" + identity); found != memo_.end()) return get(found->second);
    }
    bytes_ += 'X';
    put_le(value.size(), 4);
    bytes_ += value;
    if (!identity.empty())
      put("s:" + identity);
    else
      put_anonymous();
  }

  /// Closes a tuple of `size` items: TUPLE1-3 for short ones, TUPLE (after a MARK) for longer ones; memoized.
  void tuple(size_t size) {
    if (size >= 1 && size <= 3)
      bytes_ += static_cast<char>(0x84 + size);
    else
      bytes_ += 't';
    put_anonymous();
  }

  /// GLOBAL module name, memoized.
  void global(const std::string& module, const std::string& name) {
    const std::string memo_key = "g:" + module + "." + name;
    if (auto found = memo_.find(memo_key); found != memo_.end()) return get(found->second);
    bytes_ += 'c';
    bytes_ += module;
    bytes_ += '\n';
    bytes_ += name;
    bytes_ += '\n';
    put(memo_key);
  }

  /// Memoizes the value on top of the stack without a name (keeps memo numbering like Python's pickler).
  void put_anonymous() { put_index(next_memo_++); }

 private:
  void put_le(uint64_t value, int n) {
    for (int i = 0; i < n; ++i) bytes_ += static_cast<char>((value >> (8 * i)) & 0xff);
  }
  void put(const std::string& key) {
    memo_[key] = next_memo_;
    put_index(next_memo_++);
  }
  void put_index(uint64_t index) {
    if (index < 256) {
      bytes_ += 'q';
      put_le(index, 1);
    } else {
      bytes_ += 'r';
      put_le(index, 4);
    }
  }
  void get(uint64_t index) {
    if (index < 256) {
      bytes_ += 'h';
      put_le(index, 1);
    } else {
      bytes_ += 'j';
      put_le(index, 4);
    }
  }

  std::string bytes_;
  std::unordered_map<std::string, uint64_t> memo_;
  uint64_t next_memo_ = 0;
};

}  // namespace diffpost::detail
