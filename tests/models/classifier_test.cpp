// ImageClassifier: shapes, parameter count, input checks, batch independence, checkpoint round trip, and the
// accuracy of the bundled Fashion-MNIST classifier (examples/prior/fashion_mnist_classifier.pt) on test
// images it never saw in training.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/models/classifier.hpp>

#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cstdint>
#include <filesystem>
#include <string>

namespace {

const std::filesystem::path kBundledClassifier =
    std::filesystem::path(DIFFPOST_SOURCE_DIR) / "examples/prior/fashion_mnist_classifier.pt";

bool fashion_mnist_installed() {
  return std::filesystem::exists(diffpost::debian_fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz");
}

int64_t parameter_count(diffpost::ImageClassifier& model) {
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  return total;
}

}  // namespace

TEST_CASE("ImageClassifier gives logits [B, classes] and features [B, feature_dim]") {
  torch::manual_seed(0);
  diffpost::ImageClassifier model;
  const auto x = torch::rand({3, 1, 28, 28}) * 2 - 1;
  CHECK(model(x).sizes() == torch::IntArrayRef({3, 10}));
  const auto features = model->features(x);
  CHECK(features.sizes() == torch::IntArrayRef({3, 64}));
  // The features are taken after the SiLU, whose minimum is -0.2785 (at x = -1.2785).
  CHECK(features.min().item<double>() >= -0.2785);
  // Parameters counted by hand: conv 3x3 (in*out*9 + out), GroupNorm (2 per channel), linear (in*out + out).
  const int64_t expected = (1 * 32 * 9 + 32) + 2 * 32 + (32 * 64 * 9 + 64) + 2 * 64 + (64 * 64 * 9 + 64) +
                           2 * 64 + (64 * 7 * 7 * 64 + 64) + (64 * 10 + 10);
  CHECK(parameter_count(model) == expected);

  diffpost::ImageClassifier rgb(
      diffpost::ImageClassifierOptions{}.in_channels(3).image_size(32).num_classes(4).feature_dim(16));
  const auto y = torch::rand({2, 3, 32, 32}) * 2 - 1;
  CHECK(rgb(y).sizes() == torch::IntArrayRef({2, 4}));
  CHECK(rgb->features(y).sizes() == torch::IntArrayRef({2, 16}));
}

TEST_CASE("ImageClassifier features of an image do not depend on the rest of the batch or the mode") {
  torch::manual_seed(1);
  diffpost::ImageClassifier model;
  const auto x = torch::rand({4, 1, 28, 28}) * 2 - 1;
  model->train();
  const auto in_batch = model->features(x);
  model->eval();
  const auto alone = model->features(x.narrow(0, 2, 1));
  CHECK(torch::allclose(in_batch.narrow(0, 2, 1), alone, 1e-5, 1e-6));
}

TEST_CASE("ImageClassifier rejects images of the wrong channels, size or rank, and bad options") {
  diffpost::ImageClassifier model;
  CHECK_THROWS_WITH_AS(model(torch::zeros({2, 3, 28, 28})),
                       doctest::Contains("have 3 channel(s) but the classifier takes 1"), c10::Error);
  CHECK_THROWS_WITH_AS(model->features(torch::zeros({2, 1, 32, 32})),
                       doctest::Contains("are 32x32 but the classifier takes 28x28"), c10::Error);
  CHECK_THROWS_WITH_AS(model(torch::zeros({1, 28, 28})), doctest::Contains("expected images [B, 1, 28, 28]"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::ImageClassifier(diffpost::ImageClassifierOptions{}.image_size(30)),
                       doctest::Contains("multiple of 4"), c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::ImageClassifier(diffpost::ImageClassifierOptions{}.base_channels(12)),
                       doctest::Contains("multiple of 8"), c10::Error);
}

TEST_CASE("ImageClassifier round-trips through save_checkpoint and load_checkpoint") {
  torch::manual_seed(2);
  diffpost::ImageClassifier saved, loaded;
  const diffpost::testing::TempDir dir("classifier-test");
  const auto path = dir.path() / "classifier.pt";
  diffpost::save_checkpoint(saved, path);
  const auto report = diffpost::load_checkpoint(loaded, path);
  CHECK(report.loaded.size() == 16);  // weight and bias of 3 convs, 3 GroupNorms and 2 linears
  const auto x = torch::rand({2, 1, 28, 28}) * 2 - 1;
  CHECK(torch::equal(saved(x), loaded(x)));
}

TEST_CASE("the bundled classifier labels >= 85% of the first 500 Fashion-MNIST test images correctly" *
          doctest::skip(!fashion_mnist_installed())) {
  diffpost::ImageClassifier model;
  diffpost::load_checkpoint(model, kBundledClassifier);
  model->eval();
  const auto dir = diffpost::debian_fashion_mnist_dir();
  const auto images = diffpost::read_idx_images(dir / "t10k-images-idx3-ubyte.gz", 500);
  const auto labels = diffpost::read_idx_labels(dir / "t10k-labels-idx1-ubyte.gz", 500);
  torch::NoGradGuard no_grad;
  const double accuracy = model(images).argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
  MESSAGE("bundled classifier accuracy on the first 500 test images: ", accuracy);
  CHECK(accuracy >= 0.85);
}
