// The LDM autoencoders against CompVis ldm's own code (tests/data/ldm_autoencoder/README.md says how the data
// was made): parameter names and shapes of the published vq-f4 and kl-f8 configurations and of two tiny ones,
// outputs of ldm's VQModelInterface (with taming's VectorQuantizer2) and AutoencoderKL on seeded random
// weights, the straight-through gradient of VQ decoding, the KL encoder's gradient against central
// differences, strict loading, dtypes, and the refusals.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/random.hpp>

#include "support/error_of.hpp"
#include "support/ldm_tiny.hpp"
#include "support/temp_dir.hpp"
#include "support/tensors.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using diffpost::LdmAutoencoder;
using diffpost::LdmAutoencoderKind;
using diffpost::LdmAutoencoderOptions;
using diffpost::testing::error_of;
using diffpost::testing::ldm_tiny_vq;
using diffpost::testing::relative_error;

const fs::path kLdmData = fs::path(DIFFPOST_TEST_DATA_DIR) / "ldm_autoencoder";

// The tiny configurations of the fixture (README.md).

LdmAutoencoderOptions ldm_tiny_kl() {
  return LdmAutoencoderOptions{}
      .kind(LdmAutoencoderKind::kl)
      .double_z(true)
      .embed_dim(4)
      .z_channels(4)
      .resolution(16)
      .out_ch(2)
      .ch(32)
      .ch_mult({1, 2, 2})
      .num_res_blocks(1)
      .attn_resolutions({8});
}

// The fixture weights, drawn as the script drew them in Python: torch.manual_seed(seed), then
// randomize_parameters from the default generator.
LdmAutoencoder ldm_random_model(const LdmAutoencoderOptions& options, uint64_t seed) {
  LdmAutoencoder model(options);
  model->eval();
  torch::manual_seed(seed);
  diffpost::testing::randomize_parameters(*model, at::detail::getDefaultCPUGenerator());
  return model;
}

void ldm_check_parameter_list(const LdmAutoencoderOptions& options, const fs::path& list_file) {
  std::ifstream in(list_file);
  REQUIRE_MESSAGE(in.good(), "cannot open ", list_file.string());
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  std::string name, shape;
  while (in >> name >> shape) {
    std::vector<int64_t> sizes;
    std::stringstream parts(shape);
    for (std::string part; std::getline(parts, part, ',');) sizes.push_back(std::stoll(part));
    expected.emplace_back(name, sizes);
  }
  LdmAutoencoder model(options);
  const auto parameters = model->named_parameters();
  REQUIRE(parameters.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(parameters[i].key() == expected[i].first);
    CHECK_MESSAGE(parameters[i].value().sizes().vec() == expected[i].second, expected[i].first);
  }
  CHECK(model->buffers().empty());
}

void ldm_check_close(const torch::Tensor& actual, const torch::Tensor& expected, const char* what,
                     double tolerance = 1e-5) {
  REQUIRE_MESSAGE(actual.sizes() == expected.sizes(), what);
  const double error = relative_error(actual.to(torch::kFloat64), expected.to(torch::kFloat64));
  const std::string label(what);
  MESSAGE(label, ": relative max error ", error);
  CHECK_MESSAGE(error <= tolerance, label, ": relative max error ", error);
}

}  // namespace

TEST_CASE("LdmAutoencoder: parameter names and shapes are ldm's, in state_dict order") {
  ldm_check_parameter_list(ldm_tiny_vq(), kLdmData / "vq_tiny_parameters.txt");
  ldm_check_parameter_list(ldm_tiny_kl(), kLdmData / "kl_tiny_parameters.txt");
  ldm_check_parameter_list(LdmAutoencoderOptions::vq_f4(), kLdmData / "vq_f4_parameters.txt");
  ldm_check_parameter_list(LdmAutoencoderOptions::kl_f8(), kLdmData / "kl_f8_parameters.txt");
}

TEST_CASE("LdmAutoencoder VQ: encode, quantize and decode match ldm's VQModelInterface") {
  auto model = ldm_random_model(ldm_tiny_vq(), 11);
  const auto expected = diffpost::read_state_dict(kLdmData / "vq_tiny.pt");
  const auto& x = expected.at("x");
  torch::NoGradGuard no_grad;
  const auto encoded = model->encode(x);
  ldm_check_close(encoded, expected.at("encoded"), "VQ encode (latent before quantization)");
  // Decoding from the reference's latent tests the quantizer and decoder apart from the encoder's rounding.
  const auto& reference_latent = expected.at("encoded");
  CHECK(torch::equal(model->codebook_indices(reference_latent).reshape({-1}), expected.at("indices")));
  ldm_check_close(model->quantize(reference_latent), expected.at("quantized"), "VQ quantize");
  ldm_check_close(model->decode(reference_latent), expected.at("decoded"), "VQ decode (quantized)");
  ldm_check_close(model->decode(reference_latent, /*quantize=*/false), expected.at("decoded_unquantized"),
                  "VQ decode (force_not_quantize)");
  ldm_check_close(model->forward(x), expected.at("decoded"), "VQ decode(encode(x))");
  // The quantized latent is made of codebook rows.
  const auto rows = model->named_parameters()["quantize.embedding.weight"];
  const auto codes = model->codebook_indices(reference_latent);
  CHECK(torch::allclose(model->quantize(reference_latent), rows.index({codes}).permute({0, 3, 1, 2}), 0.0,
                        1e-6));
}

TEST_CASE("LdmAutoencoder KL: posterior, sample and decode match ldm's AutoencoderKL") {
  auto model = ldm_random_model(ldm_tiny_kl(), 13);
  const auto expected = diffpost::read_state_dict(kLdmData / "kl_tiny.pt");
  const auto& x = expected.at("x");
  torch::NoGradGuard no_grad;
  ldm_check_close(model->moments(x), expected.at("moments"), "KL moments");
  const auto posterior = model->posterior(x);
  ldm_check_close(posterior.mean, expected.at("mean"), "KL posterior mean");
  ldm_check_close(posterior.logvar, expected.at("logvar"), "KL posterior logvar");
  CHECK(torch::equal(model->encode(x), posterior.mean));
  ldm_check_close(model->encode(x, diffpost::make_generator(13 + 2000)), expected.at("sample"),
                  "KL posterior sample");
  ldm_check_close(model->decode(expected.at("mean")), expected.at("decoded"), "KL decode");
  // ldm clamps the log-variance to [-30, 20]: push quant_conv's log-variance half far past each end.
  auto bias = model->named_parameters()["quant_conv.bias"];
  bias.narrow(0, 4, 2).fill_(1e4);
  bias.narrow(0, 6, 2).fill_(-1e4);
  const auto pushed = model->posterior(x);
  CHECK(torch::equal(pushed.logvar.narrow(1, 0, 2), torch::full({2, 2, 4, 4}, 20.0)));
  CHECK(torch::equal(pushed.logvar.narrow(1, 2, 2), torch::full({2, 2, 4, 4}, -30.0)));
  CHECK(torch::allclose(pushed.stddev().narrow(1, 0, 2), torch::full({2, 2, 4, 4}, std::exp(10.0))));
}

TEST_CASE("LdmAutoencoder VQ: decoding passes the straight-through gradient to the latent") {
  auto model = ldm_random_model(ldm_tiny_vq(), 11);
  const auto expected = diffpost::read_state_dict(kLdmData / "vq_tiny.pt");
  const auto weights = torch::randn({2, 3, 16, 24}, diffpost::make_generator(5));
  // d/dz sum(w * D(q(z))) with q's straight-through estimator equals d/dz_q sum(w * D(z_q)) at z_q = q(z).
  const auto z = expected.at("encoded").clone().requires_grad_(true);
  (model->decode(z) * weights).sum().backward();
  const auto z_q = model->quantize(expected.at("encoded")).detach().requires_grad_(true);
  (model->decode(z_q, /*quantize=*/false) * weights).sum().backward();
  REQUIRE(z.grad().defined());
  CHECK(z.grad().abs().max().item<double>() > 0.0);
  CHECK(relative_error(z.grad(), z_q.grad()) <= 1e-6);
  // And encode is differentiable through to the image.
  const auto x = expected.at("x").clone().requires_grad_(true);
  model->forward(x).sum().backward();
  REQUIRE(x.grad().defined());
  CHECK(x.grad().abs().max().item<double>() > 0.0);
}

TEST_CASE("LdmAutoencoder KL: the encoder's gradient matches central differences") {
  auto model = ldm_random_model(ldm_tiny_kl(), 13);
  model->to(torch::kFloat64);
  const auto x = torch::randn({1, 3, 8, 8}, diffpost::make_generator(7)).to(torch::kFloat64);
  const auto direction = torch::randn({1, 3, 8, 8}, diffpost::make_generator(8)).to(torch::kFloat64);
  const auto weights = torch::randn({1, 4, 2, 2}, diffpost::make_generator(9)).to(torch::kFloat64);
  const auto objective = [&](const torch::Tensor& input) { return (model->encode(input) * weights).sum(); };
  const auto leaf = x.clone().requires_grad_(true);
  objective(leaf).backward();
  const double analytic = (leaf.grad() * direction).sum().item<double>();
  torch::NoGradGuard no_grad;
  const double step = 1e-5;
  const double numeric =
      (objective(x + step * direction).item<double>() - objective(x - step * direction).item<double>()) /
      (2 * step);
  MESSAGE("KL encoder directional derivative: analytic ", analytic, ", central difference ", numeric);
  CHECK(std::abs(analytic - numeric) <= 1e-6 * std::max(1.0, std::abs(numeric)));
}

TEST_CASE("LdmAutoencoder: computes in the parameters' dtype and returns the input's") {
  const auto expected = diffpost::read_state_dict(kLdmData / "vq_tiny.pt");
  const auto& x = expected.at("x");
  torch::NoGradGuard no_grad;
  auto model = ldm_random_model(ldm_tiny_vq(), 11);
  model->to(torch::kFloat64);
  const auto decoded = model->decode(expected.at("encoded"));
  CHECK((decoded.scalar_type() == torch::kFloat32));
  ldm_check_close(decoded, expected.at("decoded"), "VQ decode, float64 model");
  ldm_check_close(model->encode(x.to(torch::kFloat64)), expected.at("encoded"), "VQ encode, float64 model");
  model->to(torch::kBFloat16);
  const auto rough = model->decode(expected.at("encoded"), /*quantize=*/false);
  CHECK((rough.scalar_type() == torch::kFloat32));
  ldm_check_close(rough, expected.at("decoded_unquantized"), "VQ decode, bfloat16 model", 5e-2);
}

TEST_CASE("LdmAutoencoder: set_compute_dtype runs the convolutions in bfloat16, float32 in and out") {
  // The KL fixture (attention at 8x8 and in the middle blocks): bf16 convolutions against ldm's float32 run,
  // within 3e-2 relative max error (measured: 1.3e-2 encode, 1.9e-2 decode; VQ 8.7e-3 and 1.5e-2).
  const auto expected = diffpost::read_state_dict(kLdmData / "kl_tiny.pt");
  const auto& x = expected.at("x");
  auto model = ldm_random_model(ldm_tiny_kl(), 13);
  model->set_compute_dtype(torch::kBFloat16);
  CHECK((model->compute_dtype() == torch::kBFloat16));
  // Convolutions of the encoder and decoder in bf16; norms, quant_conv, post_quant_conv in float32.
  for (const auto& item : model->named_parameters()) {
    const auto& name = item.key();
    const bool full = name.find("norm") != std::string::npos || name.rfind("quant_conv", 0) == 0 ||
                      name.rfind("post_quant_conv", 0) == 0;
    CHECK_MESSAGE((item.value().scalar_type() == (full ? torch::kFloat32 : torch::kBFloat16)), name);
  }
  {
    torch::NoGradGuard no_grad;
    const auto moments = model->moments(x);
    CHECK((moments.scalar_type() == torch::kFloat32));
    ldm_check_close(moments, expected.at("moments"), "KL moments, bf16 convolutions", 3e-2);
    const auto decoded = model->decode(expected.at("mean"));
    CHECK((decoded.scalar_type() == torch::kFloat32));
    ldm_check_close(decoded, expected.at("decoded"), "KL decode, bf16 convolutions", 3e-2);
  }
  // Gradients reach the float32 input through the bf16 convolutions.
  auto input = x.clone().requires_grad_(true);
  const auto gradient =
      torch::autograd::grad({model->decode(model->encode(input)).square().sum()}, {input})[0];
  CHECK((gradient.scalar_type() == torch::kFloat32));
  CHECK(torch::isfinite(gradient).all().item<bool>());
  CHECK(gradient.abs().max().item<double>() > 0);
  // Back to float32: the weights keep their bf16 rounding, so the outputs stay within the same tolerance.
  model->set_compute_dtype(torch::kFloat32);
  CHECK((model->compute_dtype() == torch::kFloat32));
  {
    torch::NoGradGuard no_grad;
    ldm_check_close(model->decode(expected.at("mean")), expected.at("decoded"), "KL decode, back to float32",
                    3e-2);
  }
  CHECK(error_of([&] {
          model->set_compute_dtype(torch::kFloat64);
        }).find("expected torch::kBFloat16, torch::kHalf or the dtype of the model's other parameters") !=
        std::string::npos);
  // VQ: the codebook stays float32 and decoding still quantizes.
  auto vq = ldm_random_model(ldm_tiny_vq(), 11);
  vq->set_compute_dtype(torch::kBFloat16);
  const auto vq_expected = diffpost::read_state_dict(kLdmData / "vq_tiny.pt");
  torch::NoGradGuard no_grad;
  CHECK((vq->named_parameters()["quantize.embedding.weight"].scalar_type() == torch::kFloat32));
  ldm_check_close(vq->encode(vq_expected.at("x")), vq_expected.at("encoded"), "VQ encode, bf16 convolutions",
                  3e-2);
  ldm_check_close(vq->decode(vq_expected.at("quantized")), vq_expected.at("decoded"),
                  "VQ decode of the reference's codes, bf16 convolutions", 3e-2);
}

TEST_CASE("LdmAutoencoder: a saved state dict loads strictly; a missing codebook is named") {
  diffpost::testing::TempDir dir("ldm-autoencoder");
  auto source = ldm_random_model(ldm_tiny_vq(), 11);
  diffpost::save_checkpoint(source, dir.path() / "first_stage.pt");
  LdmAutoencoder loaded(ldm_tiny_vq());
  loaded->eval();
  const auto report = diffpost::load_checkpoint(loaded, dir.path() / "first_stage.pt");
  CHECK(report.missing.empty());
  CHECK(report.unexpected.empty());
  const auto expected = diffpost::read_state_dict(kLdmData / "vq_tiny.pt");
  torch::NoGradGuard no_grad;
  ldm_check_close(loaded->forward(expected.at("x")), expected.at("decoded"), "VQ after load_checkpoint");

  // A KL state dict has no codebook, and quant_conv has twice the channels.
  diffpost::StateDict without_codebook;
  for (const auto& [name, tensor] : diffpost::state_dict(*source))
    if (name != "quantize.embedding.weight") without_codebook.insert(name, tensor);
  CHECK(error_of([&] {
          diffpost::load_state_dict(loaded, without_codebook);
        }).find("'quantize.embedding.weight'") != std::string::npos);
}

TEST_CASE("LdmAutoencoder: bad inputs and options are refused with the fix") {
  auto vq = ldm_random_model(ldm_tiny_vq(), 11);
  auto kl = ldm_random_model(ldm_tiny_kl(), 13);
  const auto image = torch::randn({1, 3, 16, 16});
  const auto contains = [](const std::string& message, const std::string& part) {
    INFO(message);
    CHECK(message.find(part) != std::string::npos);
  };
  contains(error_of([&] { vq->encode(torch::randn({1, 4, 16, 16})); }), "the model's in_channels is 3");
  contains(error_of([&] { vq->encode(torch::randn({3, 16, 16})); }), "expected images [B, 3, H, W]");
  contains(error_of([&] { vq->encode(torch::randn({1, 3, 15, 16})); }), "positive multiples of 2");
  contains(error_of([&] { kl->encode(torch::randn({1, 3, 16, 18})); }), "multiples of 4 (2^(levels-1) for 3");
  contains(error_of([&] { vq->decode(torch::randn({1, 4, 8, 8})); }), "the model's embed_dim is 3");
  contains(error_of([&] { kl->decode(torch::randn({1, 3, 4, 4})); }), "the model's embed_dim is 4");
  contains(error_of([&] { vq->encode(image.to(torch::kInt64)); }), "floating-point");
  contains(error_of([&] { vq->posterior(image); }), "only a KL autoencoder");
  contains(error_of([&] { vq->encode(image, diffpost::make_generator(1)); }), "call encode(x)");
  contains(error_of([&] { kl->quantize(torch::randn({1, 4, 4, 4})); }), "only a VQ autoencoder");
  contains(error_of([&] { (void)LdmAutoencoder(LdmAutoencoderOptions::vq_f4().ch(48)); }), "multiple of 32");
  contains(error_of([&] { (void)LdmAutoencoder(LdmAutoencoderOptions::vq_f4().double_z(true)); }),
           "double_z false");
  contains(error_of([&] { (void)LdmAutoencoder(LdmAutoencoderOptions::kl_f8().double_z(false)); }),
           "double_z true");
  contains(error_of([&] { (void)LdmAutoencoder(LdmAutoencoderOptions::vq_f4().ch_mult({})); }), "ch_mult");
}

TEST_CASE("LdmAutoencoderOptions: presets are ldm's vq-f4 and kl-f8 configs") {
  const auto vq = LdmAutoencoderOptions::vq_f4();
  CHECK((vq.kind() == LdmAutoencoderKind::vq));
  CHECK(vq.embed_dim() == 3);
  CHECK(vq.n_embed() == 8192);
  CHECK(vq.downsampling_factor() == 4);
  const auto kl = LdmAutoencoderOptions::kl_f8();
  CHECK((kl.kind() == LdmAutoencoderKind::kl));
  CHECK(kl.embed_dim() == 4);
  CHECK(kl.double_z());
  CHECK(kl.downsampling_factor() == 8);
  std::ostringstream text;
  text << vq;
  CHECK(text.str() ==
        "LdmAutoencoder(kind=vq, embed_dim=3, n_embed=8192, double_z=false, z_channels=3, resolution=256, "
        "in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], "
        "dropout=0)");
}
