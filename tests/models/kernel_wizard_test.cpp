// KernelWizard (bkse's blur network) against the reference module: state-dict keys and shapes in order, the
// parts built without the kernel extractor, the size rule, the reproducible random weights. Its outputs are
// compared with the reference's in tests/operators/nonlinear_blur_test.cpp.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/kernel_wizard.hpp>

#include "support/error_of.hpp"
#include "support/kernel_wizard.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace diffpost;
using diffpost::testing::error_of;
using diffpost::testing::small_kernel_wizard_options;

namespace {

/// "name shape" lines, the key list the reference's state_dict() printed
/// (tests/data/kernel_wizard/README.md).
std::vector<std::string> reference_keys() {
  std::ifstream in(std::string(DIFFPOST_TEST_DATA_DIR) + "/kernel_wizard/gopro_wvae_keys.txt");
  REQUIRE_MESSAGE(in.good(), "missing test data kernel_wizard/gopro_wvae_keys.txt");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> keys_of(const torch::nn::Module& module) {
  std::vector<std::string> lines;
  for (const auto& [name, tensor] : state_dict(module)) {
    std::ostringstream line;
    line << name << " ";
    for (int64_t i = 0; i < tensor.dim(); ++i) line << (i ? "," : "") << tensor.size(i);
    lines.push_back(line.str());
  }
  return lines;
}

}  // namespace

TEST_CASE("KernelWizard has the reference's state-dict keys and shapes, in its order (GOPRO_wVAE layout)") {
  const auto expected = reference_keys();
  REQUIRE(expected.size() == 159);
  KernelWizard network;
  const auto actual = keys_of(*network);
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i);
    CHECK(actual[i] == expected[i]);
  }
  CHECK(state_dict(*network).numel() == 115265475);
}

TEST_CASE("without its kernel extractor the network lacks exactly the kernel_extractor keys") {
  KernelWizard applier(KernelWizardOptions{}.with_kernel_extractor(false));
  std::vector<std::string> expected;
  for (const auto& line : reference_keys())
    if (line.rfind("kernel_extractor.", 0) != 0) expected.push_back(line);
  CHECK(keys_of(*applier) == expected);
  const auto sharp = torch::rand({1, 3, 128, 128});
  CHECK(error_of([&] { applier->extract_kernel(sharp, sharp); }).find("built without its kernel extractor") !=
        std::string::npos);
}

TEST_CASE("kernel_applier_copy copies the weights to a dtype, without the extractor and without grad") {
  KernelWizard network(small_kernel_wizard_options());
  fill_random_kernel_wizard(*network, 3);
  auto copy = kernel_applier_copy(*network, torch::TensorOptions().dtype(torch::kFloat64));
  const auto from = network->named_parameters();
  int64_t compared = 0;
  for (const auto& item : copy->named_parameters()) {
    if (!item.value().defined()) continue;
    CHECK(item.key().rfind("kernel_extractor.", 0) != 0);
    CHECK(item.value().dtype() == torch::kFloat64);
    CHECK_FALSE(item.value().requires_grad());
    CHECK(torch::equal(item.value(), from[item.key()].to(torch::kFloat64)));
    ++compared;
  }
  CHECK(compared > 20);
  const auto sharp = torch::rand({2, 3, 128, 128}, torch::kFloat64);
  const auto latent = torch::randn({1, 32, 1, 1}, torch::kFloat64);
  const auto via_copy = copy->adapt_kernel(sharp, latent);
  const auto direct = network->adapt_kernel(sharp.to(torch::kFloat32), latent.to(torch::kFloat32));
  CHECK(torch::allclose(via_copy.to(torch::kFloat32), direct, 1e-5, 1e-5));
}

TEST_CASE("adapt_kernel applies a latent of batch 1 to every image, and one of batch B image by image") {
  KernelWizard network(small_kernel_wizard_options());
  fill_random_kernel_wizard(*network, 4);
  const auto sharp = torch::rand({2, 3, 128, 256});
  const auto latents = torch::randn({2, 32, 1, 2});
  const auto both = network->adapt_kernel(sharp, latents);
  for (int64_t i = 0; i < 2; ++i) {
    const auto alone = network->adapt_kernel(sharp.slice(0, i, i + 1), latents.slice(0, i, i + 1));
    CHECK(torch::allclose(both.slice(0, i, i + 1), alone, 1e-6, 1e-6));
  }
  const auto shared = network->adapt_kernel(sharp, latents.slice(0, 0, 1));
  CHECK(torch::allclose(shared.slice(0, 0, 1), both.slice(0, 0, 1), 1e-6, 1e-6));
  CHECK_FALSE(torch::allclose(shared.slice(0, 1, 2), both.slice(0, 1, 2), 1e-3, 1e-3));  // the latent matters
}

TEST_CASE("KernelWizard refuses images it cannot take and latents that do not fit, naming the rule") {
  KernelWizard network(small_kernel_wizard_options().with_kernel_extractor(false));
  const auto latent = torch::randn({1, 32, 1, 1});
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({1, 3, 200, 128}), latent);
        }).find("multiples of 128 (it halves them seven times), got 200x128; crop or resize to 128x128") !=
        std::string::npos);
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({1, 1, 128, 128}), latent);
        }).find("takes 3-channel images (input_nc), got 1 channels") != std::string::npos);
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({3, 128, 128}), latent);
        }).find("expected an image batch [B, C, H, W], got shape [3, 128, 128]") != std::string::npos);
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({1, 3, 256, 256}), latent);
        }).find("is for 128x128 images, but the images are 256x256") != std::string::npos);
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({1, 3, 128, 128}), torch::randn({1, 512, 1, 1}));
        }).find("expected a kernel latent [1 or B, 32, H/128, W/128], got shape [1, 512, 1, 1]") !=
        std::string::npos);
  CHECK(error_of([&] {
          network->adapt_kernel(torch::rand({2, 3, 128, 128}), torch::randn({3, 32, 1, 1}));
        }).find("a kernel latent of batch 3 for an image batch of 2") != std::string::npos);
  CHECK(error_of([] { KernelWizard bad(KernelWizardOptions{}.nf(0)); }).find("nf must be positive, got 0") !=
        std::string::npos);
}

TEST_CASE("fill_random_kernel_wizard is reproducible and scaled as documented") {
  KernelWizard a(small_kernel_wizard_options()), b(small_kernel_wizard_options()),
      c(small_kernel_wizard_options());
  fill_random_kernel_wizard(*a, 7);
  fill_random_kernel_wizard(*b, 7);
  fill_random_kernel_wizard(*c, 8);
  const auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  CHECK(torch::equal(pa["adapter.model.up.1.weight"], pb["adapter.model.up.1.weight"]));
  CHECK_FALSE(torch::equal(pa["adapter.model.up.1.weight"], pc["adapter.model.up.1.weight"]));
  // The first tensor drawn is the first key's: N(0, 1) times sqrt(2 / fan_in) from a generator seeded 7.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(7);
  const auto first = at::randn({4, 3, 3, 3}, generator, torch::TensorOptions().dtype(torch::kFloat32)) *
                     std::sqrt(2.0 / 27.0);
  CHECK(torch::equal(pa["feature_extractor.0.weight"], first));
  CHECK(pa["feature_extractor.0.bias"].abs().max().item<double>() < 0.1);
}
