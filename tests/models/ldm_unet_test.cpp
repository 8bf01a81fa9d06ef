// The CompVis latent-diffusion UNet is the ADM UNet in another configuration: its YAML layout
// (`model.params.unet_config.params`, attention at downsample factors) read into AdmUNetOptions, and the
// output of ldm's own UNetModel on random weights (tests/data/ldm/tiny_unet*.ckpt, README there) matched by
// AdmUNet loaded from the `model.diffusion_model.` entries of the checkpoint.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/models/adm_unet.hpp>

#include "support/error_of.hpp"
#include "support/file_bytes.hpp"
#include "support/ldm_tiny.hpp"
#include "support/tensors.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

using diffpost::testing::ldm_tiny_yaml;

namespace {

const std::filesystem::path kLdmUNetData = std::filesystem::path(DIFFPOST_TEST_DATA_DIR) / "ldm";

// The model section of ffhq-ldm-vq-4.yaml (the FFHQ 256 LDM), with the keys and values of the published file.
const std::filesystem::path kLdmFfhqYaml = kLdmUNetData / "configs" / "ffhq-ldm-vq-4.yaml";
;

}  // namespace

TEST_CASE(
    "the FFHQ LDM config reads into AdmUNetOptions: attention at downsample factors, no learned sigma") {
  const auto config = diffpost::read_ldm_model_config(kLdmFfhqYaml);
  const auto& o = config.unet;
  CHECK(o.image_size() == 64);
  CHECK(o.in_channels() == 3);
  CHECK(o.out_channels() == 3);
  CHECK(o.num_channels() == 224);
  CHECK(o.num_res_blocks() == 2);
  CHECK(o.channel_mult() == std::vector<int64_t>{1, 2, 3, 4});
  // ds 8, 4, 2 on 64x64 latents: attention on the 8, 16 and 32 feature maps.
  CHECK(o.attention_resolutions() == std::vector<int64_t>{8, 16, 32});
  CHECK(o.attention_downsample_rates() == std::vector<int64_t>{8, 4, 2});
  CHECK(o.num_head_channels() == 32);
  CHECK_FALSE(o.learn_sigma());
  CHECK_FALSE(o.use_scale_shift_norm());
  CHECK_FALSE(o.resblock_updown());
  CHECK_FALSE(o.use_new_attention_order());
  // The parameter count of ldm's UNetModel built with these arguments (sum of numel over its 368 tensors,
  // printed by the fixture run).
  CHECK(diffpost::adm_parameter_count(o) == 274056163);
  CHECK(config.timesteps == 1000);
  CHECK(config.linear_start == 0.0015);
  CHECK(config.linear_end == 0.0195);
  CHECK(config.scale_factor == 1.0);
  CHECK(config.parameterization == "eps");
  // The first stage: ldm's vq-f4 autoencoder.
  REQUIRE(config.first_stage.has_value());
  CHECK(config.first_stage->target == "ldm.models.autoencoder.VQModelInterface");
  std::ostringstream first_stage, vq_f4;
  first_stage << config.first_stage->options;
  vq_f4 << diffpost::LdmAutoencoderOptions::vq_f4();
  CHECK(first_stage.str() == vq_f4.str());
  const auto schedule = config.schedule();
  REQUIRE(schedule.num_steps() == 1000);
  CHECK(std::abs(schedule.betas().front() - 0.0015) < 1e-15);
  CHECK(std::abs(schedule.betas().back() - 0.0195) < 1e-15);
  // linspace of the square roots, squared: the midpoint of the roots, not of the betas.
  const double middle_root = std::sqrt(0.0015) + (std::sqrt(0.0195) - std::sqrt(0.0015)) * 500.0 / 999.0;
  CHECK(std::abs(schedule.betas()[500] - middle_root * middle_root) < 1e-15);

  // The ADM config reader recognises the layout too.
  const auto adm =
      diffpost::parse_adm_model_config(diffpost::testing::read_bytes(kLdmFfhqYaml), "ffhq-ldm-vq-4.yaml");
  CHECK(fmt::format("{}", adm.options) == fmt::format("{}", o));
}

TEST_CASE("LDM configs diffpost cannot build are refused by name") {
  using diffpost::testing::error_of;
  auto error_for = [](const std::string& text) {
    return error_of([&] { diffpost::parse_ldm_model_config(text, "ldm.yaml"); });
  };
  CHECK(error_for(ldm_tiny_yaml("        use_spatial_transformer: true\n        context_dim: 512\n"))
            .find("SpatialTransformer (use_spatial_transformer, context_dim) is not supported") !=
        std::string::npos);
  CHECK(error_for(ldm_tiny_yaml("        num_head_channel: 8\n"))
            .find("unknown UNetModel argument 'num_head_channel'") != std::string::npos);
  CHECK(error_for(ldm_tiny_yaml("        dims: 3\n")).find("dims must be 2") != std::string::npos);
  CHECK(error_for(ldm_tiny_yaml("        n_embed: 8192\n")).find("n_embed") != std::string::npos);
  std::string bad_factor = ldm_tiny_yaml();
  bad_factor.replace(bad_factor.find("[2]"), 3, "[3]");
  CHECK(error_for(bad_factor)
            .find("attention_resolutions entry 3 (a downsample factor in ldm) does not divide "
                  "image_size 8") != std::string::npos);
  std::string unreached = ldm_tiny_yaml();
  unreached.replace(unreached.find("[2]"), 3, "[4]");
  CHECK(error_for(unreached).find("attention resolution 2 is never reached") != std::string::npos);
  CHECK(error_for("image_size: 8\n").find("not a latent-diffusion config") != std::string::npos);
  CHECK(error_of([&] {
          static_cast<void>(diffpost::parse_ldm_model_config(R"(model:
  params:
    beta_schedule: cosine
    unet_config:
      params: {image_size: 8, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 1],
               attention_resolutions: [2], num_head_channels: 8}
)")
                                .schedule());
        }).find("beta_schedule 'cosine' is not supported") != std::string::npos);

  // out_channels: explicit when it differs from in_channels; refused against learn_sigma's 2 * in_channels.
  std::string latent_out = ldm_tiny_yaml();
  latent_out.replace(latent_out.find("out_channels: 3"), 15, "out_channels: 4");
  const auto options = diffpost::parse_ldm_model_config(latent_out).unet;
  CHECK(options.out_channels() == 4);
  diffpost::AdmUNet four(options);
  CHECK(four(torch::zeros({1, 3, 8, 8}), torch::zeros({1}, torch::kLong)).size(1) == 4);
  CHECK(error_of([] {
          diffpost::AdmUNetOptions(8, 32, 1).learn_sigma(true).explicit_out_channels(3).validate();
        }).find("learn_sigma needs 2 * in_channels = 6 output channels") != std::string::npos);
  // Written and read back by the ADM config writer.
  const auto text = diffpost::adm_model_config_yaml(options);
  CHECK(text.find("out_channels: 4\n") != std::string::npos);
  CHECK(diffpost::parse_adm_model_config(text).options.out_channels() == 4);
  CHECK(diffpost::adm_model_config_yaml(diffpost::AdmUNetOptions::ffhq256()).find("out_channels") ==
        std::string::npos);
}

TEST_CASE(
    "AdmUNet matches ldm's UNetModel, loaded from the model.diffusion_model. entries of an LDM checkpoint") {
  const auto config = diffpost::parse_ldm_model_config(ldm_tiny_yaml(), "tiny ldm config");
  diffpost::AdmUNet model(config.unet);
  // Strict within the selection: every UNet tensor of the file, and only those, fill the model.
  const auto report = diffpost::load_checkpoint(model, kLdmUNetData / "tiny_unet.ckpt", {},
                                                diffpost::ReadOptions{}.prefix("model.diffusion_model."));
  CHECK(report.loaded.size() == 126);
  model->eval();
  const auto io = diffpost::read_state_dict(kLdmUNetData / "tiny_unet_io.pt");
  torch::NoGradGuard no_grad;
  const auto out = model(io.at("x"), io.at("t"));
  REQUIRE(out.sizes() == io.at("out").sizes());
  const double error = diffpost::testing::relative_error(out, io.at("out"));
  MESSAGE("ldm UNetModel parity, relative max error ", error);
  CHECK(error <= 1e-5);

  // The schedule buffers of the same file: ldm's linear schedule, as the config gives it.
  const auto stored =
      diffpost::schedule_from_state_dict(diffpost::read_state_dict(kLdmUNetData / "tiny_unet.ckpt"));
  REQUIRE(stored.has_value());
  const auto from_config = config.schedule();
  REQUIRE(stored->num_steps() == from_config.num_steps());
  double worst = 0;
  for (int64_t i = 0; i < stored->num_steps(); ++i)
    worst = std::max(worst, std::abs(stored->betas()[i] - from_config.betas()[i]) / from_config.betas()[i]);
  CHECK(worst < 1e-7);  // float32 storage of the float64 betas
}
