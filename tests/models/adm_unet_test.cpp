// AdmUNet against the reference guided-diffusion UNetModel: state-dict key names and shapes, outputs of two
// small reference runs (tests/data/adm_small/README.md says how they were made), option validation.
#include <diffpost/concepts.hpp>
#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/random.hpp>

#include "support/adm_small.hpp"
#include "support/error_of.hpp"
#include "support/tensors.hpp"

#include <fmt/core.h>
#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using diffpost::testing::adm_small_file;
using diffpost::testing::adm_small_options;
using diffpost::testing::adm_small_state_dict_path;
using diffpost::testing::randomize_parameters;
using diffpost::testing::relative_error;

static_assert(diffpost::ScoreModel<diffpost::AdmUNet>, "AdmUNet must model ScoreModel");
static_assert(!diffpost::HasVarianceKind<diffpost::AdmUNetImpl>,
              "the Impl has no learns_variance(); the holder adds it");

// The other branches: new attention order, num_heads, additive embedding, conv resampling, class labels.
diffpost::AdmUNetOptions variant_options() {
  return diffpost::AdmUNetOptions(16, 32, 2)
      .in_channels(1)
      .channel_mult({1, 2})
      .attention_resolutions({8})
      .num_heads(2)
      .num_heads_upsample(4)
      .use_new_attention_order(true)
      .num_classes(5);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> read_key_list(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path);
  std::vector<std::pair<std::string, std::vector<int64_t>>> keys;
  std::string name, shape;
  while (in >> name >> shape) {
    std::vector<int64_t> sizes;
    std::stringstream ss(shape);
    for (std::string part; std::getline(ss, part, ',');) sizes.push_back(std::stoll(part));
    keys.emplace_back(name, sizes);
  }
  return keys;
}

// The built module and the plan-only shape list both equal the reference key list, in order.
void check_keys(const diffpost::AdmUNetOptions& options, const std::string& key_file) {
  const auto expected = read_key_list(adm_small_file(key_file));
  const auto planned = diffpost::adm_state_dict_shapes(options);
  CHECK(planned == expected);
  diffpost::AdmUNet model(options);
  const auto params = model->named_parameters();
  REQUIRE(params.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(params[i].key() == expected[i].first);
    CHECK_MESSAGE(params[i].value().sizes().vec() == expected[i].second, expected[i].first);
  }
}

}  // namespace

TEST_CASE("AdmUNet parameter names and shapes equal the reference state_dict in order") {
  SUBCASE("small: scale-shift, resblock up/down, learned sigma") {
    check_keys(adm_small_options(), "small_keys.txt");
  }
  SUBCASE("variant: conv resampling, labels, one input channel") {
    check_keys(variant_options(), "variant_keys.txt");
  }
  SUBCASE("the FFHQ 256 prior of DPS") {
    check_keys(diffpost::AdmUNetOptions::ffhq256(), "ffhq256_keys.txt");
  }
}

TEST_CASE("AdmUNet presets have the published parameter counts") {
  // Counts printed by the reference create_model for DPS configs/model_config.yaml and
  // imagenet_model_config.yaml (tests/data/adm_small/README.md): 93.56 M (ffhq_10m.pt) and 552.8 M
  // (256x256_diffusion_uncond.pt).
  CHECK(diffpost::adm_parameter_count(diffpost::AdmUNetOptions::ffhq256()) == 93'563'910);
  CHECK(diffpost::adm_parameter_count(diffpost::AdmUNetOptions::imagenet256_uncond()) == 552'814'086);
  // The ImageNet model is too big to build in a unit test; its planned keys and shapes match the reference's.
  CHECK(diffpost::adm_state_dict_shapes(diffpost::AdmUNetOptions::imagenet256_uncond()) ==
        read_key_list(adm_small_file("imagenet256_uncond_keys.txt")));
}

TEST_CASE(
    "AdmUNet output matches the reference UNetModel (legacy attention, scale-shift, up/down resblocks)") {
  diffpost::AdmUNet model(adm_small_options());
  // The reference weights, read from the torch.save(model.state_dict()) file as published checkpoints are.
  const auto report = diffpost::load_checkpoint(model, adm_small_state_dict_path());
  CHECK(report.loaded.size() == model->named_parameters().size());
  model->eval();
  const auto io = diffpost::read_state_dict(adm_small_file("small_io.pt"));
  const auto& expected = io.at("out");
  torch::NoGradGuard no_grad;
  auto out = model(io.at("x"), io.at("t"));
  REQUIRE(out.sizes() == expected.sizes());
  CHECK(model.learns_variance());
  const double err = relative_error(out, expected);
  MESSAGE("small relative error ", err);
  CHECK(err < 1e-4);

  // The test's seeded redraw gives the same weights as the file (the variant test relies on it).
  diffpost::AdmUNet redrawn(adm_small_options());
  randomize_parameters(*redrawn, diffpost::make_generator(1));
  const auto loaded = model->named_parameters();
  for (const auto& item : redrawn->named_parameters()) CHECK(torch::equal(item.value(), loaded[item.key()]));
}

TEST_CASE(
    "AdmUNet output matches the reference UNetModel (new attention order, labels, additive embedding)") {
  diffpost::AdmUNet model(variant_options());
  randomize_parameters(*model, diffpost::make_generator(3));
  model->eval();
  const auto io = diffpost::read_state_dict(adm_small_file("variant_io.pt"));
  torch::NoGradGuard no_grad;
  auto out = model(io.at("x"), io.at("t"), io.at("y"));
  const auto& expected = io.at("out");
  REQUIRE(out.sizes() == expected.sizes());
  CHECK_FALSE(model.learns_variance());
  const double err = relative_error(out, expected);
  MESSAGE("variant relative error ", err);
  CHECK(err < 1e-4);
}

TEST_CASE("adm::attend_by_convolution and adm::attend_by_bmm compute the attention formula, with gradients") {
  torch::manual_seed(5);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  // 3 heads, 16 channels per head, 37 positions: a length that no kernel blocking divides.
  auto q = torch::randn({3, 16, 37}, options).requires_grad_(true);
  auto k = torch::randn({3, 16, 37}, options).requires_grad_(true);
  auto v = torch::randn({3, 16, 37}, options).requires_grad_(true);
  const auto upstream = torch::randn({3, 16, 37}, options);
  auto gradients = [&](const torch::Tensor& out) {
    return torch::autograd::grad({out}, {q, k, v}, {upstream});
  };
  // The formula by broadcasting, in float64 throughout: weight[b, t, s] = softmax_s(sum_c q[b, c, t] k[b, c,
  // s]), a[b, c, t] = sum_s weight[b, t, s] v[b, c, s].
  const auto weight = torch::softmax((q.unsqueeze(3) * k.unsqueeze(2)).sum(1), -1);
  const auto formula = (v.unsqueeze(2) * weight.unsqueeze(1)).sum(3);
  const auto formula_gradients = gradients(formula);

  const auto by_convolution = diffpost::adm::attend_by_convolution(q, k, v);
  CHECK(relative_error(by_convolution, formula) < 1e-12);
  const auto convolution_gradients = gradients(by_convolution);
  for (int i = 0; i < 3; ++i) CHECK(relative_error(convolution_gradients[i], formula_gradients[i]) < 1e-12);

  // bmm takes the softmax in float32 whatever the dtype, as the reference does.
  const auto by_bmm = diffpost::adm::attend_by_bmm(q, k, v);
  CHECK(relative_error(by_bmm, formula) < 1e-6);
  const auto bmm_gradients = gradients(by_bmm);
  for (int i = 0; i < 3; ++i) CHECK(relative_error(bmm_gradients[i], formula_gradients[i]) < 1e-5);
}

// On the CPU in float32 the attention products run as grouped convolutions (oneDNN), in other dtypes and on
// other devices as bmm: both paths agree with the reference, and their input gradients agree with each other.
TEST_CASE("AdmUNet attention: the convolution and bmm paths give the same output and input gradient") {
  diffpost::AdmUNet model(adm_small_options());
  diffpost::load_checkpoint(model, adm_small_state_dict_path());
  model->eval();
  const auto io = diffpost::read_state_dict(adm_small_file("small_io.pt"));
  auto input_gradient = [&](const torch::Tensor& x) {
    auto input = x.detach().requires_grad_(true);
    auto out = model(input, io.at("t"));
    return torch::autograd::grad({(out * out).sum()}, {input})[0];
  };
  const auto gradient_float = input_gradient(io.at("x"));
  model->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    const auto out_double = model(io.at("x").to(torch::kFloat64), io.at("t"));
    CHECK(relative_error(out_double.to(torch::kFloat32), io.at("out")) < 1e-4);
  }
  const auto gradient_double = input_gradient(io.at("x").to(torch::kFloat64));
  const double err = relative_error(gradient_float, gradient_double.to(torch::kFloat32));
  MESSAGE("input gradient, float32 convolution path against float64 bmm path: relative error ", err);
  CHECK(err < 1e-4);
}

TEST_CASE("AdmUNet timestep embedding puts the cosines first") {
  auto t = torch::tensor({0, 7}, torch::kInt64);
  auto emb = diffpost::adm::timestep_embedding(t, 6);
  // f_i = 10000^(-i/3), i = 0, 1, 2
  for (int i = 0; i < 3; ++i) {
    const double f = std::pow(10000.0, -i / 3.0);
    CHECK(emb[1][i].item<double>() == doctest::Approx(std::cos(7 * f)).epsilon(1e-6));
    CHECK(emb[1][i + 3].item<double>() == doctest::Approx(std::sin(7 * f)).epsilon(1e-6));
    CHECK(emb[0][i].item<double>() == 1.0);
  }
}

TEST_CASE("AdmUNetOptions resolves reference defaults and rejects inconsistent settings") {
  auto ffhq = diffpost::AdmUNetOptions::ffhq256();
  CHECK(ffhq.resolved_channel_mult() == std::vector<int64_t>{1, 1, 2, 2, 4, 4});
  CHECK(ffhq.attention_downsample_rates() == std::vector<int64_t>{16});
  CHECK(ffhq.out_channels() == 6);
  CHECK(diffpost::AdmUNetOptions::imagenet256_uncond().attention_downsample_rates() ==
        std::vector<int64_t>{8, 16, 32});
  CHECK_NOTHROW(ffhq.validate());

  auto message = [](const diffpost::AdmUNetOptions& o) {
    return diffpost::testing::error_of([&] { o.validate(); });
  };
  CHECK(message(adm_small_options().image_size(34).channel_mult({1, 1, 1}))
            .find("not divisible by 2^(levels-1)") != std::string::npos);
  CHECK(message(adm_small_options().num_channels(48)).find("32 GroupNorm groups") != std::string::npos);
  CHECK(message(adm_small_options().num_head_channels(24)).find("num_head_channels 24") != std::string::npos);
  CHECK(message(adm_small_options().attention_resolutions({4})).find("never reached") != std::string::npos);
  CHECK(message(diffpost::AdmUNetOptions(48, 32, 1)).find("no default channel_mult") != std::string::npos);
  CHECK_THROWS_AS(diffpost::AdmUNet(adm_small_options().num_heads(3).num_head_channels(-1)), c10::Error);
}

TEST_CASE("AdmUNetOptions prints every reference argument") {
  std::ostringstream os;
  os << diffpost::AdmUNetOptions::ffhq256();
  const std::string text = os.str();
  CHECK(text.find("image_size=256") != std::string::npos);
  CHECK(text.find("attention_resolutions=\"16\"") != std::string::npos);
  CHECK(text.find("use_scale_shift_norm=true") != std::string::npos);
  CHECK(fmt::format("{}", diffpost::AdmUNetOptions::ffhq256()) == text);
}

TEST_CASE("AdmUNet rejects inputs of the wrong shape and labels for an unconditional model") {
  diffpost::AdmUNet model(adm_small_options());
  auto t = torch::zeros({1}, torch::kInt64);
  CHECK_THROWS_AS(model(torch::zeros({1, 1, 32, 32}), t), c10::Error);
  CHECK_THROWS_AS(model(torch::zeros({1, 3, 31, 31}), t), c10::Error);
  CHECK_THROWS_AS(model(torch::zeros({1, 3, 32, 32}), t, torch::zeros({1}, torch::kInt64)), c10::Error);
  // Untrained: the zero-initialised output convolution predicts eps = 0, as in the reference.
  CHECK(model(torch::randn({1, 3, 32, 32}), t).abs().max().item<double>() == 0.0);
}
