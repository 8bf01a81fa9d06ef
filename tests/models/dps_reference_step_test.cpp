// One DPS step of diffpost against one step of the reference implementation's loop (p_sample, then
// PosteriorSampling.conditioning with scale 0.5) on the same ADM UNet, inputs and noise.
// tests/data/dps_step/README.md says how the reference data were made.
#include <diffpost/dps.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/operators/inpainting.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/adm_small.hpp"
#include "support/tensors.hpp"

#include <string>

#include <fmt/format.h>

TEST_CASE("a DPS step matches the reference's p_sample + PosteriorSampling step number for number") {
  using namespace diffpost;
  using testing::relative_error;
  AdmUNet model(testing::adm_small_options());
  load_checkpoint(model, testing::adm_small_state_dict_path());
  model->eval();
  const auto reference = read_state_dict(std::string(DIFFPOST_TEST_DATA_DIR) + "/dps_step/reference_step.pt");
  const auto& mask = reference.at("mask");
  const PosteriorSampler dps(DPS<GaussianLikelihood, InpaintingOperator>(
      GaussianLikelihood(0.05), InpaintingOperator{mask[0][0]},
      DDPMSampler(DiffusionSchedule::linear().respaced("50")), DPSOptions{}.scale(0.5)));
  auto generator = make_generator(0);  // DPS draws nothing beyond the step's given noise
  // Bound as the UNet parity test's: x0_hat multiplies the network's float32 eps error by sqrt(1/abar - 1),
  // about 11 at step 35 (original t = 714). Measured: 7.6e-6 (x0_hat) and 1.9e-7 (x_prev) at step 35.
  for (int index : {35, 0}) {
    CAPTURE(index);
    const auto suffix = fmt::format("_{}", index);
    auto result = dps.step(model, reference.at("x_t" + suffix), reference.at("y"), index,
                           reference.at("noise" + suffix), generator);
    CHECK(relative_error(result.x0_hat, reference.at("x0_hat" + suffix)) < 1e-4);
    CHECK(relative_error(result.x_prev, reference.at("x_prev" + suffix)) < 1e-4);
    CHECK(result.residual.item<double>() ==
          doctest::Approx(reference.at("distance" + suffix).item<double>()).epsilon(1e-5));
  }
}
