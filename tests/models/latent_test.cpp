// The latent-diffusion foundation (models/latent.hpp): which types are Autoencoders and ForwardOperators,
// FirstStage on a tiny random LDM autoencoder (shapes, ldm's scale_factor, refusals), ThroughDecoder against
// dense matrices (forward, measurement shape, gradient), and LatentPrior's latent shapes.
#include <diffpost/dps.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/random.hpp>

#include "support/error_of.hpp"
#include "support/ldm_tiny.hpp"
#include "support/linear_autoencoder.hpp"
#include "support/subsample_problem.hpp"
#include "support/tensors.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <string>

using namespace diffpost;
using testing::LinearAutoencoder;
using testing::SubsampleOperator;

// FirstStage and the test's linear codec are Autoencoders; an operator and the bare module holder are not
// (the holder has no shape conversions: wrap it in FirstStage).
static_assert(Autoencoder<FirstStage> && Autoencoder<LinearAutoencoder>);
static_assert(!Autoencoder<SubsampleOperator> && !Autoencoder<LdmAutoencoder>);
// A(D(z)) is a ForwardOperator whatever the codec, and not a LinearOperator (it has no adjoint).
static_assert(ForwardOperator<ThroughDecoder<SubsampleOperator, LinearAutoencoder>>);
static_assert(ForwardOperator<ThroughDecoder<PhaseRetrievalOperator, FirstStage>>);
static_assert(!LinearOperator<ThroughDecoder<SubsampleOperator, LinearAutoencoder>>);

namespace {

// The smallest legal LDM autoencoder: widths 32 and 64 (multiples of the 32 GroupNorm groups), two levels
// (factor 2), one residual block, a 16-entry codebook of 3-channel latents; random weights from `seed`.
LdmAutoencoder latent_test_tiny_vq(uint64_t seed) {
  torch::manual_seed(seed);
  LdmAutoencoder model(testing::ldm_tiny_vq());
  model->eval();
  return model;
}

}  // namespace

TEST_CASE("FirstStage: shapes, ldm's scale_factor and the shared network") {
  torch::NoGradGuard no_grad;
  auto vae = latent_test_tiny_vq(3);
  const double s = 0.5;
  const FirstStage stage(vae, s);
  CHECK(stage.scale_factor() == s);
  CHECK(stage.quantizes());
  CHECK(stage.autoencoder().ptr() == vae.ptr());  // the same network, not a copy

  CHECK(stage.latent_shape({2, 3, 8, 12}) == Shape{2, 3, 4, 6});
  CHECK(stage.image_shape({2, 3, 4, 6}) == Shape{2, 3, 8, 12});

  auto generator = make_generator(5);
  const auto x = at::rand({2, 3, 8, 12}, generator) * 2 - 1;
  const auto z = stage.encode(x);
  REQUIRE(z.sizes().vec() == stage.latent_shape(x.sizes().vec()));
  // encode_first_stage scaled: s * E(x); decode_first_stage: D(z / s), quantized.
  CHECK(torch::equal(z, s * vae->encode(x)));
  const auto decoded = stage.decode(z);
  CHECK(decoded.sizes().vec() == stage.image_shape(z.sizes().vec()));
  CHECK(torch::equal(decoded, vae->decode(z / s)));
  // Decoding quantizes: D(z / s) is the decoder of the nearest codebook entries, not of z / s itself.
  CHECK(!torch::allclose(decoded, vae->decode(z / s, /*quantize=*/false)));
  const FirstStage unquantized(vae, s, /*quantize=*/false);
  CHECK(torch::equal(unquantized.decode(z), vae->decode(z / s, false)));
  // Scale 1 (the FFHQ LDM's): the autoencoder itself.
  const FirstStage plain(vae);
  CHECK(torch::equal(plain.encode(x), vae->encode(x)));
  CHECK(torch::equal(plain.decode(z), vae->decode(z)));
}

TEST_CASE("FirstStage decodes differentiably, with the straight-through gradient of quantization") {
  auto vae = latent_test_tiny_vq(4);
  const double s = 2.0;
  const FirstStage stage(vae, s);
  auto generator = make_generator(6);
  const auto z = at::randn({1, 3, 4, 4}, generator).requires_grad_(true);
  const auto w = at::randn({1, 3, 8, 8}, generator);
  (stage.decode(z) * w).sum().backward();
  // Straight-through: d/dz <w, D(q(z / s))> = (1 / s) x the gradient of the unquantized decoder at q(z / s).
  const auto q = vae->quantize(z.detach() / s).detach().requires_grad_(true);
  (vae->decode(q, false) * w).sum().backward();
  CHECK(testing::relative_error(z.grad(), q.grad() / s) < 1e-6);
}

TEST_CASE("FirstStage refuses wrong channel counts, sizes off the factor and non-positive scales") {
  auto vae = latent_test_tiny_vq(7);
  const FirstStage stage(vae);
  const auto channels = testing::error_of([&] { (void)stage.latent_shape({1, 4, 8, 8}); });
  INFO(channels);
  CHECK(channels.find("image batch shape [B, 3, H, W]") != std::string::npos);
  CHECK(channels.find("in_channels is 3") != std::string::npos);
  const auto latent_channels = testing::error_of([&] { (void)stage.image_shape({1, 4, 4, 4}); });
  INFO(latent_channels);
  CHECK(latent_channels.find("embed_dim is 3") != std::string::npos);
  const auto odd = testing::error_of([&] { (void)stage.latent_shape({1, 3, 9, 8}); });
  INFO(odd);
  CHECK(odd.find("9 x 8 have no latent") != std::string::npos);
  CHECK(odd.find("multiples of the autoencoder's downsampling factor 2") != std::string::npos);
  for (double scale : {0.0, -0.18215}) {
    const auto bad = testing::error_of([&] { FirstStage rejected(vae, scale); });
    INFO(bad);
    CHECK(bad.find("scale_factor must be > 0") != std::string::npos);
  }
  const auto empty = testing::error_of([&] { FirstStage rejected(LdmAutoencoder(nullptr)); });
  CHECK(empty.find("the autoencoder is empty") != std::string::npos);
  // The networks refuse latents of the wrong channel count too.
  const auto run = testing::error_of([&] { (void)stage.decode(torch::zeros({1, 4, 4, 4})); });
  INFO(run);
  CHECK(run.find("expected latents [B, 3, H, W]") != std::string::npos);
}

TEST_CASE("ThroughDecoder is A D: forward, measurement shape and gradient against dense matrices") {
  const auto codec = LinearAutoencoder::random(1, 2, 2, 11);
  const SubsampleOperator pixels;
  const ThroughDecoder<SubsampleOperator, LinearAutoencoder> op(pixels, codec);
  CHECK(op.measurement_shape({5, 2, 3, 3}) == Shape{5, 18});
  CHECK(op.autoencoder().mixing().equal(codec.mixing()));

  // The dense matrices of the two maps, built independently: D from the codec, A from unit images.
  const auto decoder = testing::to_eigen(codec.decoder_matrix({2, 3, 3}));  // [36, 18]
  const auto a = testing::dense_matrix([&](const torch::Tensor& x) { return pixels.forward(x); }, {1, 6, 6});
  const testing::Matrix ad = a * decoder;  // [18, 18]
  REQUIRE(ad.rows() == 18);
  REQUIRE(ad.cols() == 18);

  auto generator = make_generator(12);
  const auto z = at::randn({3, 2, 3, 3}, generator, torch::kFloat64);
  const auto y = at::randn({3, 18}, generator, torch::kFloat64);
  const auto forward = op.forward(z);
  REQUIRE(forward.sizes().vec() == op.measurement_shape(z.sizes().vec()));
  const auto z_flat = testing::to_eigen(z.reshape({3, 18}).t().contiguous());  // [18, 3]
  const testing::Matrix expected = ad * z_flat;
  CHECK((testing::to_eigen(forward.t().contiguous()) - expected).norm() < 1e-12 * expected.norm());

  // The gradient the latent methods take: d/dz ||A D z - y||^2 = 2 (A D)^T (A D z - y), per sample.
  const auto gradient = fidelity_gradient(GaussianLikelihood(0.05), op, y, z, FidelityPenalty::squared_norm);
  const testing::Matrix expected_gradient =
      2.0 * ad.transpose() * (expected - testing::to_eigen(y.t().contiguous()));
  const auto got = testing::to_eigen(gradient.gradient.reshape({3, 18}).t().contiguous());
  CHECK((got - expected_gradient).norm() < 1e-10 * expected_gradient.norm());
}

TEST_CASE("LatentPrior's latent shapes and its operator through the decoder") {
  const auto codec = LinearAutoencoder::random(1, 2, 2, 13);
  const auto prior_mean = torch::zeros({2, 3, 3}, torch::kFloat64);
  const LatentPrior prior(
      codec, GaussianPrior(prior_mean, torch::ones({2, 3, 3}, torch::kFloat64), DiffusionSchedule::linear()),
      DiffusionSchedule::linear());
  CHECK(prior.latent_shape({1, 6, 6}) == Shape{2, 3, 3});
  CHECK(prior.latent_shape({1, 10, 4}) == Shape{2, 5, 2});
  const auto batch = testing::error_of([&] { (void)prior.latent_shape({1, 1, 6, 6}); });
  INFO(batch);
  CHECK(batch.find("expected an image shape [C, H, W]") != std::string::npos);
  const auto op = prior.through_decoder(SubsampleOperator{});
  CHECK(op.measurement_shape({4, 2, 3, 3}) == Shape{4, 18});
  auto generator = make_generator(14);
  const auto z = at::randn({4, 2, 3, 3}, generator, torch::kFloat64);
  CHECK(torch::allclose(op.forward(z), SubsampleOperator{}.forward(prior.decode(z))));
  // One image channel from two latent ones: encode is D's pseudo-inverse, so D E D = D.
  CHECK(torch::allclose(prior.decode(prior.encode(prior.decode(z))), prior.decode(z)));

  const LatentPrior ldm(FirstStage(latent_test_tiny_vq(15)), prior.score_model(),
                        DiffusionSchedule::linear());
  CHECK(ldm.latent_shape({3, 16, 8}) == Shape{3, 8, 4});
}
