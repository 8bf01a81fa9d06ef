// LPIPS against the lpips package (richzhang/PerceptualSimilarity) run by Python on random weights in the
// exact file layouts (tests/data/metrics/lpips, README.md there): torchvision backbones regenerated here from
// the same seeds and written with diffpost's writer, lpips's legacy-format head files committed; values per
// image, per layer and their gradient; sizes, channels and the strict loaders' refusals.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/metrics/lpips.hpp>

#include "support/error_of.hpp"
#include "support/metric_weights.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using diffpost::Lpips;
using diffpost::LpipsNetwork;
using diffpost::StateDict;
using diffpost::testing::error_of;
using diffpost::testing::random_backbone;
using diffpost::testing::TempDir;

namespace {

const fs::path kLpipsData = fs::path(DIFFPOST_TEST_DATA_DIR) / "metrics" / "lpips";

// The backbone written like torchvision's file, in a folder that lives as long as the test.
fs::path write_backbone(const TempDir& dir, LpipsNetwork network) {
  const auto path = dir.path() / diffpost::lpips_backbone_weights_file(network);
  diffpost::save_state_dict(random_backbone(network), path);
  return path;
}

fs::path heads_file(LpipsNetwork network) {
  return kLpipsData / (std::string(diffpost::lpips_network_name(network)) + "_heads_legacy.pth");
}

double max_abs_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Sets an environment variable for the scope of the object, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("lpips_minimum_image_size is the smallest side the backbone passes (31 AlexNet, 16 VGG16)") {
  // lpips itself fails at 30 and 15 pixels (the Python run in README.md).
  CHECK(diffpost::lpips_minimum_image_size(LpipsNetwork::alex) == 31);
  CHECK(diffpost::lpips_minimum_image_size(LpipsNetwork::vgg) == 16);
}

TEST_CASE("the LPIPS state dict has torchvision's and lpips's key names") {
  Lpips alex(LpipsNetwork::alex);
  std::vector<std::string> keys;
  for (const auto& item : alex->named_parameters()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{
                    "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
                    "features.6.weight", "features.6.bias", "features.8.weight", "features.8.bias",
                    "features.10.weight", "features.10.bias", "lin0.model.1.weight", "lin1.model.1.weight",
                    "lin2.model.1.weight", "lin3.model.1.weight", "lin4.model.1.weight"});
  Lpips vgg(LpipsNetwork::vgg);
  int64_t convolutions = 0;
  for (const auto& item : vgg->named_parameters()) convolutions += item.key().ends_with(".bias") ? 1 : 0;
  CHECK(convolutions == 13);
  CHECK(vgg->named_parameters()["features.28.weight"].sizes() == torch::IntArrayRef({512, 512, 3, 3}));
  CHECK(vgg->named_parameters()["lin4.model.1.weight"].sizes() == torch::IntArrayRef({1, 512, 1, 1}));
  for (const auto& item : vgg->named_parameters()) CHECK_FALSE(item.value().requires_grad());
}

TEST_CASE("LPIPS equals lpips.LPIPS(version='0.1') per image, per layer and in its gradient") {
  const auto cases = diffpost::read_state_dict(kLpipsData / "cases.pt");
  TempDir dir("lpips");
  for (const auto network : {LpipsNetwork::alex, LpipsNetwork::vgg}) {
    const std::string name = diffpost::lpips_network_name(network);
    CAPTURE(name);
    auto lpips = diffpost::load_lpips(
        network,
        diffpost::LpipsWeightPaths{}.backbone(write_backbone(dir, network)).heads(heads_file(network)));

    const auto x0 = cases.at("rgb_x0").clone().requires_grad_(true);
    const auto values = lpips(x0, cases.at("rgb_x1"));
    values.sum().backward();
    CHECK(values.sizes() == torch::IntArrayRef({3}));
    const double value_error = max_abs_difference(values.detach(), cases.at(name + "_rgb_lpips"));
    CHECK(value_error < 1e-5);
    const double layer_error = max_abs_difference(lpips->layers(cases.at("rgb_x0"), cases.at("rgb_x1")),
                                                  cases.at(name + "_rgb_layers"));
    CHECK(layer_error < 1e-5);
    const auto& reference_gradient = cases.at(name + "_rgb_grad_x0");
    const double gradient_error =
        max_abs_difference(x0.grad(), reference_gradient) / reference_gradient.abs().max().item<double>();
    CHECK(gradient_error < 1e-4);

    torch::NoGradGuard no_grad;
    for (const std::string& group : std::vector<std::string>{"odd", "gray", name + "_min"}) {
      CAPTURE(group);
      const auto x = cases.at(group + "_x0"), y = cases.at(group + "_x1");
      const auto expected = cases.at((group.starts_with(name) ? group : name + "_" + group) + "_lpips");
      const double error = max_abs_difference(lpips(x, y), expected);
      CHECK(error < 1e-5);
      // One image [C, H, W] gives the same value as a batch of one.
      CHECK(max_abs_difference(lpips(x[0], y[0]), expected) < 1e-5);
    }
    // Identical images are at distance 0; the batch does not change a pair's value.
    CHECK(lpips(cases.at("rgb_x1"), cases.at("rgb_x1")).abs().max().item<double>() == 0.0);
    const auto single = lpips(cases.at("rgb_x0").narrow(0, 1, 1), cases.at("rgb_x1").narrow(0, 1, 1));
    CHECK(std::abs(single.item<double>() - cases.at(name + "_rgb_lpips")[1].item<double>()) < 1e-5);
    // In float64 it agrees with the float32 reference to its rounding.
    lpips->to(torch::kFloat64);
    const auto in_double =
        lpips(cases.at("rgb_x0").to(torch::kFloat64), cases.at("rgb_x1").to(torch::kFloat64));
    CHECK((in_double.scalar_type() == torch::kFloat64));
    CHECK(max_abs_difference(in_double, cases.at(name + "_rgb_lpips")) < 1e-5);
  }
}

TEST_CASE("LPIPS refuses images it cannot compare, naming the shape and the fix") {
  Lpips alex(LpipsNetwork::alex);
  const auto image = torch::zeros({2, 3, 40, 40});
  CHECK(error_of([&] {
          alex(torch::zeros({2, 3, 30, 64}), torch::zeros({2, 3, 30, 64}));
        }).find("images of 30x64 pixels are too small; the AlexNet backbone needs at least 31x31") !=
        std::string::npos);
  Lpips vgg(LpipsNetwork::vgg);
  CHECK(error_of([&] {
          vgg(torch::zeros({1, 3, 15, 15}), torch::zeros({1, 3, 15, 15}));
        }).find("the VGG16 backbone needs at least 16x16") != std::string::npos);
  CHECK(error_of([&] {
          alex(image, torch::zeros({2, 3, 40, 41}));
        }).find("image shapes differ") != std::string::npos);
  CHECK(error_of([&] {
          alex(torch::zeros({2, 4, 40, 40}), torch::zeros({2, 4, 40, 40}));
        }).find("have 4 channels; expected 3 (RGB) or 1 (grayscale)") != std::string::npos);
  CHECK(error_of([&] {
          alex(image.to(torch::kFloat64), image.to(torch::kFloat64));
        }).find("move it with lpips->to(device, dtype)") != std::string::npos);
  CHECK(error_of([&] {
          alex(image.to(torch::kInt32), image.to(torch::kInt32));
        }).find("expected floating-point images") != std::string::npos);
}

TEST_CASE("the LPIPS loaders are strict: wrong heads or backbones are refused, naming the keys") {
  TempDir dir("lpips-strict");
  Lpips alex(LpipsNetwork::alex);
  // lpips's strict=False would leave these heads random (PerceptualSimilarity #106).
  const auto vgg_heads = error_of([&] { diffpost::load_lpips_heads(alex, heads_file(LpipsNetwork::vgg)); });
  CHECK(vgg_heads.find("vgg_heads_legacy.pth' does not match the model") != std::string::npos);
  CHECK(vgg_heads.find("lin1.model.1.weight: file [1, 128, 1, 1], model [1, 192, 1, 1]") !=
        std::string::npos);
  CHECK(vgg_heads.find("expects lpips's weights/v0.1/alex.pth") != std::string::npos);

  // A whole lpips model's state dict (what a user may save from Python) has more than the heads.
  auto heads = diffpost::read_state_dict(heads_file(LpipsNetwork::alex));
  StateDict whole;
  for (const auto& [name, tensor] : heads) whole.insert(name, tensor);
  whole.insert("lins.0.model.1.weight", heads.at("lin0.model.1.weight"));
  whole.insert("net.slice1.0.weight", torch::zeros({64, 3, 11, 11}));
  const auto extra = error_of([&] { diffpost::load_lpips_heads(alex, whole); });
  CHECK(extra.find("unexpected keys (2)") != std::string::npos);
  CHECK(extra.find("net.slice1.0.weight [64, 3, 11, 11]") != std::string::npos);

  StateDict four_heads;
  for (const auto& [name, tensor] : heads)
    if (name != "lin4.model.1.weight") four_heads.insert(name, tensor);
  CHECK(error_of([&] {
          diffpost::load_lpips_heads(alex, four_heads);
        }).find("'lin4.model.1.weight' (model shape [1, 256, 1, 1]) is missing from the file") !=
        std::string::npos);

  // A backbone given as heads, and heads as a backbone.
  const auto alex_backbone = write_backbone(dir, LpipsNetwork::alex);
  CHECK(error_of([&] { diffpost::load_lpips_heads(alex, alex_backbone); }).find("unexpected keys (16)") !=
        std::string::npos);
  CHECK(error_of([&] {
          diffpost::load_lpips_backbone(alex, heads_file(LpipsNetwork::alex));
        }).find("missing keys (10)") != std::string::npos);

  // The other network's backbone, a key torchvision's AlexNet does not have, a backbone without classifier.
  const auto vgg_backbone = write_backbone(dir, LpipsNetwork::vgg);
  const auto wrong_backbone = error_of([&] { diffpost::load_lpips_backbone(alex, vgg_backbone); });
  CHECK(wrong_backbone.find("'features.0.weight' has shape [64, 3, 3, 3] in the file but [64, 3, 11, 11]") !=
        std::string::npos);
  CHECK(wrong_backbone.find("expects torchvision's alexnet-owt-7be5be79.pth") != std::string::npos);
  auto backbone = random_backbone(LpipsNetwork::alex);
  StateDict with_extra;
  for (const auto& [name, tensor] : backbone) with_extra.insert(name, tensor);
  with_extra.insert("classifier.7.weight", torch::zeros({2}));
  CHECK(error_of([&] {
          diffpost::load_lpips_backbone(alex, with_extra);
        }).find("'classifier.7.weight' (file shape [2]) is not in the model") != std::string::npos);
  StateDict features_only;
  for (const auto& [name, tensor] : backbone)
    if (name.starts_with("features.")) features_only.insert(name, tensor);
  diffpost::load_lpips_backbone(alex, features_only);
  CHECK(torch::equal(alex->named_parameters()["features.10.bias"], backbone.at("features.10.bias")));
}

TEST_CASE("LPIPS weights are found where torch.hub and pip put them, else one line says where to look") {
  TempDir dir("lpips-find");
  {
    ScopedEnv torch_home("TORCH_HOME", (dir.path() / "torch").string());
    CHECK(diffpost::torch_hub_checkpoints_folder() == dir.path() / "torch" / "hub" / "checkpoints");
    const auto missing = error_of([] { diffpost::find_lpips_backbone_weights(LpipsNetwork::vgg); });
    CHECK(missing.find("the weights of the LPIPS 'vgg' backbone ('vgg16-397923af.pth') are not in " +
                       (dir.path() / "torch" / "hub" / "checkpoints").string()) != std::string::npos);
    CHECK(missing.find("pass its path explicitly. diffpost never downloads.") != std::string::npos);
    CHECK(missing.find('\n') == std::string::npos);
    CHECK(error_of([] {
            diffpost::find_fid_inception_weights("use --fid-inception FILE");
          }).find("'pt_inception-2015-12-05-6726825d.pth') are not in") != std::string::npos);
    fs::create_directories(dir.path() / "torch" / "hub" / "checkpoints");
    const auto backbone = write_backbone(dir, LpipsNetwork::alex);
    fs::copy_file(backbone, dir.path() / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth");
    CHECK(diffpost::find_lpips_backbone_weights(LpipsNetwork::alex) ==
          dir.path() / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth");
  }
  {
    ScopedEnv torch_home("TORCH_HOME", std::nullopt);
    ScopedEnv cache("XDG_CACHE_HOME", (dir.path() / "cache").string());
    CHECK(diffpost::torch_hub_checkpoints_folder() == dir.path() / "cache" / "torch" / "hub" / "checkpoints");
    ScopedEnv no_cache("XDG_CACHE_HOME", std::nullopt);
    ScopedEnv home("HOME", (dir.path() / "home").string());
    CHECK(diffpost::torch_hub_checkpoints_folder() ==
          dir.path() / "home" / ".cache" / "torch" / "hub" / "checkpoints");
  }
  {
    // pip's layout inside a virtual environment, searched first.
    ScopedEnv venv("VIRTUAL_ENV", (dir.path() / "venv").string());
    const auto candidates = diffpost::lpips_heads_candidates(LpipsNetwork::alex);
    const bool installed = std::any_of(candidates.begin(), candidates.end(),
                                       [](const fs::path& path) { return fs::is_regular_file(path); });
    if (!installed) {
      const auto missing =
          error_of([] { diffpost::find_lpips_heads_weights(LpipsNetwork::alex, "use --lpips-linear"); });
      CHECK(missing.find("the LPIPS 'alex' linear heads (lpips/weights/v0.1/alex.pth") != std::string::npos);
      CHECK(missing.find("use --lpips-linear") != std::string::npos);
    }
    const auto package =
        dir.path() / "venv" / "lib" / "python3.11" / "site-packages" / "lpips" / "weights" / "v0.1";
    fs::create_directories(package);
    fs::copy_file(heads_file(LpipsNetwork::alex), package / "alex.pth");
    CHECK(diffpost::find_lpips_heads_weights(LpipsNetwork::alex) == package / "alex.pth");
  }
}
