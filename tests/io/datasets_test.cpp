// IDX and image-folder reading: tiny files written here (plain and gzip) with known bytes, the error paths,
// and the first image of Debian's Fashion-MNIST test split against statistics computed independently with
// Python's gzip and numpy (mean -0.665306..., std 0.538818..., pixel sum 33456, label 9 = ankle boot).
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/progress.hpp>

#include "support/error_of.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include <zlib.h>
#include "support/doctest_with_torch.hpp"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using diffpost::testing::error_of;
using diffpost::testing::TempDir;

namespace {

std::vector<unsigned char> idx_bytes(unsigned char type, const std::vector<uint32_t>& dims,
                                     const std::vector<unsigned char>& data) {
  std::vector<unsigned char> bytes{0, 0, type, static_cast<unsigned char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<unsigned char>(d >> shift));
  }
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

void write_plain(const fs::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const fs::path& path, const std::vector<unsigned char>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  REQUIRE(file != nullptr);
  REQUIRE(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  gzclose(file);
}

}  // namespace

TEST_CASE("read_idx_images reads plain and gzip IDX files to [-1, 1] in row-major order") {
  const TempDir scratch("datasets-tiny");
  const auto& dir = scratch.path();
  // Two 2x3 images: bytes 0, 51, 102, ... so that x = 2 * p / 255 - 1 is exact in float.
  std::vector<unsigned char> pixels;
  for (int i = 0; i < 12; ++i) pixels.push_back(static_cast<unsigned char>((i * 51) % 256));
  const auto bytes = idx_bytes(0x08, {2, 2, 3}, pixels);
  write_plain(dir / "images.idx", bytes);
  write_gzip(dir / "images.idx.gz", bytes);
  for (const auto* name : {"images.idx", "images.idx.gz"}) {
    CAPTURE(name);
    auto images = diffpost::read_idx_images(dir / name);
    REQUIRE(images.sizes() == torch::IntArrayRef{2, 1, 2, 3});
    CHECK(images.dtype() == torch::kFloat32);
    for (int i = 0; i < 12; ++i) {
      const double expected = 2.0 * ((i * 51) % 256) / 255.0 - 1.0;
      CHECK(images.flatten()[i].item<double>() == doctest::Approx(expected).epsilon(1e-6));
    }
  }
  CHECK(diffpost::read_idx_images(dir / "images.idx", 1).size(0) == 1);

  write_gzip(dir / "labels.gz", idx_bytes(0x08, {4}, {3, 1, 4, 1}));
  auto labels = diffpost::read_idx_labels(dir / "labels.gz");
  CHECK(labels.dtype() == torch::kLong);
  CHECK(torch::equal(labels, torch::tensor({3, 1, 4, 1}, torch::kLong)));
}

TEST_CASE("read_idx errors name the path and the problem") {
  const TempDir scratch("datasets-errors");
  const auto& dir = scratch.path();
  CHECK(error_of([&] { diffpost::read_idx(dir / "missing.gz"); }).find("no such file") != std::string::npos);

  write_plain(dir / "text.idx", {'h', 'e', 'l', 'l', 'o', '\n'});
  CHECK(error_of([&] { diffpost::read_idx(dir / "text.idx"); }).find("not an IDX file") != std::string::npos);

  write_plain(dir / "float.idx", idx_bytes(0x0D, {1}, {0, 0, 0, 0}));
  CHECK(error_of([&] { diffpost::read_idx(dir / "float.idx"); }).find("only unsigned bytes") !=
        std::string::npos);

  auto truncated = idx_bytes(0x08, {2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  truncated.resize(truncated.size() - 3);
  write_gzip(dir / "short.gz", truncated);
  const auto message = error_of([&] { diffpost::read_idx(dir / "short.gz"); });
  CHECK(message.find("truncated") != std::string::npos);
  CHECK(message.find("short.gz") != std::string::npos);

  write_plain(dir / "labels.idx", idx_bytes(0x08, {2}, {0, 1}));
  CHECK(error_of([&] { diffpost::read_idx_images(dir / "labels.idx"); }).find("label file") !=
        std::string::npos);
}

// Skipped (and reported so) where Debian's dataset-fashion-mnist is not installed; .ci/deps installs it.
TEST_CASE("the first Fashion-MNIST test image matches statistics computed with numpy" *
          doctest::skip(!fs::exists(diffpost::debian_fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz"))) {
  const auto dir = diffpost::debian_fashion_mnist_dir();
  auto images = diffpost::read_idx_images(dir / "t10k-images-idx3-ubyte.gz", 2);
  REQUIRE(images.sizes() == torch::IntArrayRef{2, 1, 28, 28});
  auto first = images[0].to(torch::kFloat64);
  CHECK(first.mean().item<double>() == doctest::Approx(-0.6653061224489795).epsilon(1e-6));
  CHECK(first.std(/*unbiased=*/false).item<double>() == doctest::Approx(0.5388181013153257).epsilon(1e-6));
  // Back to bytes: the pixel sum of the first image and its centre pixel.
  auto bytes = ((first + 1.0) * 255.0 / 2.0).round();
  CHECK(bytes.sum().item<double>() == 33456.0);
  CHECK(bytes[0][14][14].item<double>() == 110.0);
  auto labels = diffpost::read_idx_labels(dir / "t10k-labels-idx1-ubyte.gz");
  REQUIRE(labels.size(0) == 10000);
  CHECK(torch::equal(labels.narrow(0, 0, 10), torch::tensor({9, 2, 1, 1, 6, 1, 4, 6, 5, 7}, torch::kLong)));
}

TEST_CASE("load_image_folder stacks same-size images by name and rejects other sizes") {
  const TempDir scratch("datasets-folder");
  const auto& dir = scratch.path();
  auto a = torch::full({1, 1, 4, 5}, -1.0);
  auto b = torch::full({1, 1, 4, 5}, 1.0);
  diffpost::save_image(b, (dir / "b.png").string());
  diffpost::save_image(a, (dir / "a.png").string());
  auto batch = diffpost::load_image_folder(dir);
  REQUIRE(batch.sizes() == torch::IntArrayRef{2, 1, 4, 5});
  CHECK(batch[0].max().item<double>() == -1.0);  // a.png first
  CHECK(batch[1].min().item<double>() == 1.0);

  diffpost::save_image(torch::zeros({1, 1, 3, 5}), (dir / "c.png").string());
  const auto message = error_of([&] { diffpost::load_image_folder(dir); });
  CHECK(message.find("c.png") != std::string::npos);
  CHECK(message.find("same size") != std::string::npos);

  const TempDir empty("datasets-empty");
  CHECK(error_of([&] { diffpost::load_image_folder(empty.path()); }).find("no files") != std::string::npos);
}

TEST_CASE("ProgressBar formats counts, rates, elapsed time and ETA") {
  CHECK(diffpost::ProgressBar::format_duration(0) == "00:00");
  CHECK(diffpost::ProgressBar::format_duration(125) == "02:05");
  CHECK(diffpost::ProgressBar::format_duration(3725) == "1:02:05");
  CHECK(diffpost::ProgressBar::format_duration(NAN) == "--:--");

  diffpost::ProgressBar bar(100, "train", /*interactive=*/false);
  bar.log_interval(1e9);  // nothing printed until finish()
  bar.update(25, "loss 0.5");
  // 25 of 100 in 50 s: 0.5 it/s = 2 s/it, 75 left -> 150 s.
  const auto line = bar.line(50.0);
  CHECK(line.find("train  25% [######..................] 25/100") == 0);
  CHECK(line.find("2.00 s/it 00:50 elapsed, ETA 02:30 | loss 0.5") != std::string::npos);

  diffpost::ProgressBar open_ended(0, "", false);
  open_ended.log_interval(1e9);
  open_ended.update(30);
  CHECK(open_ended.line(10.0) == "30 3.00 it/s 00:10 elapsed");
}
