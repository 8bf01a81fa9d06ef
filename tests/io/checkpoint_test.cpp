// Checkpoint reading and writing against files torch.save wrote (tests/data/checkpoints, made by
// make_checkpoints.py with Debian's torch 1.13): values are checked in closed form (every tensor there is
// arange(numel) * 0.125 + its position in the state dict), errors by the content of their messages.
#include <diffpost/io/checkpoint.hpp>

// LibTorch's own zip reader, as an independent check of the archives diffpost writes.
#include <caffe2/serialize/inline_container.h>

#include "support/error_of.hpp"
#include "support/file_bytes.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace fs = std::filesystem;
using diffpost::LoadOptions;
using diffpost::ReadOptions;
using diffpost::SaveOptions;
using diffpost::StateDict;
using diffpost::testing::error_of;
using diffpost::testing::TempDir;

using diffpost::testing::read_bytes;
using diffpost::testing::write_bytes;

namespace {

const fs::path kData = fs::path(DIFFPOST_TEST_DATA_DIR) / "checkpoints";

// Mirror of `Tiny` in make_checkpoints.py: same names, shapes, dtypes and registration order.
struct TinyNetImpl : torch::nn::Module {
  explicit TinyNetImpl(int64_t fc_out = 2) {
    register_buffer("half_buffer", torch::zeros({3}, torch::kFloat16));
    register_buffer("bf16_buffer", torch::zeros({2, 2}, torch::kBFloat16));
    register_buffer("double_buffer", torch::zeros({2}, torch::kFloat64));
    register_buffer("long_buffer", torch::zeros({4}, torch::kInt64));
    conv = register_module("conv", torch::nn::Conv2d(2, 3, 3));
    norm = register_module("norm", torch::nn::GroupNorm(1, 3));
    fc = register_module("fc", torch::nn::Linear(4, fc_out));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TinyNet);

const std::vector<std::string> kTinyKeys = {"half_buffer", "bf16_buffer", "double_buffer", "long_buffer",
                                            "conv.weight", "conv.bias",   "norm.weight",   "norm.bias",
                                            "fc.weight",   "fc.bias"};

// The value make_checkpoints.py gave the tensor at `position` of the state dict, in its dtype.
torch::Tensor expected_tiny(int64_t position, const torch::Tensor& like, double factor = 1.0) {
  auto values = torch::arange(like.numel(), torch::kFloat64) * 0.125 + static_cast<double>(position);
  return (values.reshape(like.sizes()).to(like.scalar_type()) * factor).to(like.scalar_type());
}

void check_tiny_values(const StateDict& state, double factor = 1.0) {
  REQUIRE(state.keys() == kTinyKeys);
  for (size_t i = 0; i < kTinyKeys.size(); ++i) {
    const auto& tensor = state.at(kTinyKeys[i]);
    CHECK_MESSAGE(torch::equal(tensor, expected_tiny(static_cast<int64_t>(i), tensor, factor)), kTinyKeys[i]);
  }
}

}  // namespace

TEST_CASE("read_state_dict reads torch.save(model.state_dict()): OrderedDict, _metadata, several dtypes") {
  auto state = diffpost::read_state_dict(kData / "tiny_state_dict.pt");
  check_tiny_values(state);
  CHECK((state.at("half_buffer").scalar_type() == torch::kFloat16));
  CHECK((state.at("bf16_buffer").scalar_type() == torch::kBFloat16));
  CHECK((state.at("double_buffer").scalar_type() == torch::kFloat64));
  CHECK((state.at("long_buffer").scalar_type() == torch::kInt64));
  CHECK((state.at("conv.weight").sizes() == c10::IntArrayRef{3, 2, 3, 3}));
  CHECK(state.numel() == 3 + 4 + 2 + 4 + 54 + 3 + 3 + 3 + 8 + 2);
  // Python's _metadata: one version-1 entry per module, root first.
  const std::vector<std::pair<std::string, int64_t>> versions = {
      {"", 1}, {"conv", 1}, {"norm", 1}, {"fc", 1}};
  CHECK((state.module_versions() == versions));
  CHECK(state.origin().find("tiny_state_dict.pt") != std::string::npos);
}

TEST_CASE("read_state_dict reads a plain dict and finds a state dict nested in a training checkpoint") {
  auto plain = diffpost::read_state_dict(kData / "tiny_plain_dict.pt");
  check_tiny_values(plain);
  CHECK((plain.module_versions().empty()));

  // {"state_dict": ..., "epoch", "lr", "name", "args": argparse.Namespace, "optimizer": {...}}: the Namespace
  // is never built, only recorded, and does not stop the state dict from being read.
  auto nested = diffpost::read_state_dict(kData / "tiny_nested.pt");
  check_tiny_values(nested);
  CHECK(nested.origin().find("(key 'state_dict')") != std::string::npos);
  check_tiny_values(diffpost::read_state_dict(kData / "tiny_nested.pt", ReadOptions{}.key("state_dict")));

  auto wrong_key =
      error_of([] { diffpost::read_state_dict(kData / "tiny_nested.pt", ReadOptions{}.key("nope")); });
  CHECK(wrong_key.find("has no key 'nope'") != std::string::npos);
  CHECK(wrong_key.find("'epoch': an int") != std::string::npos);
  CHECK(wrong_key.find("'args': an object built by argparse.Namespace") != std::string::npos);
  auto not_tensors =
      error_of([] { diffpost::read_state_dict(kData / "tiny_nested.pt", ReadOptions{}.key("lr")); });
  CHECK(not_tensors.find("key 'lr' holds a float, not a dict of tensors") != std::string::npos);
}

TEST_CASE(
    "read_state_dict asks which state dict to take when a file holds several, and takes the chosen one") {
  auto ambiguous = error_of([] { diffpost::read_state_dict(kData / "tiny_model_and_ema.pt"); });
  CHECK(ambiguous.find("holds several state dicts (keys 'model', 'ema')") != std::string::npos);
  CHECK(ambiguous.find("ReadOptions{}.key(\"ema\")") != std::string::npos);
  check_tiny_values(diffpost::read_state_dict(kData / "tiny_model_and_ema.pt", ReadOptions{}.key("model")));
  check_tiny_values(diffpost::read_state_dict(kData / "tiny_model_and_ema.pt", ReadOptions{}.key("ema")),
                    2.0);
}

TEST_CASE("read_state_dict reads the legacy (pre-1.6, non-zip) torch.save format") {
  auto state = diffpost::read_state_dict(kData / "tiny_legacy.pt");
  check_tiny_values(state);
  CHECK((state.at("half_buffer").scalar_type() == torch::kFloat16));
  CHECK((state.at("bf16_buffer").scalar_type() == torch::kBFloat16));
  const std::vector<std::pair<std::string, int64_t>> versions = {
      {"", 1}, {"conv", 1}, {"norm", 1}, {"fc", 1}};
  CHECK((state.module_versions() == versions));
}

TEST_CASE("read_state_dict keeps offsets, strides and shared storages of views") {
  for (const std::string file : {"views.pt", "views_legacy.pt"}) {
    CAPTURE(file);
    auto state = diffpost::read_state_dict(kData / file);
    const auto base_expected = torch::arange(24, torch::kFloat32).reshape({4, 6}) / 2;
    const auto& base = state.at("base");
    const auto& transposed = state.at("transposed");
    const auto& block = state.at("block");
    const auto& tail = state.at("tail");
    CHECK(torch::equal(base, base_expected));
    CHECK(torch::equal(transposed, base_expected.t()));
    CHECK((transposed.strides() == c10::IntArrayRef{1, 6}));
    CHECK(torch::equal(block, base_expected.slice(0, 1, 3).slice(1, 2, 5)));
    CHECK(block.storage_offset() == 8);
    CHECK(torch::equal(tail, base_expected.flatten().slice(0, 5)));
    CHECK(tail.storage_offset() == 5);
    // One storage for all four views, as in Python.
    CHECK(transposed.is_alias_of(base));
    CHECK(block.is_alias_of(base));
    CHECK(tail.is_alias_of(base));
    const auto& scalar = state.at("scalar");
    CHECK(scalar.dim() == 0);
    CHECK((scalar.scalar_type() == torch::kFloat64));
    CHECK(scalar.item<double>() == 7.5);
    CHECK_FALSE(scalar.is_alias_of(base));
  }
}

TEST_CASE("read_state_dict rejects what is not a state dict checkpoint with the path and the reason") {
  const TempDir dir("checkpoint-test");
  auto missing = error_of([&] { diffpost::read_state_dict(dir.path() / "absent.pt"); });
  CHECK(missing.find("absent.pt' does not exist") != std::string::npos);

  write_bytes(dir.path() / "empty.pt", "");
  CHECK(error_of([&] { diffpost::read_state_dict(dir.path() / "empty.pt"); }).find("empty.pt' is empty") !=
        std::string::npos);

  write_bytes(dir.path() / "notes.txt", "these are not weights\n");
  auto text = error_of([&] { diffpost::read_state_dict(dir.path() / "notes.txt"); });
  CHECK(text.find("notes.txt' is not a PyTorch checkpoint") != std::string::npos);

  const auto whole = read_bytes(kData / "tiny_state_dict.pt");
  write_bytes(dir.path() / "truncated.pt", whole.substr(0, whole.size() / 2));
  auto truncated = error_of([&] { diffpost::read_state_dict(dir.path() / "truncated.pt"); });
  CHECK(truncated.find("truncated.pt' is not a readable PyTorch zip archive (truncated or corrupt?)") !=
        std::string::npos);

  const auto legacy = read_bytes(kData / "tiny_legacy.pt");
  write_bytes(dir.path() / "legacy_cut.pt", legacy.substr(0, legacy.size() - 5));
  auto legacy_cut = error_of([&] { diffpost::read_state_dict(dir.path() / "legacy_cut.pt"); });
  CHECK(legacy_cut.find("legacy_cut.pt' ends early (truncated?) inside storage") != std::string::npos);
  write_bytes(dir.path() / "legacy_head.pt", legacy.substr(0, 100));
  auto legacy_head = error_of([&] { diffpost::read_state_dict(dir.path() / "legacy_head.pt"); });
  CHECK(legacy_head.find("legacy_head.pt' (legacy format): data.pkl ends early") != std::string::npos);

  auto pickled_model = error_of([] { diffpost::read_state_dict(kData / "tiny_whole_model.pt"); });
  CHECK(pickled_model.find("holds an object built by __main__.Tiny, not a state dict") != std::string::npos);
  CHECK(pickled_model.find("torch.save(model.state_dict(), path)") != std::string::npos);

  auto script = error_of(
      [] { diffpost::read_state_dict(fs::path(DIFFPOST_TEST_DATA_DIR) / "torchscript" / "tiny_score.pt"); });
  CHECK(script.find("is a TorchScript archive") != std::string::npos);
}

TEST_CASE("read_state_dict reads archives other zip writers made: deflated records and zip64 headers") {
  // Python's zipfile re-packed tiny_state_dict.pt (make_checkpoints.py): every record deflated, and every
  // header and end record in its zip64 form.
  check_tiny_values(diffpost::read_state_dict(kData / "tiny_deflated.pt"));
  auto zip64 = diffpost::read_state_dict(kData / "tiny_zip64.pt");
  check_tiny_values(zip64);
  CHECK(zip64.module_versions().size() == 4);
}

namespace {

// Offset of the central directory header of record `name` (the whole name, folder included) in `zip`.
size_t central_header(const std::string& zip, const std::string& name) {
  for (size_t at = zip.find("PK\x01\x02"); at != std::string::npos; at = zip.find("PK\x01\x02", at + 1)) {
    const size_t name_size =
        static_cast<unsigned char>(zip[at + 28]) | static_cast<unsigned char>(zip[at + 29]) << 8;
    if (zip.compare(at + 46, name_size, name) == 0) return at;
  }
  FAIL("no central directory entry for " << name);
  return 0;
}

void put_le32(std::string& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

}  // namespace

TEST_CASE("read_state_dict refuses corrupt and hostile zip archives before allocating what they claim") {
  const TempDir dir("checkpoint-test");
  const auto stored = read_bytes(kData / "tiny_state_dict.pt");
  const auto deflated = read_bytes(kData / "tiny_deflated.pt");
  auto error_for = [&](const std::string& name, const std::string& bytes) {
    write_bytes(dir.path() / name, bytes);
    return error_of([&] { diffpost::read_state_dict(dir.path() / name); });
  };

  // A flipped byte in a tensor's data: the CRC-32 catches it.
  auto flipped = stored;
  const auto weight_at = central_header(flipped, "tiny_state_dict/data/4");
  const size_t local = static_cast<unsigned char>(flipped[weight_at + 42]) |
                       static_cast<unsigned char>(flipped[weight_at + 43]) << 8;
  const size_t local_name = static_cast<unsigned char>(flipped[local + 26]);
  const size_t local_extra =
      static_cast<unsigned char>(flipped[local + 28]) | static_cast<unsigned char>(flipped[local + 29]) << 8;
  flipped[local + 30 + local_name + local_extra] ^= 0x01;
  CHECK(error_for("flipped.pt", flipped).find("record 'data/4' is corrupt (its CRC-32 does not match)") !=
        std::string::npos);

  // A stored record claiming 4 GiB in a 3 KB file.
  auto huge = stored;
  const auto pickle_at = central_header(huge, "tiny_state_dict/data.pkl");
  put_le32(huge, pickle_at + 20, 0xfffffff0u);
  put_le32(huge, pickle_at + 24, 0xfffffff0u);
  CHECK(error_for("huge.pt", huge)
            .find("record 'tiny_state_dict/data.pkl' claims 4294967280 bytes at offset 0, "
                  "beyond the archive's data") != std::string::npos);

  // A deflated record claiming to inflate 560 bytes to 4 GiB: more than deflate can, refused unread.
  auto bomb = deflated;
  put_le32(bomb, central_header(bomb, "tiny_state_dict/data.pkl") + 24, 0xfffffff0u);
  CHECK(error_for("bomb.pt", bomb).find("claims to inflate 560 bytes to 4294967280, more than deflate can") !=
        std::string::npos);

  // A deflated record holding more than it declares.
  auto understated = deflated;
  put_le32(understated, central_header(understated, "tiny_state_dict/data.pkl") + 24, 900);
  CHECK(error_for("understated.pt", understated)
            .find("record 'data.pkl' inflates to more than its declared 900 bytes") != std::string::npos);

  // The same record name twice.
  auto twice = stored;
  const auto second = central_header(twice, "tiny_state_dict/data/1");
  twice[second + 46 + std::string("tiny_state_dict/data/").size()] = '0';
  CHECK(error_for("twice.pt", twice).find("record 'tiny_state_dict/data/0' is stored twice") !=
        std::string::npos);

  // Encryption, which torch.save never uses.
  auto encrypted = stored;
  encrypted[pickle_at + 8] |= 0x01;
  CHECK(error_for("encrypted.pt", encrypted).find("record 'tiny_state_dict/data.pkl' is encrypted") !=
        std::string::npos);

  // The end record lost: a clear message, not a crash.
  CHECK(
      error_for("cut.pt", stored.substr(0, stored.size() - 10))
          .find("is not a readable PyTorch zip archive (truncated or corrupt?): no end-of-central-directory "
                "record") != std::string::npos);
  CHECK(dir.entries() == 7);  // only the files the test wrote
}

TEST_CASE("the pickle interpreter executes nothing: unknown globals stay inert and are reported by name") {
  // A hand-made data.pkl calling os.system('false'): GLOBAL 'os system', ('false',), REDUCE, STOP.
  const std::string malicious = std::string(
      "\x80\x02"
      "cos\nsystem\nq\x00X\x05\x00\x00\x00"
      "false\x85R.",
      28);
  diffpost::detail::Unpickler unpickler(malicious, nullptr, "test");
  const auto graph = unpickler.parse();
  const auto& value = graph.root();
  CHECK(value->is(diffpost::detail::PickleValue::Kind::Opaque));
  CHECK(value->text == "os.system");

  // A list holding itself (EMPTY_LIST, DUP, APPEND): parsed, and its cycle broken when the graph goes away.
  std::weak_ptr<diffpost::detail::PickleValue> cyclic;
  {
    auto cycle = diffpost::detail::Unpickler(std::string_view("\x80\x02]2a.", 6), nullptr, "test").parse();
    REQUIRE(cycle.root()->items.size() == 1);
    CHECK(cycle.root()->items[0] == cycle.root());
    cyclic = cycle.root();
  }
  CHECK(cyclic.expired());

  const std::string bad_opcode("\x80\x02\xff", 3);
  auto message = error_of([&] { diffpost::detail::Unpickler(bad_opcode, nullptr, "test").parse(); });
  CHECK(message.find("unsupported pickle opcode 0xff at byte 2") != std::string::npos);
  const std::string cut(
      "\x80\x02X\x10\x00\x00\x00"
      "abc",
      10);
  CHECK(error_of([&] { diffpost::detail::Unpickler(cut, nullptr, "test").parse(); }).find("ends early") !=
        std::string::npos);
}

TEST_CASE("load_checkpoint fills a module's parameters and buffers, converting dtype") {
  TinyNet net;
  auto report = diffpost::load_checkpoint(net, kData / "tiny_state_dict.pt");
  CHECK(report.loaded == kTinyKeys);
  CHECK(report.missing.empty());
  CHECK(report.unexpected.empty());
  check_tiny_values(diffpost::state_dict(*net));
  CHECK(net->conv->weight.requires_grad());

  // Into a float64 model: values converted, not reinterpreted.
  TinyNet wide;
  wide->to(torch::kFloat64);
  diffpost::load_checkpoint(wide, kData / "tiny_plain_dict.pt");
  CHECK((wide->conv->weight.scalar_type() == torch::kFloat64));
  CHECK(torch::equal(wide->conv->weight,
                     (torch::arange(54, torch::kFloat64) * 0.125 + 4).reshape({3, 2, 3, 3})));
  CHECK(
      torch::equal(wide->named_buffers()["half_buffer"], torch::tensor({0.0, 0.125, 0.25}, torch::kFloat64)));
}

TEST_CASE("state_dict follows Python's order and leaves out undefined tensors (a convolution without bias)") {
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).bias(false)),
                            torch::nn::BatchNorm2d(2));
  const std::vector<std::string> keys = {"0.weight",       "1.weight",      "1.bias",
                                         "1.running_mean", "1.running_var", "1.num_batches_tracked"};
  CHECK(diffpost::state_dict(*net).keys() == keys);
  const TempDir dir("checkpoint-test");
  diffpost::save_checkpoint(net, dir.path() / "seq.pt");
  torch::nn::Sequential copy(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).bias(false)),
                             torch::nn::BatchNorm2d(2));
  CHECK(diffpost::load_checkpoint(copy, dir.path() / "seq.pt").loaded == keys);
  CHECK(torch::equal(copy[0]->as<torch::nn::Conv2d>()->weight, net[0]->as<torch::nn::Conv2d>()->weight));
}

TEST_CASE("load_state_dict reports mis-shaped, missing and unexpected keys, leading with the first one") {
  const auto state = diffpost::read_state_dict(kData / "tiny_state_dict.pt");

  // Mis-shaped: fc has 3 outputs in the model, 2 in the file. An error even in non-strict mode (as in
  // Python).
  TinyNet wider(3);
  const auto before = wider->conv->weight.clone();
  auto shape_error = error_of([&] { diffpost::load_state_dict(wider, state); });
  CHECK(
      shape_error.find("First mismatch: 'fc.weight' has shape [2, 4] in the file but [3, 4] in the model") !=
      std::string::npos);
  CHECK(shape_error.find(
            "mis-shaped keys (2):\n    fc.weight: file [2, 4], model [3, 4]\n    fc.bias: file [2], "
            "model [3]") != std::string::npos);
  CHECK(shape_error.find("tiny_state_dict.pt") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::load_state_dict(wider, state, LoadOptions{}.strict(false));
        }).find("First mismatch: 'fc.weight'") != std::string::npos);
  // Nothing was copied: the model is untouched after a failed load.
  CHECK(torch::equal(wider->conv->weight, before));

  // Missing: the model has a module the file lacks.
  TinyNet extra;
  extra->register_module("head", torch::nn::Linear(2, 5));
  auto missing = error_of([&] { diffpost::load_state_dict(extra, state); });
  CHECK(missing.find("First mismatch: 'head.weight' (model shape [5, 2]) is missing from the file") !=
        std::string::npos);
  CHECK(missing.find("missing keys (2):\n    head.weight [5, 2]\n    head.bias [5]") != std::string::npos);
  CHECK(missing.find("unexpected keys") == std::string::npos);
  auto lenient = diffpost::load_state_dict(extra, state, LoadOptions{}.strict(false));
  CHECK(lenient.missing == std::vector<std::string>{"head.weight", "head.bias"});
  CHECK(lenient.loaded.size() == kTinyKeys.size());
  CHECK(torch::equal(extra->fc->weight, (torch::arange(8, torch::kFloat32) * 0.125 + 8).reshape({2, 4})));

  // Unexpected: the file has keys the model lacks; long lists are truncated with a count.
  StateDict bigger = state;
  for (int i = 0; i < 14; ++i) bigger.insert("extra." + std::to_string(i), torch::zeros({i + 1}));
  TinyNet net;
  auto unexpected = error_of([&] { diffpost::load_state_dict(net, bigger); });
  CHECK(unexpected.find("First mismatch: 'extra.0' (file shape [1]) is not in the model") !=
        std::string::npos);
  CHECK(unexpected.find("unexpected keys (14):") != std::string::npos);
  CHECK(unexpected.find("extra.9 [10]\n    ... and 4 more") != std::string::npos);
  CHECK(unexpected.find("extra.10") == std::string::npos);
  CHECK(unexpected.find("(24 tensors in the file, 10 in the model)") != std::string::npos);
  CHECK(diffpost::load_state_dict(net, bigger, LoadOptions{}.strict(false)).unexpected.size() == 14);
}

TEST_CASE("load_state_dict appends the description of what the file was made for") {
  const auto state = diffpost::read_state_dict(kData / "tiny_state_dict.pt");
  TinyNet wider(3);
  auto describe = [](const StateDict& file) {
    return "The file looks like a Tiny with fc_out=" + std::to_string(file.at("fc.weight").size(0)) + ".";
  };
  auto message =
      error_of([&] { diffpost::load_state_dict(wider, state, LoadOptions{}.describe_file(describe)); });
  CHECK(message.find("\nThe file looks like a Tiny with fc_out=2.") != std::string::npos);
  auto throwing = [](const StateDict&) -> std::string { throw std::runtime_error("no idea"); };
  message = error_of([&] { diffpost::load_state_dict(wider, state, LoadOptions{}.describe_file(throwing)); });
  CHECK(message.find("First mismatch") != std::string::npos);
  CHECK(message.find("(could not describe the file: no idea)") != std::string::npos);
}

TEST_CASE(
    "save_checkpoint writes the torch.save format: same data.pkl bytes, record names, bit-exact round trip") {
  const TempDir dir("checkpoint-test");
  TinyNet net;
  diffpost::load_checkpoint(net, kData / "tiny_state_dict.pt");
  const auto path = dir.path() / "tiny_from_cpp.pt";
  diffpost::save_checkpoint(net, path);

  caffe2::serialize::PyTorchStreamReader reader(path.string());
  auto records = reader.getAllRecords();
  std::set<std::string> names(records.begin(), records.end());
  std::set<std::string> expected = {"data.pkl", "version"};
  for (int i = 0; i < 10; ++i) expected.insert("data/" + std::to_string(i));
  CHECK(names == expected);
  // getAllRecords strips the archive folder; the zip's own directory names it "archive/", as torch.save does.
  const auto bytes = read_bytes(path);
  for (const auto& name : expected) CHECK_MESSAGE(bytes.find("archive/" + name) != std::string::npos, name);
  // The pickle is byte for byte what Python's torch.save wrote for the same state dict.
  caffe2::serialize::PyTorchStreamReader python(kData.string() + "/tiny_state_dict.pt");
  auto [ours, our_size] = reader.getRecord("data.pkl");
  auto [theirs, their_size] = python.getRecord("data.pkl");
  CHECK(std::string(static_cast<const char*>(ours.get()), our_size) ==
        std::string(static_cast<const char*>(theirs.get()), their_size));
  auto [version, version_size] = reader.getRecord("version");
  CHECK(std::string(static_cast<const char*>(version.get()), version_size) == "3\n");

  // Round trip C++ -> C++: same keys in the same order, same dtypes, same bits.
  auto back = diffpost::read_state_dict(path);
  check_tiny_values(back);
  const auto original = diffpost::state_dict(*net);
  for (const auto& [name, tensor] : original) {
    CHECK((back.at(name).scalar_type() == tensor.scalar_type()));
    CHECK(torch::equal(back.at(name), tensor));
  }
  CHECK((back.module_versions() == original.module_versions()));

  // Optional check from Python (see docs/checkpoints.md): keep a copy where the caller asks for it.
  if (const char* keep = std::getenv("DIFFPOST_KEEP_SAVED_CHECKPOINT")) {
    diffpost::save_checkpoint(net, keep, SaveOptions{}.overwrite(true));
  }
}

TEST_CASE("save_checkpoint never overwrites silently and leaves no temporary file") {
  const TempDir dir("checkpoint-test");
  TinyNet net;
  const auto path = dir.path() / "weights.pt";
  write_bytes(path, "precious");
  auto refused = error_of([&] { diffpost::save_checkpoint(net, path); });
  CHECK(refused.find("weights.pt' already exists; pass SaveOptions{}.overwrite(true)") != std::string::npos);
  CHECK(read_bytes(path) == "precious");

  diffpost::save_checkpoint(net, path, SaveOptions{}.overwrite(true));
  CHECK(diffpost::read_state_dict(path).keys() == kTinyKeys);
  CHECK(dir.entries() == 1);

  auto no_dir = error_of([&] { diffpost::save_checkpoint(net, dir.path() / "missing" / "w.pt"); });
  CHECK(no_dir.find("does not exist") != std::string::npos);
}

TEST_CASE("save_state_dict keeps views sharing one storage, like torch.save") {
  const TempDir dir("checkpoint-test");
  auto views = diffpost::read_state_dict(kData / "views.pt");
  const auto path = dir.path() / "views.pt";
  diffpost::save_state_dict(views, path);
  caffe2::serialize::PyTorchStreamReader reader(path.string());
  CHECK(reader.getAllRecords().size() == 4);  // data.pkl, version, two storages (the views' and the scalar's)
  auto [ours, our_size] = reader.getRecord("data.pkl");
  caffe2::serialize::PyTorchStreamReader python((kData / "views.pt").string());
  auto [theirs, their_size] = python.getRecord("data.pkl");
  // views.pt was saved from an OrderedDict without _metadata, so Python's pickle stops (final '.') where ours
  // goes on to BUILD an empty _metadata; everything before is byte for byte the same.
  const std::string our_pickle(static_cast<const char*>(ours.get()), our_size);
  const std::string their_pickle(static_cast<const char*>(theirs.get()), their_size - 1);
  CHECK(our_pickle.substr(0, their_pickle.size()) == their_pickle);

  auto back = diffpost::read_state_dict(path);
  CHECK(back.keys() == views.keys());
  for (const auto& [name, tensor] : views) {
    CHECK(torch::equal(back.at(name), tensor));
    CHECK((back.at(name).strides() == tensor.strides()));
    CHECK(back.at(name).storage_offset() == tensor.storage_offset());
  }
  CHECK(back.at("transposed").is_alias_of(back.at("base")));
  CHECK(back.at("tail").is_alias_of(back.at("base")));
}

TEST_CASE("save_state_dict nests the state dict under SaveOptions::key, as a Lightning .ckpt holds it") {
  const TempDir dir("checkpoint-test");
  const auto state = diffpost::read_state_dict(kData / "tiny_state_dict.pt");
  const auto path = dir.path() / "model.ckpt";
  diffpost::save_state_dict(state, path, SaveOptions{}.key("state_dict"));
  // Found under "state_dict" without being told, and when asked for by key; values and versions kept.
  const auto found = diffpost::read_state_dict(path);
  check_tiny_values(found);
  CHECK(found.origin().find("(key 'state_dict')") != std::string::npos);
  CHECK((found.module_versions() == state.module_versions()));
  check_tiny_values(diffpost::read_state_dict(path, ReadOptions{}.key("state_dict")));
  auto wrong_key = error_of([&] { diffpost::read_state_dict(path, ReadOptions{}.key("model")); });
  CHECK(wrong_key.find("has no key 'model'") != std::string::npos);
  // Prefix selection works through the nesting, as for CompVis checkpoints.
  const auto conv = diffpost::read_state_dict(path, ReadOptions{}.prefix("conv."));
  CHECK((conv.keys() == std::vector<std::string>{"weight", "bias"}));
  CHECK(torch::equal(conv.at("weight"), state.at("conv.weight")));
  // LibTorch's own zip reader sees the records torch.save writes.
  caffe2::serialize::PyTorchStreamReader reader(path.string());
  CHECK(reader.hasRecord("data.pkl"));
  CHECK(reader.hasRecord("version"));
}
