// NonlinearBlurOperator (the DPS paper's non-uniform blur, over bkse's KernelWizard): parity with the DPS
// reference's forward on random weights in the GOPRO_wVAE.pth layout (tests/data/kernel_wizard/README.md),
// strict loading, the input gradient against finite differences, the size rule, and the fixed latent
// against the reference's redrawn one.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/random.hpp>

#include "support/error_of.hpp"
#include "support/kernel_wizard.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <chrono>
#include <cmath>
#include <string>
#include <utility>

using namespace diffpost;
using diffpost::testing::error_of;
using diffpost::testing::small_kernel_wizard_options;
using diffpost::testing::TempDir;

namespace {

const std::string kData = std::string(DIFFPOST_TEST_DATA_DIR) + "/kernel_wizard/";

double relative_max_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  return ((actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs().max() /
          expected.to(torch::kFloat64).abs().max())
      .item<double>();
}

/// A small random network in memory (no file).
KernelWizard small_network(uint64_t seed) {
  KernelWizard network(small_kernel_wizard_options());
  fill_random_kernel_wizard(*network, seed);
  return network;
}

/// `state` without `skip` and with `extra` appended (when given).
StateDict edited(const StateDict& state, const std::string& skip,
                 const std::pair<std::string, torch::Tensor>& extra = {}) {
  StateDict out;
  for (const auto& [name, tensor] : state)
    if (name != skip) out.insert(name, tensor);
  if (!extra.first.empty()) out.insert(extra.first, extra.second);
  return out;
}

}  // namespace

TEST_CASE("the nonlinear blur matches the DPS reference's forward on random GOPRO-layout weights") {
  // The weights the reference ran with: written here in the layout of GOPRO_wVAE.pth and read back through
  // the checkpoint reader, strictly.
  TempDir dir("nonlinear-blur-parity");
  const auto path = dir.file("random_gopro_seed24.pth");
  const auto start = std::chrono::steady_clock::now();
  write_random_kernel_wizard(path, 24);
  const auto written = std::chrono::steady_clock::now();
  const auto checks = read_state_dict(kData + "reference_checks.pt");
  {
    const auto state = read_state_dict(path);
    const auto& sums = checks.at("weight_sums");
    REQUIRE(static_cast<int64_t>(state.size()) == sums.size(0));
    int64_t i = 0;
    for (const auto& [name, tensor] : state) {
      CAPTURE(name);
      const double expected = sums[i++].item<double>();
      CHECK(tensor.to(torch::kFloat64).sum().item<double>() ==
            doctest::Approx(expected).epsilon(1e-12));  // the same numbers as the reference's weights
    }
  }
  auto network = load_kernel_wizard(path);
  const auto loaded = std::chrono::steady_clock::now();
  MESSAGE("wrote the 461 MB file in " << std::chrono::duration<double>(written - start).count()
                                      << " s, loaded it strictly in "
                                      << std::chrono::duration<double>(loaded - written).count() << " s");

  // The inputs the reference ran on, drawn again from the same seeds.
  auto input_generator = make_generator(25);
  const auto x = at::rand({2, 3, 256, 256}, input_generator) * 2 - 1;
  CHECK(x.to(torch::kFloat64).sum().item<double>() ==
        doctest::Approx(checks.at("x_sum").item<double>()).epsilon(1e-12));
  auto generator0 = make_generator(26);
  auto generator1 = make_generator(27);
  const auto latent0 = NonlinearBlurOperator::draw_kernel_latent(1, 256, 256, generator0);
  const auto latent1 = NonlinearBlurOperator::draw_kernel_latent(1, 256, 256, generator1);
  const auto latents = torch::cat({latent0, latent1});
  CHECK(torch::equal(latents, checks.at("latent")));  // torch.manual_seed(s); torch.randn(1, 512, 2, 2) * 1.2

  const auto expected = torch::cat({read_state_dict(kData + "reference_forward_0.pt").at("y"),
                                    read_state_dict(kData + "reference_forward_1.pt").at("y")});
  NonlinearBlurOperator blur(*network, latents);  // one latent per image
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    y = blur.forward(x);
  }
  const double error = relative_max_error(y, expected);
  MESSAGE("relative max error against the reference, float32 256x256 batch 2: " << error);
  CHECK(error <= 1e-5);
  // A blur that the clamp does not hide: most pixels move, and differently in the two images.
  CHECK((y - x).abs().gt(1e-2).to(torch::kFloat64).mean().item<double>() > 0.5);

  // One latent (batch 1) for the whole batch: the first image's latent, applied to both.
  const auto shared = blur.with_kernel_latent(latent0);
  torch::Tensor y_shared, y_second_alone;
  {
    torch::NoGradGuard no_grad;
    y_shared = shared.forward(x);
    y_second_alone = shared.forward(x.slice(0, 1, 2));
  }
  CHECK(relative_max_error(y_shared.slice(0, 0, 1), expected.slice(0, 0, 1)) <= 1e-5);
  CHECK(relative_max_error(y_shared.slice(0, 1, 2), y_second_alone) <= 1e-6);
  CHECK(relative_max_error(y_shared.slice(0, 1, 2), expected.slice(0, 1, 2)) > 1e-2);

  // The kernel extractor F, whose weights the file holds too: bkse's KernelWizard.forward(sharp, blurred).
  std::pair<torch::Tensor, torch::Tensor> code;
  {
    torch::NoGradGuard no_grad;
    code = network->extract_kernel((x + 1) / 2, (expected + 1) / 2);
  }
  const double mu_error = relative_max_error(code.first, checks.at("mu"));
  const double logvar_error = relative_max_error(code.second, checks.at("logvar"));
  MESSAGE("kernel extractor against the reference: mean " << mu_error << ", log-variance " << logvar_error);
  CHECK(mu_error <= 1e-5);
  CHECK(logvar_error <= 1e-5);
}

TEST_CASE("the weight file is loaded strictly: a missing, extra or mis-shaped key is refused by name") {
  TempDir dir("nonlinear-blur-strict");
  const auto options = small_kernel_wizard_options();
  const auto good = dir.file("small.pth");
  write_random_kernel_wizard(good, 5, options);
  const auto latent = torch::zeros({1, 32, 1, 1});
  CHECK(NonlinearBlurOperator(good, latent, options).forward(torch::zeros({1, 3, 128, 128})).size(2) == 128);
  const auto state = read_state_dict(good);
  REQUIRE(state.contains("kernel_extractor.model.19.conv_block.5.weight"));

  auto refused = [&](const StateDict& file, const std::string& name) {
    const auto path = dir.file(name);
    save_state_dict(file, path);
    return error_of([&] { NonlinearBlurOperator(path, latent, options); });
  };
  // The kernel extractor's weights are never run, but they are checked.
  const auto missing = refused(edited(state, "kernel_extractor.model.19.conv_block.5.weight"), "missing.pth");
  CHECK(
      missing.find("'kernel_extractor.model.19.conv_block.5.weight' (model shape [16, 16, 3, 3]) is missing "
                   "from the file") != std::string::npos);
  const auto extra =
      refused(edited(state, "", {"adapter.model.extra.weight", torch::zeros({2})}), "extra.pth");
  CHECK(extra.find("'adapter.model.extra.weight' (file shape [2]) is not in the model") != std::string::npos);
  const auto mis_shaped = refused(edited(edited(state, "kernel_extractor.model.16.weight"), "",
                                         {"kernel_extractor.model.16.weight", torch::zeros({16, 16, 3, 1})}),
                                  "mis_shaped.pth");
  CHECK(
      mis_shaped.find("'kernel_extractor.model.16.weight' has shape [16, 16, 3, 1] in the file but [16, 16, "
                      "3, 3] in the model") != std::string::npos);
  // A file of another configuration: the error says what the file's shapes show.
  const auto other = error_of([&] { NonlinearBlurOperator(good, torch::zeros({1, 512, 1, 1})); });
  CHECK(other.find("does not match the model") != std::string::npos);
  CHECK(
      other.find("The file's shapes say: input_nc 3, nf 4, front_RBs 1, back_RBs 1, extractor n_blocks 1") !=
      std::string::npos);
  CHECK(error_of([&] { load_kernel_wizard(dir.file("absent.pth")); }).find("does not exist") !=
        std::string::npos);
}

TEST_CASE("a weight file's configuration is read from its shapes, then the file is loaded strictly") {
  TempDir dir("nonlinear-blur-shapes");
  auto same = [](const KernelWizardOptions& a, const KernelWizardOptions& b) {
    return a.input_nc() == b.input_nc() && a.nf() == b.nf() && a.front_RBs() == b.front_RBs() &&
           a.back_RBs() == b.back_RBs() && a.kernel_dim() == b.kernel_dim() && a.use_vae() == b.use_vae() &&
           a.extractor_n_blocks() == b.extractor_n_blocks();
  };
  // The published configuration (no file: its state dict's shapes), the small one, and one without the VAE
  // whose code is 8 nf wide, as bkse's REDS_woVAE.
  for (const auto& options : {KernelWizardOptions{}, small_kernel_wizard_options(),
                              small_kernel_wizard_options().front_RBs(2).back_RBs(3).extractor_n_blocks(2),
                              small_kernel_wizard_options().use_vae(false).kernel_dim(32)}) {
    CAPTURE(options);
    const KernelWizard network(options);
    CHECK(same(kernel_wizard_options_of(state_dict(*network)), options));
  }
  const auto path = dir.file("small.pth");
  write_random_kernel_wizard(path, 3, small_kernel_wizard_options().back_RBs(2));
  const auto loaded = load_kernel_wizard_as_saved(path);
  CHECK(same(loaded->options(), small_kernel_wizard_options().back_RBs(2)));
  // Loaded strictly: the same weights as the file.
  const auto file = read_state_dict(path);
  const auto model = state_dict(*loaded);
  CHECK(model.size() == file.size());
  for (const auto& [name, tensor] : file) CHECK(torch::equal(*model.find(name), tensor));
  // A file that is no KernelWizard is refused, naming what it lacks.
  const auto other = dir.file("other.pth");
  save_state_dict(edited(file, "feature_extractor.0.weight"), other);
  CHECK(error_of([&] {
          load_kernel_wizard_as_saved(other);
        }).find("The file has no 'feature_extractor.0.weight'") != std::string::npos);
}

TEST_CASE("the input gradient of the nonlinear blur equals finite differences in float64") {
  // The published configuration (random weights; the extractor is not needed), 128 x 128, batch 2.
  KernelWizard network(KernelWizardOptions{}.with_kernel_extractor(false));
  fill_random_kernel_wizard(*network, 11);
  auto generator = make_generator(12);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  NonlinearBlurOperator blur(*network, NonlinearBlurOperator::draw_kernel_latent(2, 128, 128, generator));
  // Inputs in [-0.375, 0.375], so that no output reaches the clamp at +-1.
  const auto x = ((at::rand({2, 3, 128, 128}, generator, options) - 0.5) * 0.75).requires_grad_(true);
  const auto weights = at::randn({2, 3, 128, 128}, generator, options);
  auto objective = [&](const torch::Tensor& input) { return (blur.forward(input) * weights).sum(); };
  const auto y = blur.forward(x);
  CHECK(y.dtype() == torch::kFloat64);
  CHECK(y.abs().max().item<double>() < 0.99);
  const auto gradient = torch::autograd::grad({objective(x)}, {x})[0];
  CHECK(blur.networks_built() == 1);  // the float64 copy, made once

  // Directions half along the gradient, half random: along a purely random direction, whose derivative is
  // some 300 times smaller here, a relu's kink lies within 1e-7 of x and spoils the difference quotient;
  // the random half still makes a wrong component of the gradient show.
  torch::NoGradGuard no_grad;
  const double h = 1e-6;
  for (int direction = 0; direction < 3; ++direction) {
    CAPTURE(direction);
    const auto random = at::randn(x.sizes(), generator, options);
    auto v = gradient / gradient.norm() + random / random.norm();
    v = v / v.norm();
    const double analytic = (gradient * v).sum().item<double>();
    const double numeric =
        (objective(x + h * v).item<double>() - objective(x - h * v).item<double>()) / (2 * h);
    const double error = std::abs(analytic - numeric) / std::abs(numeric);
    MESSAGE("direction " << direction << ": autograd " << analytic << ", central difference (h = " << h
                         << ") " << numeric << ", relative difference " << error);
    CHECK(error <= 1e-6);
  }
}

TEST_CASE("the nonlinear blur refuses sizes the network cannot take, naming the rule") {
  const auto network = small_network(6);
  NonlinearBlurOperator blur(*network, torch::zeros({1, 32, 1, 1}));
  auto forward_error = [&](const torch::Tensor& x) { return error_of([&] { (void)blur.forward(x); }); };
  CHECK(
      forward_error(torch::zeros({1, 3, 128, 96}))
          .find("NonlinearBlurOperator::forward: the blur network needs height and width that are multiples "
                "of 128 (it halves them seven times), got 128x96") != std::string::npos);
  CHECK(
      forward_error(torch::zeros({1, 1, 128, 128}))
          .find("NonlinearBlurOperator::forward: the blur network takes 3-channel images (input_nc), got 1 "
                "channels in an image batch of shape [1, 1, 128, 128]; repeat a gray image to 3 channels") !=
      std::string::npos);
  CHECK(forward_error(torch::zeros({3, 128, 128})).find("add the batch dimension with x.unsqueeze(0)") !=
        std::string::npos);
  CHECK(forward_error(torch::zeros({1, 3, 256, 128}))
            .find("the kernel latent [1, 32, 1, 1] is for 128x128 images, but the images are 256x128") !=
        std::string::npos);
  CHECK(
      error_of([&] {
        (void)blur.measurement_shape({1, 3, 100, 128});
      })
          .find("NonlinearBlurOperator::measurement_shape: the blur network needs height and width that are "
                "multiples of 128") != std::string::npos);
  CHECK(blur.measurement_shape({4, 3, 128, 128}) == Shape{4, 3, 128, 128});
  CHECK(error_of([&] {
          NonlinearBlurOperator(*network, torch::zeros({1, 512, 2, 2}));
        }).find("expected a kernel latent [1 or B, 32, H/128, W/128], got [1, 512, 2, 2]") !=
        std::string::npos);
  CHECK(error_of([&] {
          NonlinearBlurOperator(*network, torch::full({1, 32, 1, 1}, NAN));
        }).find("the kernel latent has NaN or infinite values") != std::string::npos);
  auto generator = make_generator(0);
  CHECK(error_of([&] {
          NonlinearBlurOperator::draw_kernel_latent(1, 300, 256, generator);
        }).find("got 300x256; crop or resize to 256x256") != std::string::npos);
  // The file is not read when the size is wrong.
  CHECK(error_of([&] {
          NonlinearBlurOperator("/nonexistent.pth", 64, 64, generator);
        }).find("multiples of 128") != std::string::npos);
}

TEST_CASE("the latent is fixed by default; the reference's redraw on every call is an explicit option") {
  TempDir dir("nonlinear-blur-latent");
  const auto path = dir.file("small.pth");
  const auto options = small_kernel_wizard_options();
  write_random_kernel_wizard(path, 9, options);
  auto x_generator = make_generator(1);
  const auto x = at::rand({2, 3, 128, 128}, x_generator) * 2 - 1;

  // Fixed: drawn once (as the reference draws it), then every call applies the same blur.
  auto generator = make_generator(30);
  NonlinearBlurOperator fixed(path, 128, 128, generator, options);
  auto same_seed = make_generator(30);
  CHECK(torch::equal(fixed.kernel_latent(),
                     NonlinearBlurOperator::draw_kernel_latent(1, 128, 128, same_seed, options)));
  CHECK_FALSE(fixed.redraws_latent());
  CHECK(torch::equal(fixed.forward(x), fixed.forward(x)));

  // Redrawn: each call draws a new latent per image from the generator, so two calls differ.
  auto redraw = NonlinearBlurOperator::redrawing_latent_every_call(path, make_generator(30), options);
  CHECK(redraw.redraws_latent());
  CHECK_FALSE(redraw.kernel_latent().defined());
  const auto first = redraw.forward(x);
  const auto second = redraw.forward(x);
  const double change = relative_max_error(second, first);
  const double mean_change = ((second - first).abs().mean() / (first - x).abs().mean()).item<double>();
  MESSAGE("redrawn latent, two calls on the same images: relative max difference "
          << change << ", mean |difference| / mean |y - x| " << mean_change);
  CHECK(change > 1e-3);
  // Its first call is the fixed operator with the first two draws of the same seed.
  auto replay = make_generator(30);
  const auto replayed =
      fixed.with_kernel_latent(NonlinearBlurOperator::draw_kernel_latent(2, 128, 128, replay, options));
  CHECK(torch::allclose(first, replayed.forward(x), 1e-6, 1e-6));
  // The same behaviour from an operator in memory, sharing its network (the tool's per-image operators).
  const auto shared = fixed.redrawing_latent_from(make_generator(30));
  CHECK(shared.redraws_latent());
  CHECK(torch::equal(shared.forward(x), first));
}
