// The FID Inception against pytorch-fid run by Python on random weights in the exact layout of
// pt_inception-2015-12-05-6726825d.pth (tests/data/metrics/fid, README.md there): the weights are regenerated
// here from the same seed, written with diffpost's writer and read back through the strict loader; the
// images are the PNG files pytorch-fid read. Then the strict loader's refusals.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/metrics/fid_inception.hpp>

#include "support/error_of.hpp"
#include "support/metric_weights.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using diffpost::FidInceptionV3;
using diffpost::StateDict;
using diffpost::testing::error_of;
using diffpost::testing::random_fid_inception;
using diffpost::testing::TempDir;

namespace {

const fs::path kFidData = fs::path(DIFFPOST_TEST_DATA_DIR) / "metrics" / "fid";

// The four images pytorch-fid read, as diffpost loads them: [1, C, H, W] in [-1, 1].
std::vector<torch::Tensor> fixture_images() {
  std::vector<torch::Tensor> images;
  for (const char* name : {"a_256x256.png", "b_48x64.png", "c_gray_64x64.png", "d_320x300.png"})
    images.push_back(diffpost::load_image((kFidData / name).string()));
  return images;
}

}  // namespace

TEST_CASE("FidInceptionV3 has torchvision's Inception3 keys, without fc") {
  FidInceptionV3 inception;
  const auto state = diffpost::state_dict(*inception);
  CHECK(state.size() == 564);  // torchvision's 566 keys (aux_logits=False), less fc.weight and fc.bias
  CHECK(state.at("Conv2d_1a_3x3.conv.weight").sizes() == torch::IntArrayRef({32, 3, 3, 3}));
  CHECK(state.at("Mixed_6b.branch7x7_2.conv.weight").sizes() == torch::IntArrayRef({128, 128, 1, 7}));
  CHECK(state.at("Mixed_7c.branch_pool.conv.weight").sizes() == torch::IntArrayRef({192, 2048, 1, 1}));
  CHECK(state.at("Mixed_7b.branch3x3dbl_3b.bn.running_var").sizes() == torch::IntArrayRef({384}));
  CHECK(state.contains("Mixed_5b.branch_pool.bn.num_batches_tracked"));
  CHECK_FALSE(state.contains("fc.weight"));
  int64_t parameters = 0;
  for (const auto& parameter : inception->parameters()) parameters += parameter.numel();
  CHECK(parameters == 21785568);  // torchvision's Inception3 (1008 classes, no aux) less fc's 2,065,392
}

TEST_CASE("FidInceptionV3 gives pytorch-fid's pool3 features of the same PNG files") {
  TempDir dir("fid-inception");
  const auto path = dir.path() / diffpost::kFidInceptionWeightsFile;
  diffpost::save_state_dict(random_fid_inception(), path);
  auto inception = diffpost::load_fid_inception(path);
  const auto expected = diffpost::read_state_dict(kFidData / "pool3_features.pt").at("pool3");
  REQUIRE(expected.sizes() == torch::IntArrayRef({4, 2048}));

  torch::NoGradGuard no_grad;
  const auto images = fixture_images();
  CHECK(images[2].size(1) == 1);  // the gray PNG: repeated to RGB inside, as PIL's convert("RGB")
  std::vector<torch::Tensor> rows;
  for (const auto& image : images) rows.push_back(inception(image));
  const auto features = torch::cat(rows);
  CHECK(features.sizes() == torch::IntArrayRef({4, 2048}));
  const double scale = expected.abs().max().item<double>();
  const double max_relative = (features - expected).abs().max().item<double>() / scale;
  CHECK(max_relative < 1e-5);
  for (int64_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    const double relative = ((features[i] - expected[i]).norm() / expected[i].norm()).item<double>();
    CHECK(relative < 1e-5);
  }
  // A batch gives each image's features; one image [C, H, W] is a batch of one.
  const auto pair = inception(torch::cat({images[0], images[0].flip(3)}));
  CHECK((pair[0] - features[0]).abs().max().item<double>() < 1e-5 * scale);
  CHECK((inception(images[1][0]) - features[1]).abs().max().item<double>() < 1e-5 * scale);
  // Batch norm uses the running statistics whatever the mode.
  inception->train();
  CHECK((inception(images[1]) - features[1]).abs().max().item<double>() < 1e-5 * scale);
}

TEST_CASE("the FID Inception loader is strict, names the keys, and tells torchvision's Inception apart") {
  TempDir dir("fid-strict");
  FidInceptionV3 inception;
  const auto state = random_fid_inception();

  StateDict imagenet;
  for (const auto& [name, tensor] : state)
    imagenet.insert(name, name == "fc.weight" ? torch::zeros({1}).expand({1000, 2048}) : tensor);
  CHECK(error_of([&] {
          diffpost::load_fid_inception_weights(inception, imagenet);
        }).find("has an fc layer of shape [1000, 2048]: not pytorch-fid's FID Inception") !=
        std::string::npos);

  StateDict with_aux;
  for (const auto& [name, tensor] : state) with_aux.insert(name, tensor);
  with_aux.insert("AuxLogits.conv0.conv.weight", torch::zeros({128, 768, 1, 1}));
  CHECK(error_of([&] {
          diffpost::load_fid_inception_weights(inception, with_aux);
        }).find("'AuxLogits.conv0.conv.weight' (file shape [128, 768, 1, 1]) is not in the model") !=
        std::string::npos);

  StateDict missing_conv;
  for (const auto& [name, tensor] : state)
    if (name != "Mixed_6e.branch7x7dbl_3.conv.weight") missing_conv.insert(name, tensor);
  const auto missing = error_of([&] { diffpost::load_fid_inception_weights(inception, missing_conv); });
  CHECK(missing.find("'Mixed_6e.branch7x7dbl_3.conv.weight' (model shape [192, 192, 1, 7]) is missing") !=
        std::string::npos);
  CHECK(missing.find("FID expects pytorch-fid's pt_inception-2015-12-05-6726825d.pth") != std::string::npos);

  // Files written before PyTorch 0.4.1 have no num_batches_tracked, and no fc is needed.
  StateDict old_style;
  for (const auto& [name, tensor] : state)
    if (!name.ends_with("num_batches_tracked") && !name.starts_with("fc.")) old_style.insert(name, tensor);
  diffpost::load_fid_inception_weights(inception, old_style);
  CHECK(torch::equal(inception->named_buffers()["Mixed_7c.branch_pool.bn.running_mean"],
                     state.at("Mixed_7c.branch_pool.bn.running_mean")));
}

TEST_CASE("FidInceptionV3 refuses images it cannot read") {
  FidInceptionV3 inception;
  CHECK(error_of([&] {
          inception(torch::zeros({1, 4, 8, 8}));
        }).find("have 4 channels") != std::string::npos);
  CHECK(error_of([&] {
          inception(torch::zeros({8, 8}));
        }).find("expected images [B, C, H, W]") != std::string::npos);
  CHECK(error_of([&] {
          inception(torch::zeros({1, 3, 8, 8}, torch::kFloat64));
        }).find("move it with inception->to(device, dtype)") != std::string::npos);
}
