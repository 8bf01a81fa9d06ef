// One PSLD step of diffpost against one step of the official PSLD sampler (`psld.py`'s p_sample_ddim, the
// inpainting branch) on the same tiny latent UNet and VQ autoencoder, inputs and noise.
// tests/data/psld/README.md says how the reference data were made.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/methods/psld.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/noise/gaussian.hpp>
#include <diffpost/operators/inpainting.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"
#include "support/ldm_tiny.hpp"

#include "support/tensors.hpp"

#include <filesystem>
#include <string>

#include <fmt/format.h>

TEST_CASE("a PSLD step matches the official psld.py step on a tiny latent UNet and VQ autoencoder") {
  using namespace diffpost;
  const std::filesystem::path data(DIFFPOST_TEST_DATA_DIR);
  // The UNet of tests/data/ldm/tiny_unet.ckpt with its ldm config (tests/models/ldm_unet_test.cpp).
  const auto config = parse_ldm_model_config(testing::ldm_tiny_yaml(), "tiny ldm config");
  AdmUNet unet(config.unet);
  load_checkpoint(unet, data / "ldm" / "tiny_unet.ckpt", {}, ReadOptions{}.prefix("model.diffusion_model."));
  unet->eval();
  // The VQ autoencoder of tests/data/ldm_autoencoder (README there): weights drawn after manual_seed(11).
  LdmAutoencoder vq(testing::ldm_tiny_vq());
  vq->eval();
  torch::manual_seed(11);
  testing::randomize_parameters(*vq, at::detail::getDefaultCPUGenerator());

  const auto reference = read_state_dict(data / "psld" / "reference_step.pt");
  const PosteriorSampler psld(PSLD<GaussianLikelihood, InpaintingOperator, FirstStage>(
      GaussianLikelihood(0.05), ThroughDecoder(InpaintingOperator(reference.at("mask")), FirstStage(vq)),
      config.schedule(), PSLDOptions{}.ddim_steps(50).eta(0.5).omega(0.7).gamma(0.3)));
  // ldm's 50 uniform DDIM timesteps, as the reference sampler made them.
  const auto& timesteps = reference.at("ddim_timesteps");
  REQUIRE(timesteps.numel() == psld.method().schedule().num_steps());
  for (int64_t i = 0; i < timesteps.numel(); ++i)
    CHECK(psld.method().schedule().model_timestep(i) == timesteps[i].item<int64_t>());

  auto generator = make_generator(0);  // PSLD draws nothing beyond the step's given noise
  for (int index : {37, 12}) {
    CAPTURE(index);
    const auto suffix = fmt::format("_{}", index);
    const auto result = psld.step(unet, reference.at("z_t" + suffix), reference.at("y"), index,
                                  reference.at("noise" + suffix), generator);
    const double z0_error = testing::relative_error(result.x0_hat, reference.at("pred_z0" + suffix));
    const double step_error = testing::relative_error(result.x_prev, reference.at("z_prev" + suffix));
    MESSAGE("PSLD step ", index, ": relative max error z0_hat ", z0_error, ", z_{t-1} ", step_error);
    CHECK(z0_error <= 1e-5);
    CHECK(step_error <= 1e-5);
  }
}
