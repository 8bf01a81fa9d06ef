// The bundled latent prior (examples/prior/fashion_mnist_28_ldm.ckpt and .yaml, made by
// examples/train_latent_prior, docs/model-card.md) read as a CompVis LDM checkpoint is: the YAML through
// read_ldm_model_config, the UNet and the autoencoder by prefix with strict loads, the schedule buffers
// and scale_factor from the file. Then what training bought, against thresholds measured on these files:
// the autoencoder's reconstruction PSNR on eight Fashion-MNIST test images it never saw
// (tests/data/latent_prior), and the latent UNet's noise prediction beating the trivial one.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/latent_diffusion.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/schedule.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>
#include <vector>

namespace {

const std::filesystem::path kBundledLdmCheckpoint =
    std::filesystem::path(DIFFPOST_SOURCE_DIR) / "examples/prior/fashion_mnist_28_ldm.ckpt";
const std::filesystem::path kBundledLdmConfig =
    std::filesystem::path(DIFFPOST_SOURCE_DIR) / "examples/prior/fashion_mnist_28_ldm.yaml";

}  // namespace

TEST_CASE("the bundled latent prior loads as a CompVis LDM and its autoencoder and UNet do their jobs") {
  torch::NoGradGuard no_grad;
  const auto config = diffpost::read_ldm_model_config(kBundledLdmConfig);
  const auto yaml = YAML::LoadFile(kBundledLdmConfig.string());
  CHECK(yaml["model"]["target"].as<std::string>() == "ldm.models.diffusion.ddpm.LatentDiffusion");
  CHECK(yaml["model"]["params"]["cond_stage_config"].as<std::string>() == "__is_unconditional__");
  CHECK(config.unet.image_size() == 14);
  CHECK(config.unet.in_channels() == 3);
  CHECK(config.unet.out_channels() == 3);
  CHECK(config.parameterization == "eps");
  CHECK(config.linear_start == 0.0015);
  CHECK(config.linear_end == 0.0195);

  // Strict loads of each sub-module, by prefix, from the tensors under "state_dict".
  diffpost::AdmUNet unet(config.unet);
  diffpost::load_state_dict(
      unet, diffpost::read_state_dict(kBundledLdmCheckpoint,
                                      diffpost::ReadOptions{}.prefix("model.diffusion_model.")));
  REQUIRE(config.first_stage.has_value());
  CHECK(config.first_stage->target == "ldm.models.autoencoder.AutoencoderKL");
  diffpost::LdmAutoencoder autoencoder(config.first_stage->options);
  diffpost::load_state_dict(
      autoencoder,
      diffpost::read_state_dict(kBundledLdmCheckpoint, diffpost::ReadOptions{}.prefix("first_stage_model.")));
  unet->eval();
  autoencoder->eval();
  CHECK(autoencoder->options().downsampling_factor() == 2);

  // The file's schedule is ldm's linear one of the YAML, and its scale_factor the YAML's.
  const auto stored = diffpost::read_state_dict(kBundledLdmCheckpoint);
  CHECK(stored.origin().find("(key 'state_dict')") != std::string::npos);
  const auto schedule = diffpost::schedule_from_state_dict(stored).value();
  const auto expected = config.schedule();
  REQUIRE(schedule.num_steps() == 1000);
  for (int64_t i : {0, 1, 499, 999})
    CHECK(schedule.betas()[i] == doctest::Approx(expected.betas()[i]).epsilon(1e-6));
  // ldm's register_schedule buffers (float32); posterior_log_variance_clipped is left out: ldm clips the
  // first step's zero variance at 1e-20, diffpost (as guided-diffusion) repeats the second step's.
  const std::vector<std::pair<std::string, const std::vector<double>*>> buffers{
      {"alphas_cumprod_prev", &expected.alphas_cumprod_prev()},
      {"sqrt_one_minus_alphas_cumprod", &expected.sqrt_one_minus_alphas_cumprod()},
      {"sqrt_recipm1_alphas_cumprod", &expected.sqrt_recipm1_alphas_cumprod()},
      {"posterior_variance", &expected.posterior_variance()},
      {"posterior_mean_coef1", &expected.posterior_mean_coef1()},
      {"posterior_mean_coef2", &expected.posterior_mean_coef2()}};
  for (const auto& [name, values] : buffers) {
    const auto& buffer = stored.at(name);
    CHECK_MESSAGE((buffer.scalar_type() == torch::kFloat32), name);
    CHECK_MESSAGE(
        torch::allclose(buffer.to(torch::kFloat64), torch::tensor(*values, torch::kFloat64), 1e-5, 1e-7),
        name);
  }
  const double scale_factor = stored.at("scale_factor").item<double>();
  CHECK(scale_factor == doctest::Approx(config.scale_factor).epsilon(1e-6));

  // Reconstructions of unseen test images: measured 27.10 dB mean over these eight (27.46 dB over the first
  // 100 of the test split, docs/model-card.md); the threshold leaves about 1 dB.
  const auto images = diffpost::read_state_dict(std::filesystem::path(DIFFPOST_TEST_DATA_DIR) /
                                                "latent_prior/fashion_mnist_t10k_first8.pt")
                          .at("images");
  REQUIRE(images.sizes() == torch::IntArrayRef({8, 1, 28, 28}));
  const auto latents = autoencoder->encode(images) * scale_factor;
  CHECK(latents.sizes() == torch::IntArrayRef({8, 3, 14, 14}));
  const auto reconstruction = autoencoder->decode(latents / scale_factor).clamp(-1.0, 1.0);
  const double psnr = diffpost::psnr(reconstruction, images).mean().item<double>();
  MESSAGE("bundled latent prior: reconstruction PSNR over 8 test images ", psnr, " dB");
  CHECK(psnr > 26.0);

  // The UNet predicts the noise of noised test latents far better than eps_hat = 0 (whose error is
  // E[eps^2] = 1): measured 0.039 at these steps with this seed; the threshold leaves a margin.
  torch::manual_seed(0);
  const auto noise = torch::randn_like(latents);
  const auto t = torch::tensor({50, 200, 350, 500, 650, 800, 900, 999}, torch::kLong);
  const auto abar =
      torch::tensor(schedule.alphas_cumprod()).index_select(0, t).to(torch::kFloat32).view({-1, 1, 1, 1});
  const auto noisy = abar.sqrt() * latents + (1.0 - abar).sqrt() * noise;
  const double eps_error = (unet(noisy, t) - noise).square().mean().item<double>();
  MESSAGE("bundled latent prior: eps mean squared error ", eps_error,
          " (trivial prediction: ", noise.square().mean().item<double>(), ")");
  CHECK(eps_error < 0.1);
}

TEST_CASE("the bundled latent prior computes what CompVis ldm's own modules compute with its weights") {
  // tests/data/latent_prior/ldm_reference_io.pt: ldm's UNetModel, Encoder and Decoder (plus AutoencoderKL's
  // quant convolutions) built from the bundled YAML, loaded strictly from the bundled checkpoint, run on
  // seeded inputs (see the README there).
  torch::NoGradGuard no_grad;
  const auto reference = diffpost::read_state_dict(std::filesystem::path(DIFFPOST_TEST_DATA_DIR) /
                                                   "latent_prior/ldm_reference_io.pt");
  // Through the loader users call (load_latent_diffusion reads the YAML's first stage and the file's
  // schedule and scale factor).
  const auto ldm = diffpost::load_latent_diffusion(kBundledLdmCheckpoint, kBundledLdmConfig);
  auto unet = ldm.unet();
  auto autoencoder = ldm.autoencoder();
  unet->eval();
  autoencoder->eval();
  const auto relative_error = [](const torch::Tensor& ours, const torch::Tensor& theirs) {
    return ((ours - theirs).abs().max() / theirs.abs().max()).item<double>();
  };
  const double mean_error = relative_error(autoencoder->encode(reference.at("x")), reference.at("mean"));
  const double decode_error = relative_error(autoencoder->decode(reference.at("mean")), reference.at("rec"));
  const double eps_error = relative_error(unet(reference.at("z"), reference.at("t")), reference.at("eps"));
  MESSAGE("relative max errors against ldm: posterior mean ", mean_error, ", decoder ", decode_error,
          ", UNet eps ", eps_error);
  CHECK(mean_error <= 1e-5);
  CHECK(decode_error <= 1e-5);
  CHECK(eps_error <= 1e-5);
}
