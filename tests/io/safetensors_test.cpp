// The safetensors reader and writer: round trips of every dtype, the reference writer's exact layout (a
// header written out by hand from the format's rules, and a file made by the reference's rules in Python,
// tests/data/safetensors/README.md), read_state_dict on safetensors files, and hostile files, each refused
// with one line naming the file and the problem before anything is allocated.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/safetensors.hpp>
#include <diffpost/models/adm_unet.hpp>

#include "support/error_of.hpp"
#include "support/file_bytes.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

using diffpost::testing::read_bytes;
using diffpost::testing::write_bytes;

namespace {

using diffpost::testing::error_of;
using diffpost::testing::TempDir;

const std::string kDataDir = std::string(DIFFPOST_TEST_DATA_DIR) + "/safetensors/";

std::string little_endian(uint64_t value) {
  std::string bytes(8, '\0');
  for (auto& byte : bytes) {
    byte = static_cast<char>(value & 0xFFu);
    value >>= 8;
  }
  return bytes;
}

// A file with the given header text and `data_bytes` bytes of data (values 0, 1, 2, ...).
std::string file_with(const std::string& header, size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i % 2);
  return little_endian(header.size()) + header + data;
}

// Writes `bytes` and returns the c10::Error message of reading them with read_safetensors.
std::string refusal(const TempDir& dir, const std::string& bytes) {
  const auto path = dir.file("hostile.safetensors");
  write_bytes(path, bytes);
  return error_of([&] { (void)diffpost::read_safetensors(path); });
}

// Every refusal is one line that names the file and contains `expected`.
void check_refused(const std::string& message, const std::string& expected) {
  CAPTURE(message);
  CHECK(message.find("hostile.safetensors'") != std::string::npos);
  CHECK(message.find(expected) != std::string::npos);
  CHECK(message.find('\n') == std::string::npos);
}

diffpost::StateDict every_dtype() {
  diffpost::StateDict state;
  state.insert("f32", torch::arange(6, torch::kFloat32).reshape({2, 3}) * 0.5);
  state.insert("f64", torch::arange(3, torch::kFloat64) - 1.25);
  state.insert("f16", torch::arange(4, torch::kFloat16) * 0.25);
  state.insert("bf16", torch::arange(4, torch::kBFloat16) * 2);
  state.insert("i64", torch::arange(-2, 2, torch::kInt64));
  state.insert("i32", torch::arange(5, torch::kInt32) * 1000);
  state.insert("i16", torch::arange(3, torch::kInt16));
  state.insert("i8", torch::arange(-3, 3, torch::kInt8));
  state.insert("u8", torch::arange(250, 256, torch::kInt64).to(torch::kUInt8));
  state.insert("bool", torch::tensor({true, false, true}));
  state.insert("scalar", torch::tensor(3.5));
  state.insert("empty", torch::zeros({0, 4}));
  state.insert("view", torch::arange(12, torch::kFloat32).reshape({3, 4}).t());  // not contiguous
  return state;
}

}  // namespace

TEST_CASE("save_safetensors then read_safetensors gives back every dtype, shape and value") {
  TempDir dir("safetensors");
  const auto state = every_dtype();
  diffpost::save_safetensors(state, dir.file("all.safetensors"));
  const auto file = diffpost::read_safetensors(dir.file("all.safetensors"));
  CHECK(file.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  REQUIRE(file.tensors.size() == state.size());
  for (const auto& [name, tensor] : state) {
    CAPTURE(name);
    const auto& read = file.tensors.at(name);
    CHECK((read.scalar_type() == tensor.scalar_type()));
    CHECK(read.sizes() == tensor.sizes());
    CHECK(torch::equal(read, tensor));
  }
  // The reference writer's order: decreasing dtype alignment, then name.
  CHECK(file.tensors.keys() == std::vector<std::string>{"i64", "f64", "empty", "f32", "scalar", "view", "i32",
                                                        "bf16", "f16", "i16", "i8", "u8", "bool"});
  // read_state_dict reads it too, with the same keys.
  CHECK(diffpost::read_state_dict(dir.file("all.safetensors")).keys() == file.tensors.keys());
  // The writer refuses to replace a file unless asked to.
  CHECK(error_of([&] {
          diffpost::save_safetensors(state, dir.file("all.safetensors"));
        }).find("already exists") != std::string::npos);
  diffpost::save_safetensors(state, dir.file("all.safetensors"), {}, diffpost::SaveOptions{}.overwrite(true));
  CHECK(diffpost::read_safetensors(dir.file("all.safetensors")).metadata.empty());
}

TEST_CASE("save_safetensors writes the reference writer's exact bytes") {
  TempDir dir("safetensors");
  SUBCASE("a header written out by hand from the format's rules") {
    diffpost::StateDict state;
    state.insert("w", torch::tensor({1.0F, 2.0F}));
    state.insert("b", torch::tensor({0.5}, torch::kFloat64));
    diffpost::save_safetensors(state, dir.file("two.safetensors"));
    // F64 before F32 (decreasing alignment), compact JSON, __metadata__ first, padded with spaces to 8.
    const std::string header =
        R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
        R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
    std::string data(16, '\0');
    const double half = 0.5;
    const float values[2] = {1.0F, 2.0F};
    std::memcpy(data.data(), &half, 8);
    std::memcpy(data.data() + 8, values, 8);
    CHECK(read_bytes(dir.file("two.safetensors")) == little_endian(padded.size()) + padded + data);
  }
  SUBCASE("the file made in Python by the reference writer's rules (tests/data/safetensors)") {
    const auto reference = diffpost::read_safetensors(kDataDir + "reference.safetensors");
    CHECK(reference.metadata == std::map<std::string, std::string>{{"format", "pt"}});
    // Its values are arange(numel) * 0.5 + position, written by the script in its own order.
    int64_t position = 0;
    for (const auto& name : std::vector<std::string>{"conv.weight", "conv.bias", "norm.weight", "steps",
                                                     "mask", "half", "brain"}) {
      CAPTURE(name);
      const auto& tensor = reference.tensors.at(name);
      if (tensor.scalar_type() != torch::kBool) {
        const auto expected =
            torch::arange(tensor.numel(), torch::kFloat64) * 0.5 + static_cast<double>(position);
        CHECK(torch::equal(tensor.to(torch::kFloat64).flatten(),
                           expected.to(tensor.scalar_type()).to(torch::kFloat64)));
      }
      ++position;
    }
    diffpost::save_safetensors(reference.tensors, dir.file("copy.safetensors"), reference.metadata);
    CHECK(read_bytes(dir.file("copy.safetensors")) == read_bytes(kDataDir + "reference.safetensors"));
  }
}

TEST_CASE("read_state_dict recognises safetensors files by name and by header") {
  TempDir dir("safetensors");
  diffpost::StateDict state;
  state.insert("layer.weight", torch::ones({2, 2}));
  diffpost::save_safetensors(state, dir.file("model.safetensors"));
  std::filesystem::copy_file(dir.file("model.safetensors"), dir.file("model.bin"));
  for (const char* name : {"model.safetensors", "model.bin"}) {
    CAPTURE(name);
    const auto read = diffpost::read_state_dict(dir.file(name));
    CHECK(read.keys() == std::vector<std::string>{"layer.weight"});
    CHECK(torch::equal(read.at("layer.weight"), torch::ones({2, 2})));
  }
  CHECK(error_of([&] {
          (void)diffpost::read_state_dict(dir.file("model.bin"), diffpost::ReadOptions{}.key("ema"));
        }).find("is a safetensors file, one flat dict") != std::string::npos);
  // A huge header length in a file named *.safetensors is a safetensors error, not "not a checkpoint".
  write_bytes(dir.file("huge.safetensors"), little_endian(uint64_t{1} << 40) + "{}");
  CHECK(error_of([&] {
          (void)diffpost::read_state_dict(dir.file("huge.safetensors"));
        }).find("over the format's limit") != std::string::npos);
}

TEST_CASE("hostile safetensors files are refused with one line naming the file and the problem") {
  TempDir dir("safetensors");
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK(refusal(dir, file_with(good, 8)) == "(no error)");

  SUBCASE("bad header length") {
    check_refused(refusal(dir, "abc"), "too short for the 8-byte header length");
    check_refused(refusal(dir, little_endian(500) + good), "runs past the end of the");
    check_refused(refusal(dir, little_endian(1) + "{"), "too short for a JSON header");
  }
  SUBCASE("huge header") {
    // The length is refused before anything is read or allocated: no 2^62-byte string, no 100 MB one.
    check_refused(refusal(dir, little_endian(uint64_t{1} << 62) + good),
                  "over the format's limit of 100000000");
    check_refused(refusal(dir, little_endian(100'000'001) + good), "over the format's limit");
  }
  SUBCASE("non-UTF-8 JSON") {
    check_refused(refusal(dir, file_with("{\"a\xff\":{}}", 0)), "not valid UTF-8 (byte 11 of the file");
    check_refused(refusal(dir, file_with("{\"\xc0\xaf\":{}}", 0)), "not valid UTF-8");      // overlong '/'
    check_refused(refusal(dir, file_with("{\"\xed\xa0\x80\":{}}", 0)), "not valid UTF-8");  // a surrogate
  }
  SUBCASE("not JSON, not an object, repeated names, unknown fields") {
    check_refused(refusal(dir, file_with("{\"a\":", 0)), "not valid JSON");
    check_refused(refusal(dir, file_with(good + "x", 8)), "not valid JSON");
    check_refused(refusal(dir, file_with("[1,2]", 0)), "the header is a list, not a JSON object");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
                                         R"("a":{"dtype":"F32","shape":[],"data_offsets":[4,8]}})",
                                         8)),
                  "names 'a' twice");
    check_refused(
        refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8)),
        "unknown field 'x'");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8)), "lacks shape");
    check_refused(refusal(dir, file_with(R"({"a":[[[[[[1]]]]]]})", 0)), "header entry 'a' is a list");
    check_refused(refusal(dir, file_with(R"({"__metadata__":{"format":1}})", 0)),
                  "metadata values must be strings");
  }
  SUBCASE("dtype, shape and size mismatch") {
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
                  "is F32 of shape [3] (12 bytes) but its data_offsets [0, 8] span 8 bytes");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8)),
                  "(16 bytes) but its data_offsets");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8)),
                  "has dtype 'C64', which diffpost does not read");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
                  "shape entry is a negative number");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8)),
                  "shape entry is the fraction 2.0");
    // 2^40 x 2^40 elements: the byte count overflows 64 bits; checked before any arithmetic wraps.
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],)"
                                         R"("data_offsets":[0,8]}})",
                                         8)),
                  "has more bytes than 64 bits can count");
    check_refused(
        refusal(dir, file_with(R"({"a":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", 0) + "\x01\x02"),
        "holds bytes other than 0 and 1");
  }
  SUBCASE("offsets out of the file, overlapping, with holes or trailing bytes") {
    // 4 TB claimed by a 90-byte file: refused before any allocation.
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[1099511627776],)"
                                         R"("data_offsets":[0,4398046511104]}})",
                                         8)),
                  "reach past the 8 data bytes of the file");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                         12)),
                  "overlap tensor 'a' ending at 8");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
                  "bytes 0 to 4 of the data belong to no tensor");
    check_refused(refusal(dir, file_with(good, 12)), "(4 bytes belong to no tensor)");
    check_refused(refusal(dir, file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)),
                  "end before they begin");
  }
}

TEST_CASE("an ADM UNet saved with safetensors loads through load_checkpoint as its torch.save file does") {
  const auto options =
      diffpost::AdmUNetOptions(16, 32, 1).in_channels(1).channel_mult({1, 2}).attention_resolutions({8});
  torch::manual_seed(3);
  diffpost::AdmUNet original(options);
  TempDir dir("safetensors_adm");
  diffpost::save_checkpoint(original, dir.path() / "model.pt");
  diffpost::save_safetensors(original, dir.path() / "model.safetensors");

  torch::manual_seed(4);
  diffpost::AdmUNet from_pt(options), from_safetensors(options);
  diffpost::load_checkpoint(from_pt, dir.path() / "model.pt");
  const auto report = diffpost::load_checkpoint(from_safetensors, dir.path() / "model.safetensors");
  CHECK(report.loaded.size() == original->named_parameters().size() + original->named_buffers().size());
  const auto loaded = from_safetensors->named_parameters();
  for (const auto& item : original->named_parameters())
    CHECK_MESSAGE(torch::equal(loaded[item.key()], item.value()), item.key());

  torch::NoGradGuard no_grad;
  from_pt->eval();
  from_safetensors->eval();
  const auto x = torch::randn({2, 1, 16, 16});
  const auto t = torch::tensor({10, 500});
  CHECK(torch::equal(from_safetensors->forward(x, t), from_pt->forward(x, t)));
}
