// The pickle interpreter on hostile input, from pickles built here opcode by opcode: nesting far deeper than
// any recursion could follow, tensor views whose offset, size or stride overflow, memo indices near 2^32,
// dicts with many keys, and failures of the storage loader. Each ends in one c10::Error naming the file and
// the problem, or in a correct parse.
#include <diffpost/io/detail/pickle.hpp>

#include "support/doctest_with_torch.hpp"
#include "support/error_of.hpp"

#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

using diffpost::detail::PickleGraph;
using diffpost::detail::PickleValue;
using diffpost::detail::PickleWriter;
using diffpost::detail::Unpickler;
using diffpost::testing::error_of;

namespace {

constexpr int kDepth = 150'000;  // the issue's reproducer: the recursive teardown overflowed the stack here

std::string protocol2(const std::string& body) {
  return std::string("\x80\x02", 2) + body;
}

PickleGraph parse(const std::string& bytes, diffpost::detail::StorageLoader loader = nullptr) {
  return Unpickler(bytes, std::move(loader), "checkpoint 'hostile.pt'").parse();
}

// A storage of `numel` float elements 0, 1, 2, ... for every persistent id.
torch::Tensor arange_storage(std::string_view, torch::ScalarType type, int64_t numel) {
  return torch::arange(numel, torch::TensorOptions().dtype(type));
}

// _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', numel), offset, size, stride, False,
// OrderedDict()) as torch.save writes it.
std::string tensor_pickle(int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                          const std::vector<int64_t>& stride) {
  PickleWriter writer;
  auto int_tuple = [&writer](const std::vector<int64_t>& values) {
    if (values.empty()) return writer.empty_tuple();
    if (values.size() > 3) writer.mark();
    for (auto v : values) writer.integer(v);
    writer.tuple(values.size());
  };
  writer.global("torch._utils", "_rebuild_tensor_v2");
  writer.mark();
  writer.mark();
  writer.string("storage");
  writer.global("torch", "FloatStorage");
  writer.string("0");
  writer.string("cpu");
  writer.integer(numel);
  writer.tuple(5);
  writer.binpersid();
  writer.integer(offset);
  int_tuple(size);
  int_tuple(stride);
  writer.boolean(false);
  writer.global("collections", "OrderedDict");
  writer.empty_tuple();
  writer.reduce();
  writer.tuple(6);
  writer.reduce();
  writer.stop();
  return writer.bytes();
}

std::string tensor_error(int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                         const std::vector<int64_t>& stride) {
  return error_of([&] { parse(tensor_pickle(numel, offset, size, stride), arange_storage); });
}

}  // namespace

TEST_CASE("lists and dicts nested 150,000 deep are parsed and freed without recursion") {
  SUBCASE("a list of a list of ... (EMPTY_LIST x n, APPEND x n-1)") {
    std::weak_ptr<PickleValue> innermost;
    {
      const auto graph = parse(protocol2(std::string(kDepth, ']') + std::string(kDepth - 1, 'a') + "."));
      auto value = graph.root();
      int depth = 1;
      while (value->items.size() == 1) {
        value = value->items[0];
        ++depth;
      }
      CHECK(value->items.empty());
      CHECK(depth == kDepth);
      innermost = value;
    }  // the graph goes here: 150,000 nested lists freed
    CHECK(innermost.expired());
  }
  SUBCASE("dicts nested through SETITEM: {'k': {'k': ...}}") {
    std::string body;
    for (int i = 0; i < kDepth; ++i) body += std::string("}X\x01\x00\x00\x00k", 7);
    body += 'N';
    body += std::string(kDepth, 's');
    const auto graph = parse(protocol2(body + "."));
    CHECK(graph.root()->is(PickleValue::Kind::Dict));
  }
  SUBCASE("a deep list dropped by POP while parsing, and one left behind by a parse that fails") {
    const auto popped = protocol2(std::string(kDepth, ']') + std::string(kDepth - 1, 'a') + "0N.");
    CHECK(parse(popped).root()->is(PickleValue::Kind::None));
    const auto unfinished = protocol2(std::string(kDepth, ']') + std::string(kDepth - 1, 'a'));
    CHECK(error_of([&] { parse(unfinished); }) ==
          "checkpoint 'hostile.pt': data.pkl ends early, at byte 300001 (truncated or not a pickle)");
  }
}

TEST_CASE("tensor offsets, sizes and strides are checked before any arithmetic on them") {
  // The control: a 2x3 view at offset 1 of a 7-element storage.
  const auto graph = parse(tensor_pickle(7, 1, {2, 3}, {3, 1}), arange_storage);
  REQUIRE(graph.root()->is(PickleValue::Kind::Tensor));
  CHECK(torch::equal(graph.root()->tensor, torch::arange(1, 7, torch::kFloat32).reshape({2, 3})));

  const auto int64_min = std::numeric_limits<int64_t>::min();
  const auto int64_max = std::numeric_limits<int64_t>::max();
  CHECK(
      tensor_error(7, -1, {2, 3}, {3, 1}) ==
      "checkpoint 'hostile.pt': tensor storage offset -1 is negative (corrupt file?); offsets count elements "
      "from the start of the storage");
  // INT64_MAX - offset overflowed here before the sign was checked.
  CHECK(tensor_error(7, int64_min, {2, 3}, {3, 1})
            .find("tensor storage offset -9223372036854775808 is negative") != std::string::npos);
  CHECK(tensor_error(7, 0, {2, -3}, {3, 1}) ==
        "checkpoint 'hostile.pt': tensor of size [2, -3] and stride [3, 1] has a negative entry (corrupt "
        "file?)");
  CHECK(tensor_error(7, 0, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0}) ==
        "checkpoint 'hostile.pt': tensor of size [1099511627776, 1099511627776] has more elements than int64 "
        "can "
        "count");
  // An empty view: its other sizes still make LibTorch compute contiguous strides.
  CHECK(tensor_error(7, 0, {0, int64_t{1} << 40, int64_t{1} << 40}, {1, 1, 1})
            .find("more elements than int64") != std::string::npos);
  CHECK(
      tensor_error(7, 0, {3}, {int64_t{1} << 62}) ==
      "checkpoint 'hostile.pt': tensor of size [3], stride [4611686018427387904] at offset 0 reaches outside "
      "its storage of 7 elements");
  CHECK(tensor_error(7, int64_max, {2}, {1})
            .find("at offset 9223372036854775807 reaches outside its storage") != std::string::npos);
  CHECK(tensor_error(7, 5, {2, 3}, {3, 1}).find("reaches outside its storage of 7 elements") !=
        std::string::npos);
  // Broadcast views (stride 0) of one element are fine, as torch.save writes them for expanded tensors.
  const auto expanded = parse(tensor_pickle(1, 0, {4, 5}, {0, 0}), arange_storage);
  CHECK(torch::equal(expanded.root()->tensor, torch::zeros({4, 5})));
}

TEST_CASE("memo indices near 2^32 cost one entry, and dicts with many keys stay linear") {
  // LONG_BINPUT 0xFFFFFFFF, POP, LONG_BINGET 0xFFFFFFFF: a map entry, not a table of 2^32 slots.
  const auto memo =
      parse(protocol2(std::string("Nr\xff\xff\xff\xff"
                                  "0j\xff\xff\xff\xff.",
                                  13)));
  CHECK(memo.root()->is(PickleValue::Kind::None));
  CHECK(error_of([] { parse(protocol2(std::string("j\xfe\xff\xff\xff.", 6))); }) ==
        "checkpoint 'hostile.pt': malformed pickle, memo entry 4294967294 read before written");

  // 200,000 distinct keys, then the first one again: Python keeps the first position and the last value.
  constexpr int kKeys = 200'000;
  PickleWriter writer;
  writer.empty_dict();
  writer.mark();
  for (int i = 0; i < kKeys; ++i) {
    writer.string("key." + std::to_string(i));
    writer.integer(i);
  }
  writer.string("key.0");
  writer.integer(-1);
  writer.setitems();
  writer.stop();
  const auto graph = parse(writer.bytes());
  const auto& dict = *graph.root();
  REQUIRE(dict.entries.size() == kKeys);
  CHECK(dict.entries.front().first->text == "key.0");
  CHECK(dict.entries.front().second->integer == -1);
  CHECK(dict.entries.back().first->text == "key.199999");
  CHECK(dict.get("key.12345")->integer == 12345);
}

TEST_CASE("every failure is a c10::Error naming the file, including a storage loader's own exceptions") {
  const auto bytes = tensor_pickle(7, 1, {2, 3}, {3, 1});
  auto throwing = [](std::string_view key, torch::ScalarType, int64_t) -> torch::Tensor {
    throw std::out_of_range("no record for storage " + std::string(key));
  };
  CHECK(error_of([&] { parse(bytes, throwing); }) ==
        "checkpoint 'hostile.pt': cannot read data.pkl at byte 99: no record for storage 0");
  CHECK(error_of([&] { parse(bytes, nullptr); }) ==
        "checkpoint 'hostile.pt': malformed pickle, a storage reference where none may be");
  // Opcodes that need more values than the stack holds, and a STOP with two values.
  CHECK(error_of([] { parse(protocol2("a.")); }) ==
        "checkpoint 'hostile.pt': malformed pickle, empty stack at byte 3");
  CHECK(error_of([] { parse(protocol2("(\x86.")); }) ==
        "checkpoint 'hostile.pt': malformed pickle, TUPLE2 at byte 3 with too few values on the stack");
  CHECK(error_of([] { parse(protocol2("NN.")); }) ==
        "checkpoint 'hostile.pt': malformed pickle, 2 values on the stack at STOP (expected 1)");
}

TEST_CASE(
    "Python 2 pickles: SHORT_BINSTRING is text and OrderedDict takes its items, as torch.load reads them") {
  // OrderedDict([['lin0', 1], ('b', 2)]) as Python 2 pickles it (lpips's weights/v0.1/*.pth are such files),
  // its keys as SHORT_BINSTRING ('U') and BINSTRING ('T'), then BUILD with {'_metadata': 3}.
  const std::string body = std::string(
                               "c"
                               "collections\nOrderedDict\n"
                               "]"
                               "("
                               "]"
                               "("
                               "U\x04lin0"
                               "K\x01"
                               "e"
                               "("
                               "T\x01\x00\x00\x00"
                               "b",
                               45) +
                           std::string(
                               "K\x02"
                               "t"
                               "e"
                               "\x85"
                               "R"
                               "}"
                               "U\x09_metadata"
                               "K\x03"
                               "s"
                               "b"
                               ".",
                               23);
  const auto graph = parse(protocol2(body));
  const auto& dict = *graph.root();
  REQUIRE(dict.is(PickleValue::Kind::Dict));
  CHECK(dict.ordered);
  REQUIRE(dict.entries.size() == 2);
  CHECK(dict.entries[0].first->is(PickleValue::Kind::String));
  CHECK(dict.entries[0].first->text == "lin0");
  CHECK(dict.entries[1].first->text == "b");
  CHECK(dict.get("b")->integer == 2);
  REQUIRE(dict.attributes != nullptr);
  CHECK(dict.attributes->get("_metadata")->integer == 3);
  // Anything but a list of pairs is refused.
  const std::string triple = std::string(
      "c"
      "collections\nOrderedDict\n"
      "]"
      "("
      "]"
      "("
      "K\x01"
      "K\x02"
      "K\x03"
      "e"
      "e"
      "\x85"
      "R"
      ".",
      40);
  CHECK(error_of([&] { parse(protocol2(triple)); }).find("not a [key, value] pair") != std::string::npos);
}
