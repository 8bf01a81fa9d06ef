// Loading CompVis latent diffusion checkpoints (io/latent_diffusion.hpp) against CompVis' own
// LatentDiffusion: tests/data/latent_diffusion holds a tiny LDM made and run by ldm's code on random weights
// (README.md there), a standalone first-stage checkpoint with the training losses' loss.* entries, and the
// reference's outputs. Also the first-stage part of the configs (the published vq-f4, kl-f8 and FFHQ LDM
// configs) and the refusals.
#include <diffpost/io.hpp>
#include <diffpost/io/latent_diffusion.hpp>
#include <diffpost/random.hpp>

#include "support/error_of.hpp"
#include "support/temp_dir.hpp"
#include "support/tensors.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using diffpost::testing::error_of;
using diffpost::testing::relative_error;

const fs::path kLatentDiffusionData = fs::path(DIFFPOST_TEST_DATA_DIR) / "latent_diffusion";
// The published CompVis configs (model sections; tests/data/ldm/README.md).
const fs::path kLdmConfigs = fs::path(DIFFPOST_TEST_DATA_DIR) / "ldm" / "configs";
const fs::path kTinyLdm = kLatentDiffusionData / "tiny_ldm.ckpt";
const fs::path kTinyLdmYaml = kLatentDiffusionData / "tiny_ldm.yaml";
const fs::path kTinyVq = kLatentDiffusionData / "tiny_vq.ckpt";
const fs::path kTinyVqYaml = kLatentDiffusionData / "tiny_vq.yaml";

diffpost::StateDict latent_load_reference() {
  return diffpost::read_state_dict(kLatentDiffusionData / "tiny_ldm_io.pt");
}

std::string latent_load_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `text` with its first `from` replaced by `to` (which must be there).
std::string latent_load_replace(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, (std::string("'") + from + "' is not in the text"));
  return text.replace(at, from.size(), to);
}

// The tiny LDM's checkpoint rewritten by `edit` (a StateDict -> StateDict) into `folder`.
template <class Edit>
fs::path latent_load_rewritten(const diffpost::testing::TempDir& folder, const std::string& name, Edit edit) {
  const auto path = folder.path() / name;
  diffpost::save_state_dict(edit(diffpost::read_state_dict(kTinyLdm)), path);
  return path;
}

fs::path latent_load_write(const diffpost::testing::TempDir& folder, const std::string& name,
                           const std::string& text) {
  const auto path = folder.path() / name;
  std::ofstream(path) << text;
  return path;
}

double latent_load_check(const std::string& what, const torch::Tensor& actual,
                         const torch::Tensor& expected) {
  REQUIRE_MESSAGE(actual.sizes() == expected.sizes(), what);
  const double error = relative_error(actual, expected);
  MESSAGE(what, ": relative max error ", error);
  CHECK(error <= 1e-5);
  return error;
}

}  // namespace

TEST_CASE("load_latent_diffusion: encode, decode and eps match CompVis LatentDiffusion on the same weights") {
  const auto ldm = diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml);
  const auto io = latent_load_reference();
  torch::NoGradGuard no_grad;
  latent_load_check("encode (get_first_stage_encoding(encode_first_stage(x)))", ldm.encode(io.at("x")),
                    io.at("encoded"));
  latent_load_check("first_stage_model.encode", ldm.autoencoder()->encode(io.at("x")), io.at("first_stage"));
  latent_load_check("decode (decode_first_stage)", ldm.decode(io.at("z")), io.at("decoded"));
  latent_load_check("eps (apply_model)", ldm.eps(io.at("z"), io.at("t")), io.at("eps"));
  CHECK(ldm.scale_factor() == 0.5);
  CHECK(ldm.unet()->options().num_channels() == 32);
  CHECK(ldm.autoencoder()->options().n_embed() == 16);
  CHECK_FALSE(ldm.unet()->is_training());
  CHECK_FALSE(ldm.autoencoder()->is_training());
  // The schedule is the file's: 100 steps of ldm's linear schedule from 0.0015 to 0.0195.
  REQUIRE(ldm.schedule().num_steps() == 100);
  CHECK(std::abs(ldm.schedule().betas().front() - 0.0015) < 1e-9);
  CHECK(std::abs(ldm.schedule().betas().back() - 0.0195) < 1e-9);

  // The EMA weights: LitEma's copy, which the reference ran inside ema_scope.
  const auto ema =
      diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml, diffpost::LatentDiffusionOptions{}.ema(true));
  latent_load_check("eps with the EMA weights", ema.eps(io.at("z"), io.at("t")), io.at("eps_ema"));
  CHECK(relative_error(io.at("eps"), io.at("eps_ema")) > 0.1);  // the two weight sets differ
  latent_load_check("decode, EMA load (the autoencoder has no EMA copy)", ema.decode(io.at("z")),
                    io.at("decoded"));
}

TEST_CASE("load_latent_diffusion: the loaded model is differentiable, on the dtype asked for") {
  const auto io = latent_load_reference();
  const auto ldm = diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml,
                                                   diffpost::LatentDiffusionOptions{}.dtype(torch::kFloat64));
  CHECK((ldm.unet()->parameters().front().scalar_type() == torch::kFloat64));
  const auto z = io.at("z").to(torch::kFloat64);
  // float64 weights from float16-exact values: the same outputs.
  latent_load_check("eps in float64", ldm.eps(z, io.at("t")), io.at("eps").to(torch::kFloat64));

  // eps: the gradient along a direction against central differences. The UNet's GroupNorms normalise in
  // float32 whatever the input's dtype, so the differences carry float32 rounding (about 1e-6 of the sum
  // here, 1e-3 after dividing by 2h): h = 1e-3 and a 1e-3 relative tolerance.
  auto generator = diffpost::make_generator(25);
  const auto direction = at::randn(z.sizes(), generator, z.options());
  const auto weights = at::randn(z.sizes(), generator, z.options());
  auto zg = z.clone().requires_grad_(true);
  const auto loss = (ldm.eps(zg, io.at("t")) * weights).sum();
  const auto gradient = torch::autograd::grad({loss}, {zg})[0];
  const double h = 1e-3;
  torch::NoGradGuard no_grad;
  const double numeric = ((ldm.eps(z + h * direction, io.at("t")) * weights).sum().item<double>() -
                          (ldm.eps(z - h * direction, io.at("t")) * weights).sum().item<double>()) /
                         (2 * h);
  const double analytic = (gradient * direction).sum().item<double>();
  MESSAGE(std::string("eps directional derivative: autograd "), analytic, ", central differences ", numeric);
  CHECK(std::abs(analytic - numeric) <= 1e-3 * std::max(1.0, std::abs(numeric)));
}

TEST_CASE("load_latent_diffusion: decode and encode carry gradients, with the scale factor in them") {
  const auto io = latent_load_reference();
  const auto ldm = diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml);
  // decode(z) = D(quantize(z / 0.5)) with the straight-through estimator: its gradient is 1/0.5 times the
  // autoencoder's at z / 0.5.
  auto z = io.at("z").clone().requires_grad_(true);
  auto weights = torch::randn_like(io.at("decoded"));
  const auto through_ldm = torch::autograd::grad({(ldm.decode(z) * weights).sum()}, {z})[0];
  auto half = (io.at("z") / 0.5).requires_grad_(true);
  const auto through_vae =
      torch::autograd::grad({(ldm.autoencoder()->decode(half) * weights).sum()}, {half})[0];
  CHECK(through_ldm.abs().max().item<double>() > 0);
  CHECK(relative_error(through_ldm, through_vae / 0.5) <= 1e-6);
  // encode: 0.5 times the autoencoder's gradient.
  auto x = io.at("x").clone().requires_grad_(true);
  auto latent_weights = torch::randn_like(io.at("encoded"));
  const auto encode_gradient = torch::autograd::grad({(ldm.encode(x) * latent_weights).sum()}, {x})[0];
  auto x2 = io.at("x").clone().requires_grad_(true);
  const auto vae_gradient =
      torch::autograd::grad({(ldm.autoencoder()->encode(x2) * latent_weights).sum()}, {x2})[0];
  CHECK(encode_gradient.abs().max().item<double>() > 0);
  CHECK(relative_error(encode_gradient, 0.5 * vae_gradient) <= 1e-6);
}

TEST_CASE("load_latent_diffusion: prior() is the LatentPrior of the loaded parts") {
  const auto io = latent_load_reference();
  const auto ldm = diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml);
  auto prior = ldm.prior();
  CHECK((prior.latent_shape({3, 16, 16}) == diffpost::Shape{3, 8, 8}));
  CHECK(prior.schedule().num_steps() == 100);
  torch::NoGradGuard no_grad;
  CHECK(torch::equal(prior.decode(io.at("z")), ldm.decode(io.at("z"))));
  CHECK(torch::equal(prior.score_model()(io.at("z"), io.at("t")), ldm.eps(io.at("z"), io.at("t"))));
  // The same modules, not copies.
  CHECK((prior.autoencoder().autoencoder().ptr() == ldm.autoencoder().ptr()));
  CHECK((prior.score_model().ptr() == ldm.unet().ptr()));
}

TEST_CASE("load_first_stage: a standalone first-stage checkpoint, its loss.* entries skipped by name") {
  const auto file = diffpost::read_state_dict(kTinyVq);
  CHECK(file.contains("loss.discriminator.main.0.weight"));
  CHECK(file.contains("loss.perceptual_loss.lin0.model.1.weight"));
  const auto vae = diffpost::load_first_stage(kTinyVq, kTinyVqYaml);
  CHECK_FALSE(vae->is_training());
  const auto io = latent_load_reference();
  torch::NoGradGuard no_grad;
  // As the LDM's first stage (scale factor 0.5), the reference's outputs with this autoencoder swapped in.
  const diffpost::FirstStage first_stage(vae, 0.5);
  latent_load_check("standalone autoencoder, encode", first_stage.encode(io.at("x")),
                    io.at("standalone_encoded"));
  latent_load_check("standalone autoencoder, decode", first_stage.decode(io.at("z")),
                    io.at("standalone_decoded"));

  // The tool's --autoencoder: the LDM with this autoencoder instead of its own, with either config.
  for (const auto& options :
       {diffpost::LatentDiffusionOptions{}.autoencoder(kTinyVq),
        diffpost::LatentDiffusionOptions{}.autoencoder(kTinyVq).autoencoder_config(kTinyVqYaml)}) {
    const auto ldm = diffpost::load_latent_diffusion(kTinyLdm, kTinyLdmYaml, options);
    latent_load_check("LDM with --autoencoder, decode", ldm.decode(io.at("z")), io.at("standalone_decoded"));
    latent_load_check("LDM with --autoencoder, eps", ldm.eps(io.at("z"), io.at("t")), io.at("eps"));
  }
  // An LDM checkpoint serves as an autoencoder file too: its first_stage_model.* entries.
  latent_load_check("first stage of the LDM checkpoint",
                    diffpost::load_first_stage(kTinyLdm, kTinyLdmYaml)->decode(io.at("z") / 0.5),
                    io.at("decoded"));

  // Strict for everything but loss.*: another stray entry is named.
  diffpost::testing::TempDir folder("latent-load-vq");
  auto stray = diffpost::read_state_dict(kTinyVq);
  stray.insert("colorize", torch::zeros({3, 5, 1, 1}));
  diffpost::save_state_dict(stray, folder.path() / "stray.ckpt");
  CHECK(error_of([&] {
          diffpost::load_first_stage(folder.path() / "stray.ckpt", kTinyVqYaml);
        }).find("'colorize' (file shape [3, 5, 1, 1]) is not in the model") != std::string::npos);
}

TEST_CASE("load_latent_diffusion: scale_by_std reads the scale factor from the checkpoint") {
  diffpost::testing::TempDir folder("latent-load-scale");
  const auto io = latent_load_reference();
  const auto with_buffer = latent_load_rewritten(folder, "scaled.ckpt", [](diffpost::StateDict state) {
    state.insert("scale_factor", torch::tensor(0.25));
    return state;
  });
  const auto by_std = latent_load_write(
      folder, "by_std.yaml",
      latent_load_replace(latent_load_text(kTinyLdmYaml), "scale_factor: 0.5", "scale_by_std: true"));
  const auto ldm = diffpost::load_latent_diffusion(with_buffer, by_std);
  CHECK(ldm.scale_factor() == 0.25);
  torch::NoGradGuard no_grad;
  // decode(z) = D(q(z / 0.25)); the reference decoded D(q(z / 0.5)) = our decode(z / 2).
  latent_load_check("decode with the file's scale factor", ldm.decode(io.at("z") * 0.5), io.at("decoded"));
  // The same file with a config that says nothing of it: refused, naming the fix.
  CHECK(
      error_of([&] { diffpost::load_latent_diffusion(with_buffer, kTinyLdmYaml); })
          .find(
              "stores scale_factor 0.25 (a model trained with scale_by_std) but the config has scale_by_std "
              "false and scale_factor 0.5; set scale_by_std: true") != std::string::npos);
  CHECK(
      error_of([&] { diffpost::load_latent_diffusion(kTinyLdm, by_std); })
          .find("scale_by_std: true, so the scale factor is the checkpoint's 'scale_factor' buffer, but the "
                "file has none") != std::string::npos);
}

TEST_CASE("load_latent_diffusion refuses, by name, what it cannot load faithfully") {
  diffpost::testing::TempDir folder("latent-load-refusals");
  const auto yaml = latent_load_text(kTinyLdmYaml);
  auto error_for_yaml = [&](const std::string& text, const fs::path& checkpoint = kTinyLdm) {
    const auto path = latent_load_write(folder, "edited.yaml", text);
    return error_of([&] { diffpost::load_latent_diffusion(checkpoint, path); });
  };
  // No autoencoder in the file: the fix is the autoencoder's own checkpoint.
  const auto unet_only =
      latent_load_rewritten(folder, "unet_only.ckpt", [](const diffpost::StateDict& state) {
        diffpost::StateDict kept;
        for (const auto& [name, tensor] : state)
          if (name.rfind("first_stage_model.", 0) != 0) kept.insert(name, tensor);
        return kept;
      });
  const auto missing = error_of([&] { diffpost::load_latent_diffusion(unet_only, kTinyLdmYaml); });
  CHECK(missing.find("has no first_stage_model.* entries (the autoencoder)") != std::string::npos);
  CHECK(missing.find("LatentDiffusionOptions{}.autoencoder(") != std::string::npos);
  // ... which works with the standalone file.
  CHECK_NOTHROW(diffpost::load_latent_diffusion(unet_only, kTinyLdmYaml,
                                                diffpost::LatentDiffusionOptions{}.autoencoder(kTinyVq)));
  // EMA weights asked for, none in the file.
  const auto no_ema = latent_load_rewritten(folder, "no_ema.ckpt", [](const diffpost::StateDict& state) {
    diffpost::StateDict kept;
    for (const auto& [name, tensor] : state)
      if (name.rfind("model_ema.", 0) != 0) kept.insert(name, tensor);
    return kept;
  });
  CHECK(error_of([&] {
          diffpost::load_latent_diffusion(no_ema, kTinyLdmYaml, diffpost::LatentDiffusionOptions{}.ema(true));
        }).find("has no EMA copy of 'model.diffusion_model.'") != std::string::npos);

  // Config and checkpoint disagree: the codebook size, the UNet width, the schedule.
  const auto codebook = error_for_yaml(latent_load_replace(yaml, "n_embed: 16", "n_embed: 32"));
  CHECK(codebook.find("'quantize.embedding.weight' has shape [16, 3] in the file but [32, 3] in the model") !=
        std::string::npos);
  CHECK(codebook.find("n_embed=32") != std::string::npos);
  const auto width = error_for_yaml(latent_load_replace(yaml, "model_channels: 32", "model_channels: 64"));
  CHECK(width.find("'time_embed.0.weight' has shape [128, 32] in the file but [256, 64] in the model") !=
        std::string::npos);
  CHECK(error_for_yaml(latent_load_replace(yaml, "timesteps: 100", "timesteps: 1000"))
            .find("the file's schedule has 100 steps (its 'betas') but the config's has 1000") !=
        std::string::npos);
  CHECK(error_for_yaml(latent_load_replace(yaml, "linear_end: 0.0195", "linear_end: 0.012"))
            .find("differ from the config's linear schedule from linear_start 0.0015 to linear_end 0.012") !=
        std::string::npos);
  CHECK(error_for_yaml(latent_load_replace(yaml, "in_channels: 3\n        out_channels: 3",
                                           "in_channels: 4\n        out_channels: 4"))
            .find("the UNet takes 4 latent channels (unet_config in_channels) but the autoencoder's latents "
                  "have 3") != std::string::npos);
  CHECK(error_for_yaml(latent_load_replace(yaml, "    scale_factor: 0.5\n",
                                           "    scale_factor: 0.5\n    parameterization: x0\n"))
            .find("parameterization is 'x0'") != std::string::npos);

  // Conditional models, in the config.
  CHECK(error_for_yaml(latent_load_replace(
                           yaml, "cond_stage_config: __is_unconditional__",
                           "cond_stage_config:\n      target: ldm.modules.encoders.modules.ClassEmbedder\n"
                           "      params: {embed_dim: 512, key: class_label}"))
            .find("cond_stage_config is target 'ldm.modules.encoders.modules.ClassEmbedder': a conditional "
                  "LDM") != std::string::npos);
  CHECK(error_for_yaml(latent_load_replace(yaml, "cond_stage_config: __is_unconditional__",
                                           "cond_stage_config: __is_first_stage__"))
            .find("cond_stage_config is '__is_first_stage__': a conditional LDM") != std::string::npos);
  CHECK(error_for_yaml(
            latent_load_replace(yaml, "    concat_mode: false\n", "    conditioning_key: crossattn\n"))
            .find("conditioning_key is 'crossattn'") != std::string::npos);
  // A config without the autoencoder.
  CHECK(error_of([&] {
          auto config = diffpost::read_ldm_model_config(kTinyLdmYaml);
          config.first_stage.reset();
          diffpost::load_latent_diffusion(kTinyLdm, config);
        }).find("the config has no model.params.first_stage_config") != std::string::npos);
}

TEST_CASE("first-stage configs: the published vq-f4, kl-f8 and FFHQ LDM configs read into the presets") {
  auto printed = [](const diffpost::LdmAutoencoderOptions& options) {
    std::ostringstream text;
    text << options;
    return text.str();
  };
  // models/first_stage_models/vq-f4/config.yaml and kl-f8/config.yaml of CompVis latent-diffusion.
  const auto vq_f4 = diffpost::read_ldm_first_stage_config(kLdmConfigs / "vq-f4-config.yaml");
  CHECK(vq_f4.target == "ldm.models.autoencoder.VQModel");
  CHECK(printed(vq_f4.options) == printed(diffpost::LdmAutoencoderOptions::vq_f4()));
  const auto kl_f8 = diffpost::read_ldm_first_stage_config(kLdmConfigs / "kl-f8-config.yaml");
  CHECK(printed(kl_f8.options) == printed(diffpost::LdmAutoencoderOptions::kl_f8()));
  // configs/latent-diffusion/ffhq-ldm-vq-4.yaml: its first_stage_config is the vq-f4 model.
  const auto ffhq = diffpost::read_ldm_first_stage_config(kLdmConfigs / "ffhq-ldm-vq-4.yaml");
  CHECK(ffhq.target == "ldm.models.autoencoder.VQModelInterface");
  CHECK(printed(ffhq.options) == printed(diffpost::LdmAutoencoderOptions::vq_f4()));

  // The tiny fixtures: the LDM config's first stage, the standalone file, and the LDM config read as a
  // first-stage config (its first_stage_config).
  const auto ldm = diffpost::read_ldm_model_config(kTinyLdmYaml);
  REQUIRE(ldm.first_stage.has_value());
  CHECK(ldm.first_stage->target == "ldm.models.autoencoder.VQModelInterface");
  const auto tiny = diffpost::LdmAutoencoderOptions{}
                        .embed_dim(3)
                        .n_embed(16)
                        .z_channels(4)
                        .resolution(16)
                        .ch(32)
                        .ch_mult({1, 2})
                        .num_res_blocks(1);
  CHECK(printed(ldm.first_stage->options) == printed(tiny));
  CHECK(printed(diffpost::read_ldm_first_stage_config(kTinyVqYaml).options) == printed(tiny));
  CHECK(printed(diffpost::read_ldm_first_stage_config(kTinyLdmYaml).options) == printed(tiny));
  CHECK(ldm.scale_factor == 0.5);
  CHECK_FALSE(ldm.scale_by_std);
  CHECK(ldm.use_ema);
}

TEST_CASE("first-stage configs diffpost cannot build are refused by name") {
  const auto text = latent_load_text(kTinyVqYaml);
  auto error_for = [](const std::string& edited) {
    return error_of([&] { diffpost::parse_ldm_first_stage_config(edited, "vq.yaml"); });
  };
  CHECK(
      error_for(latent_load_replace(text, "ldm.models.autoencoder.VQModel",
                                    "ldm.models.autoencoder.IdentityFirstStage"))
          .find("target 'ldm.models.autoencoder.IdentityFirstStage' is not an autoencoder diffpost builds") !=
      std::string::npos);
  CHECK(error_for(latent_load_replace(text, "      dropout: 0.0\n",
                                      "      dropout: 0.0\n      attn_typ: vanilla\n"))
            .find("unknown Encoder/Decoder argument 'attn_typ'") != std::string::npos);
  CHECK(error_for(latent_load_replace(text, "    n_embed: 16\n", ""))
            .find("missing one of the required keys ddconfig, embed_dim, n_embed") != std::string::npos);
  CHECK(error_for(latent_load_replace(text, "double_z: false", "double_z: true"))
            .find("a VQ autoencoder needs double_z false") != std::string::npos);
  CHECK(error_for(latent_load_replace(text, "    n_embed: 16\n", "    n_embed: 16\n    remap: used.npy\n"))
            .find("remap (a codebook index remapping") != std::string::npos);
  CHECK(error_for(latent_load_replace(text, "    n_embed: 16\n", "    n_embed: 16\n    use_ema: true\n"))
            .find("use_ema true (the autoencoder's own EMA copy) is not supported") != std::string::npos);
  CHECK(
      error_for(latent_load_replace(text, "ch: 32", "ch: 48")).find("ch must be a positive multiple of 32") !=
      std::string::npos);
  CHECK(error_for(latent_load_replace(text, "      ch_mult:\n      - 1\n      - 2\n", "      ch_mult: 1,x\n"))
            .find("'ch_mult' must be a comma-separated list of integers") != std::string::npos);
  const auto with_attn_type = [&](const std::string& type) {
    return latent_load_replace(text, "      dropout: 0.0\n",
                               "      dropout: 0.0\n      attn_type: " + type + "\n");
  };
  CHECK(error_for(with_attn_type("vanilla")) == "(no error)");
  CHECK(error_for(with_attn_type("linear")).find("attn_type 'linear' is not supported") != std::string::npos);
  CHECK(error_for("image_size: 8\n").find("not a first-stage autoencoder config") != std::string::npos);
  // n_embed is VQModel's argument, not AutoencoderKL's.
  CHECK(error_for(latent_load_replace(latent_load_replace(text, "ldm.models.autoencoder.VQModel",
                                                          "ldm.models.autoencoder.AutoencoderKL"),
                                      "double_z: false", "double_z: true"))
            .find("unknown AutoencoderKL argument 'n_embed'") != std::string::npos);
}
