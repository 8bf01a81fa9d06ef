// numpy .npz reading and writing against files numpy 1.24 wrote (tests/data/metrics/npz and fid; the README
// there says how): every dtype, byte order and memory order the reader handles, format versions 1 to 3,
// pytorch-fid's statistics files, byte equality of the .npy records diffpost writes with numpy's, and the
// errors for what is refused.
#include <diffpost/io/npz.hpp>

#include "support/error_of.hpp"
#include "support/file_bytes.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

namespace fs = std::filesystem;
using diffpost::StateDict;
using diffpost::testing::error_of;
using diffpost::testing::TempDir;

using diffpost::testing::read_bytes;
using diffpost::testing::write_bytes;

namespace {

const fs::path kNpz = fs::path(DIFFPOST_TEST_DATA_DIR) / "metrics" / "npz";
const fs::path kFid = fs::path(DIFFPOST_TEST_DATA_DIR) / "metrics" / "fid";

// np.arange(12).reshape(3, 4) / 8, the array behind most entries of arrays.npz.
torch::Tensor arange_3x4() {
  return torch::arange(12, torch::kFloat64).reshape({3, 4}) / 8.0;
}

// A flat zip archive (as numpy writes) holding `records`, written by diffpost's zip writer.
void write_zip(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& records) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  diffpost::detail::ZipArchiveWriter writer(out, "");
  for (const auto& [name, bytes] : records) writer.write_record(name, bytes.data(), bytes.size());
  writer.finish();
}

// A .npy file with header dict `dict` (padded as numpy pads it) and `data` after it.
std::string npy_with_header(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  return bytes + header + data;
}

}  // namespace

TEST_CASE("read_npz reads every dtype, byte order and memory order numpy.savez writes") {
  const auto arrays = diffpost::read_npz(kNpz / "arrays.npz");
  const auto expected = arange_3x4();
  CHECK(arrays.size() == 17);
  CHECK(arrays.keys().front() == "f8");
  const auto& f8 = arrays.at("f8");
  CHECK((f8.scalar_type() == torch::kFloat64));
  CHECK(torch::equal(f8, expected));
  CHECK((arrays.at("f4").scalar_type() == torch::kFloat32));
  CHECK(torch::equal(arrays.at("f4"), expected.to(torch::kFloat32)));
  CHECK((arrays.at("f2").scalar_type() == torch::kFloat16));
  CHECK(torch::equal(arrays.at("f2"), expected.to(torch::kFloat16)));
  const auto minus_three_to_two = torch::arange(-3, 3, torch::kInt64);
  for (const auto& [name, type] : std::vector<std::pair<std::string, torch::ScalarType>>{
           {"i8", torch::kInt64}, {"i4", torch::kInt32}, {"i2", torch::kInt16}, {"i1", torch::kInt8}}) {
    CAPTURE(name);
    CHECK((arrays.at(name).scalar_type() == type));
    CHECK(torch::equal(arrays.at(name), minus_three_to_two.to(type)));
  }
  CHECK(torch::equal(arrays.at("u1"), torch::arange(250, 256, torch::kInt64).to(torch::kUInt8)));
  CHECK(torch::equal(arrays.at("b1"), torch::tensor({true, false, true})));
  const auto complex = arrays.at("c16");
  CHECK((complex.scalar_type() == torch::kComplexDouble));
  CHECK(
      torch::equal(torch::view_as_real(complex), torch::tensor({{1.0, 2.0}, {0.0, -3.5}}, torch::kFloat64)));
  // Fortran order is transposed into place, big-endian elements are swapped.
  CHECK(torch::equal(arrays.at("fortran"), expected));
  CHECK(arrays.at("fortran").is_contiguous());
  CHECK(torch::equal(arrays.at("big"), expected));
  CHECK(torch::equal(arrays.at("big_i4"), minus_three_to_two.to(torch::kInt32)));
  const auto cube = torch::arange(24, torch::kFloat32).reshape({2, 3, 4});
  CHECK(torch::equal(arrays.at("cube"), cube));
  CHECK(torch::equal(arrays.at("fortran_cube"), cube));
  CHECK(arrays.at("scalar").dim() == 0);
  CHECK(arrays.at("scalar").item<double>() == 2.5);
  CHECK(arrays.at("empty").sizes() == torch::IntArrayRef({0, 3}));
}

TEST_CASE("read_npz reads .npy format versions 2.0 and 3.0") {
  const auto arrays = diffpost::read_npz(kNpz / "version2.npz");
  CHECK(torch::equal(arrays.at("v2"), arange_3x4()));
  CHECK(torch::equal(arrays.at("v3"), arange_3x4().to(torch::kFloat32)));
}

TEST_CASE("the .npy records diffpost writes are byte for byte numpy's") {
  // numpy.savez stores its records: the raw bytes of arrays.npz's records are numpy 1.24's .npy encoding.
  diffpost::detail::ZipArchiveReader archive(kNpz / "arrays.npz", "arrays.npz",
                                             diffpost::detail::ZipLayout::flat);
  const auto arrays = diffpost::read_npz(kNpz / "arrays.npz");
  for (const std::string name :
       {"f8", "f4", "f2", "i8", "i4", "i2", "i1", "u1", "b1", "c16", "scalar", "empty", "cube"}) {
    CAPTURE(name);
    const auto* record = archive.find(name + ".npy");
    REQUIRE(record != nullptr);
    CHECK(diffpost::detail::encode_npy(arrays.at(name)) == archive.read_string(*record));
  }
}

TEST_CASE("write_npz and read_npz round-trip, and an existing file is replaced only when asked") {
  TempDir dir("npz");
  StateDict arrays;
  arrays.insert("mu", torch::randn({5}, torch::kFloat64));
  arrays.insert("sigma", torch::randn({5, 5}, torch::kFloat64).t());  // not contiguous: written in C order
  arrays.insert("labels", torch::tensor({1, 0, 1}, torch::kBool));
  arrays.insert("counts", torch::arange(4, torch::kInt32));
  const auto path = dir.path() / "out.npz";
  diffpost::write_npz(path, arrays);
  const auto back = diffpost::read_npz(path);
  CHECK(back.keys() == arrays.keys());
  for (const auto& [name, tensor] : arrays) {
    CAPTURE(name);
    CHECK((back.at(name).scalar_type() == tensor.scalar_type()));
    CHECK(torch::equal(back.at(name), tensor));
  }
  const auto refused = error_of([&] { diffpost::write_npz(path, arrays); });
  CHECK(refused.find("already exists") != std::string::npos);
  diffpost::write_npz(path, back, diffpost::SaveOptions{}.overwrite(true));
  CHECK(error_of([&] { diffpost::write_npz(dir.path() / "x.npz", StateDict{}); }).find("no arrays") !=
        std::string::npos);
  StateDict bad;
  bad.insert("a/b", torch::zeros({1}));
  CHECK(error_of([&] { diffpost::write_npz(dir.path() / "x.npz", bad); }).find("'a/b'") != std::string::npos);
  StateDict bf16;
  bf16.insert("x", torch::zeros({1}, torch::kBFloat16));
  CHECK(error_of([&] { diffpost::write_npz(dir.path() / "x.npz", bf16); }).find("BFloat16") !=
        std::string::npos);
}

TEST_CASE("read_fid_statistics reads pytorch-fid's savez_compressed files and numpy.savez files") {
  const auto cases = diffpost::read_state_dict(kFid / "frechet_cases.pt");
  for (const auto& [file, set] : std::vector<std::pair<std::string, std::string>>{
           {"stats_well_a.npz", "well_a"}, {"stats_well_b.npz", "well_b"}}) {
    CAPTURE(file);
    const auto statistics = diffpost::read_fid_statistics(kFid / file);
    const auto& features = cases.at(set);
    CHECK((statistics.mu.scalar_type() == torch::kFloat64));
    CHECK(torch::allclose(statistics.mu, features.mean(0), 0.0, 1e-14));
    const auto centered = features - features.mean(0);
    const auto covariance = centered.t().matmul(centered) / static_cast<double>(features.size(0) - 1);
    CHECK(torch::allclose(statistics.sigma, covariance, 0.0, 1e-13));
  }
  TempDir dir("fid-stats");
  const auto mu = torch::randn({3}, torch::kFloat32);
  const auto sigma = torch::eye(3, torch::kFloat32) * 2;
  diffpost::write_fid_statistics(dir.path() / "s.npz", mu, sigma);
  const auto back = diffpost::read_fid_statistics(dir.path() / "s.npz");
  CHECK(torch::equal(back.mu, mu.to(torch::kFloat64)));
  CHECK(torch::equal(back.sigma, sigma.to(torch::kFloat64)));
  CHECK(error_of([&] {
          diffpost::write_fid_statistics(dir.path() / "t.npz", mu, sigma.narrow(0, 0, 2));
        }).find("expected mu [D] and sigma [D, D], got [3] and [2, 3]") != std::string::npos);
}

TEST_CASE("read_fid_statistics names what is wrong with a statistics file") {
  TempDir dir("fid-stats-bad");
  auto write = [&](const std::string& name, const StateDict& arrays) {
    diffpost::write_npz(dir.path() / name, arrays);
    return dir.path() / name;
  };
  StateDict only_mu;
  only_mu.insert("mu", torch::zeros({4}, torch::kFloat64));
  CHECK(error_of([&] {
          diffpost::read_fid_statistics(write("only_mu.npz", only_mu));
        }).find("only_mu.npz' lacks the array 'sigma' (it holds: mu)") != std::string::npos);
  StateDict mismatched;
  mismatched.insert("mu", torch::zeros({4}, torch::kFloat64));
  mismatched.insert("sigma", torch::zeros({3, 3}, torch::kFloat64));
  CHECK(error_of([&] {
          diffpost::read_fid_statistics(write("mismatched.npz", mismatched));
        }).find("'sigma' has shape [3, 3] but 'mu' has 4 entries") != std::string::npos);
  StateDict integers;
  integers.insert("mu", torch::zeros({2}, torch::kInt64));
  integers.insert("sigma", torch::zeros({2, 2}, torch::kInt64));
  CHECK(error_of([&] {
          diffpost::read_fid_statistics(write("integers.npz", integers));
        }).find("must be floating-point arrays") != std::string::npos);
  StateDict not_finite;
  not_finite.insert("mu", torch::tensor({0.0, std::numeric_limits<double>::quiet_NaN()}));
  not_finite.insert("sigma", torch::eye(2, torch::kFloat64));
  CHECK(error_of([&] {
          diffpost::read_fid_statistics(write("nan.npz", not_finite));
        }).find("holds NaN or infinite values") != std::string::npos);
}

TEST_CASE("read_npz refuses what is not an archive of numeric .npy arrays, naming the file and the array") {
  TempDir dir("npz-bad");
  CHECK(error_of([&] {
          diffpost::read_npz(dir.path() / "missing.npz");
        }).find("missing.npz' does not exist") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::read_npz(kNpz / "object.npz");
        }).find("object.npz' array 'values': element type '|O' holds Python objects") != std::string::npos);
  write_bytes(dir.path() / "text.npz", "mu,sigma\n");
  CHECK(error_of([&] {
          diffpost::read_npz(dir.path() / "text.npz");
        }).find("does not start like a zip file") != std::string::npos);
  const auto stats = read_bytes(kFid / "stats_well_b.npz");
  write_bytes(dir.path() / "cut.npz", stats.substr(0, stats.size() / 2));
  CHECK(error_of([&] { diffpost::read_npz(dir.path() / "cut.npz"); }).find("cut.npz'") != std::string::npos);

  const auto good = diffpost::detail::encode_npy(torch::arange(6, torch::kFloat64));
  write_zip(dir.path() / "other.npz", {{"mu.npy", good}, {"notes.txt", "hello"}});
  CHECK(error_of([&] {
          diffpost::read_npz(dir.path() / "other.npz");
        }).find("holds the record 'notes.txt', which is not a .npy array") != std::string::npos);

  struct Case {
    std::string label, bytes, message;
  };
  const std::string six_doubles(48, '\0');
  const std::vector<Case> cases = {
      {"short data", good.substr(0, good.size() - 8),
       "shape [6] of '<f8' needs 48 bytes of data but 40 follow the header"},
      {"long data", good + std::string(8, '\0'), "needs 48 bytes of data but 56 follow"},
      {"bad magic", "\x93NUMPZ" + good.substr(6), "does not start with numpy's magic string"},
      {"version", good.substr(0, 6) + "\x04" + good.substr(7), ".npy format version 4.0"},
      {"header length", good.substr(0, 8) + "\xff\xff" + good.substr(10),
       "header claims 65535 bytes but only"},
      {"unknown key",
       npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), 'x': 1, }", six_doubles),
       "unknown key 'x'"},
      {"missing key", npy_with_header("{'descr': '<f8', 'shape': (6,), }", six_doubles),
       "lacks 'fortran_order'"},
      {"twice",
       npy_with_header("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (6,), }",
                       six_doubles),
       "names 'descr' twice"},
      {"structured",
       npy_with_header("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (6,), }", six_doubles),
       "a structured dtype?"},
      {"unsigned", npy_with_header("{'descr': '<u4', 'fortran_order': False, 'shape': (12,), }", six_doubles),
       "element type '<u4' is an unsigned integer type wider than one byte"},
      {"no order", npy_with_header("{'descr': '|f8', 'fortran_order': False, 'shape': (6,), }", six_doubles),
       "has no byte order ('|')"},
      {"overflow",
       npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
                       six_doubles),
       "more elements than can be addressed"},
      {"negative", npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-6,), }", six_doubles),
       "where a dimension (a non-negative integer) belongs"},
      {"garbage after",
       npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), } x", six_doubles),
       "continues after its dict"},
      {"order value", npy_with_header("{'descr': '<f8', 'fortran_order': 0, 'shape': (6,), }", six_doubles),
       "'fortran_order' is not True or False"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.label);
    write_zip(dir.path() / "bad.npz", {{"x.npy", c.bytes}});
    const auto message = error_of([&] { diffpost::read_npz(dir.path() / "bad.npz"); });
    CHECK(message.find("bad.npz' array 'x'") != std::string::npos);
    CHECK(message.find(c.message) != std::string::npos);
  }
  // Python 2's long integers in a shape are read, as numpy reads them.
  write_zip(dir.path() / "long.npz",
            {{"x.npy", npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2L, 3L), }",
                                       six_doubles)}});
  CHECK(diffpost::read_npz(dir.path() / "long.npz").at("x").sizes() == torch::IntArrayRef({2, 3}));
}
