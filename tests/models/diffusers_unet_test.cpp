// diffusers' UNet2DModel and schedulers against diffusers' own code (tests/data/diffusers/README.md says how
// the data was made): parameter names and shapes of the published google/ddpm-cifar10-32 and
// ddpm-celebahq-256 configurations, outputs of diffusers' UNet2DModel on seeded random weights loaded through
// the folder loader from safetensors and from .bin (with the old attention names), the eps conversion of
// sample and v predictions against closed forms, scheduler tables, and the refusals.
#include <diffpost/concepts.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/diffusers.hpp>
#include <diffpost/io/safetensors.hpp>
#include <diffpost/models/diffusers_unet.hpp>
#include <diffpost/samplers/common.hpp>

#include "support/error_of.hpp"
#include "support/temp_dir.hpp"
#include "support/tensors.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using diffpost::testing::error_of;
using diffpost::testing::relative_error;
using diffpost::testing::TempDir;

static_assert(diffpost::ScoreModel<diffpost::DiffusersUNet>, "DiffusersUNet must model ScoreModel");

const fs::path kData = fs::path(DIFFPOST_TEST_DATA_DIR) / "diffusers";

std::vector<std::pair<std::string, std::vector<int64_t>>> read_parameter_list(const fs::path& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path.string());
  std::vector<std::pair<std::string, std::vector<int64_t>>> list;
  std::string name, shape;
  while (in >> name >> shape) {
    std::vector<int64_t> sizes;
    std::stringstream parts(shape);
    for (std::string part; std::getline(parts, part, ',');) sizes.push_back(std::stoll(part));
    list.emplace_back(name, sizes);
  }
  return list;
}

void check_parameters(const diffpost::DiffusersUNetOptions& options, const fs::path& list_file) {
  const auto expected = read_parameter_list(list_file);
  diffpost::DiffusersUNet model(options);
  const auto parameters = model->named_parameters();
  REQUIRE(parameters.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(parameters[i].key() == expected[i].first);
    CHECK_MESSAGE(parameters[i].value().sizes().vec() == expected[i].second, expected[i].first);
  }
}

// The fixture weights, drawn as the script drew them in Python: torch.manual_seed(seed), then
// randomize_parameters from the default generator.
void randomize(torch::nn::Module& model, uint64_t seed) {
  torch::manual_seed(seed);
  diffpost::testing::randomize_parameters(model, at::detail::getDefaultCPUGenerator());
}

// The state dict with the attention names of early diffusers checkpoints (query, key, value, proj_attn).
diffpost::StateDict with_old_attention_names(const diffpost::StateDict& state) {
  static const std::regex current(R"(^(.*\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$)");
  diffpost::StateDict renamed;
  for (const auto& [name, tensor] : state) {
    std::smatch match;
    if (!std::regex_match(name, match, current)) {
      renamed.insert(name, tensor);
      continue;
    }
    const auto part = match[2].str();
    const std::string old =
        part == "to_q" ? "query" : (part == "to_k" ? "key" : (part == "to_v" ? "value" : "proj_attn"));
    renamed.insert(match[1].str() + "." + old + "." + match[3].str(), tensor);
  }
  return renamed;
}

struct ParityCase {
  std::string name;
  uint64_t seed;
};

// Writes a model folder (the fixture's config.json and the seeded weights in `format`), loads it with the
// folder loader and returns the relative error of forward(x, t) against diffusers' output.
double parity_error(const ParityCase& c, const std::string& format, const TempDir& dir) {
  const auto source = kData / "parity" / c.name;
  const auto options = diffpost::read_diffusers_unet_config(source / "config.json");
  diffpost::DiffusersUNet generator_model(options);
  randomize(*generator_model, c.seed);
  const auto folder = dir.path() / (c.name + "-" + format);
  fs::create_directories(folder);
  fs::copy_file(source / "config.json", folder / "config.json");
  const auto state = diffpost::state_dict(*generator_model);
  if (format == "safetensors")
    diffpost::save_safetensors(state, folder / "diffusion_pytorch_model.safetensors");
  else
    diffpost::save_state_dict(with_old_attention_names(state), folder / "diffusion_pytorch_model.bin");
  REQUIRE(diffpost::is_diffusers_folder(folder));
  auto model = diffpost::load_diffusers_unet(folder);
  const auto expected = diffpost::read_safetensors(source / "expected.safetensors");
  torch::NoGradGuard no_grad;
  const auto sample = model->forward(expected.tensors.at("x"), expected.tensors.at("t"));
  REQUIRE(sample.sizes() == expected.tensors.at("sample").sizes());
  return relative_error(sample, expected.tensors.at("sample"));
}

diffpost::DiffusersUNetOptions small_options() {
  return diffpost::read_diffusers_unet_config(kData / "parity" / "variant_no_mid_attention" / "config.json");
}

}  // namespace

TEST_CASE("DiffusersUNet has diffusers' parameter names and shapes, in state_dict order") {
  SUBCASE("the published google/ddpm-cifar10-32 config.json") {
    const auto options =
        diffpost::read_diffusers_unet_config(kData / "google_ddpm_cifar10_32" / "config.json");
    check_parameters(options, kData / "google_ddpm_cifar10_32" / "parameters.txt");
    int64_t count = 0;
    for (const auto& p : diffpost::DiffusersUNet(options)->parameters()) count += p.numel();
    CHECK(count == 35'746'307);  // diffusers' count for this config
  }
  SUBCASE("the published google/ddpm-celebahq-256 config.json") {
    check_parameters(diffpost::read_diffusers_unet_config(kData / "google_ddpm_celebahq_256" / "config.json"),
                     kData / "google_ddpm_celebahq_256" / "parameters.txt");
  }
  for (const std::string variant : {"variant_scale_shift", "variant_no_mid", "variant_no_mid_attention"}) {
    CAPTURE(variant);
    check_parameters(diffpost::read_diffusers_unet_config(kData / "parity" / variant / "config.json"),
                     kData / "parity" / variant / "parameters.txt");
  }
}

TEST_CASE("load_diffusers_unet(folder)->forward equals diffusers' UNet2DModel(x, t).sample") {
  TempDir dir("diffusers");
  const std::vector<ParityCase> cases{{"cifar10_32", 23},
                                      {"celebahq_small", 29},
                                      {"variant_scale_shift", 31},
                                      {"variant_no_mid", 37},
                                      {"variant_no_mid_attention", 41}};
  for (const auto& c : cases) {
    for (const std::string format : {"safetensors", "bin"}) {
      const double error = parity_error(c, format, dir);
      MESSAGE(c.name, " from ", format, ": relative max error ", error);
      CHECK(error <= 1e-5);
    }
  }
}

TEST_CASE("a pipeline folder: model_index.json, unet/, scheduler/") {
  TempDir dir("diffusers");
  const auto source = kData / "parity" / "variant_no_mid_attention";
  const auto root = dir.path() / "pipeline";
  fs::create_directories(root / "unet");
  fs::create_directories(root / "scheduler");
  std::ofstream(root / "model_index.json")
      << R"({"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})";
  fs::copy_file(source / "config.json", root / "unet" / "config.json");
  fs::copy_file(kData / "schedulers" / "ddpm_cifar10_32.json", root / "scheduler" / "scheduler_config.json");
  diffpost::DiffusersUNet generator_model(small_options());
  randomize(*generator_model, 41);
  diffpost::save_safetensors(*generator_model, root / "unet" / "diffusion_pytorch_model.safetensors");
  CHECK(diffpost::is_diffusers_folder(root));
  CHECK_FALSE(diffpost::is_diffusers_folder(root / "scheduler"));
  CHECK_FALSE(diffpost::is_diffusers_folder(source / "expected.safetensors"));
  const auto pipeline = diffpost::load_diffusers_pipeline(root);
  CHECK(pipeline.scheduler_from_file);
  CHECK(pipeline.scheduler.variance_type == "fixed_large");
  CHECK(pipeline.image_shape() == diffpost::Shape{3, 8, 8});
  CHECK((pipeline.scheduler.ddpm_options().variance() == diffpost::VarianceType::fixed_large));
  CHECK(pipeline.scheduler.schedule(10).num_steps() == 10);
  const auto expected = diffpost::read_safetensors(source / "expected.safetensors");
  torch::NoGradGuard no_grad;
  auto unet = pipeline.unet;
  CHECK(relative_error(unet(expected.tensors.at("x"), expected.tensors.at("t")),
                       expected.tensors.at("sample")) <= 1e-5);
  CHECK(pipeline.describe().find("DDPMScheduler(num_train_timesteps=1000") != std::string::npos);
  // A pipeline whose scheduler diffpost cannot map is refused by name.
  std::ofstream(root / "model_index.json", std::ios::trunc)
      << R"({"scheduler": ["diffusers", "PNDMScheduler"], "unet": ["diffusers", "UNet2DModel"]})";
  CHECK(error_of([&] {
          (void)diffpost::load_diffusers_pipeline(root);
        }).find("scheduler class 'PNDMScheduler' is not supported") != std::string::npos);
}

TEST_CASE("sample and v_prediction outputs become eps by the closed forms") {
  diffpost::DiffusersUNet model(small_options());
  randomize(*model, 5);
  model->eval();
  // abar_t = prod_{s <= t} (1 - beta_s) of linear betas, computed here independently of the scheduler code.
  std::vector<double> alphas_cumprod;
  double running = 1.0;
  for (int i = 0; i < 1000; ++i) {
    running *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / 999.0);
    alphas_cumprod.push_back(running);
  }
  const auto x = torch::randn({2, 3, 8, 8});
  const auto t = torch::tensor({10, 900}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const auto raw = model->forward(x, t);
  CHECK(torch::equal(model(x, t), raw));  // epsilon: the output itself
  const auto abar =
      torch::tensor({alphas_cumprod[10], alphas_cumprod[900]}).view({2, 1, 1, 1}).to(torch::kFloat32);
  model->set_prediction(diffpost::DiffusersPrediction::v_prediction, alphas_cumprod);
  CHECK(torch::allclose(model(x, t), abar.sqrt() * raw + (1 - abar).sqrt() * x, 1e-6, 1e-6));
  model->set_prediction(diffpost::DiffusersPrediction::sample, alphas_cumprod);
  const auto eps = model(x, t);
  CHECK(torch::allclose(eps, (x - abar.sqrt() * raw) / (1 - abar).sqrt(), 1e-5, 1e-5));
  // Tweedie's x0 from that eps is the model's x0 again.
  CHECK(torch::allclose((x - (1 - abar).sqrt() * eps) / abar.sqrt(), raw, 1e-4, 1e-4));
  CHECK(error_of([&] {
          (void)model(x, torch::tensor({10, 1000}));
        }).find("timesteps must lie in [0, 1000)") != std::string::npos);
}

TEST_CASE("scheduler_config.json maps onto DiffusionSchedule as diffusers' schedulers compute it") {
  for (const std::string name :
       {"ddpm_cifar10_32", "ddpm_fixed_small_linspace", "ddpm_scaled_linear_v", "ddpm_cosine_learned_range",
        "ddpm_trained_betas_sample", "ddim_leading_offset", "ddim_trailing"}) {
    CAPTURE(name);
    const auto scheduler = diffpost::read_diffusers_scheduler(kData / "schedulers" / (name + ".json"));
    const auto tables =
        diffpost::read_safetensors(kData / "schedulers" / (name + "_tables.safetensors")).tensors;
    const auto schedule = scheduler.training_schedule();
    const auto betas = torch::tensor(schedule.betas(), torch::kFloat64);
    // Betas as diffusers computes them, float32; abar accumulated in float64 here, float32 there.
    CHECK(torch::equal(betas.to(torch::kFloat32), tables.at("betas")));
    const auto abar = torch::tensor(schedule.alphas_cumprod(), torch::kFloat64);
    const double abar_error =
        ((abar - tables.at("alphas_cumprod").to(torch::kFloat64)).abs() / abar).max().item<double>();
    MESSAGE(name, ": alphas_cumprod relative difference (float64 here, float32 in diffusers) ", abar_error);
    CHECK(abar_error < 2e-5);
    const bool ddpm = scheduler.class_name == "DDPMScheduler";
    double worst = 0.0;
    for (const auto& [key, tensor] : tables) {
      if (key.rfind("timesteps_", 0) != 0) continue;
      const int64_t n = std::stoll(key.substr(10));
      CAPTURE(n);
      const auto steps = scheduler.timesteps(n);
      CHECK(torch::equal(torch::tensor(steps, torch::kInt64), tensor));
      const auto respaced = scheduler.schedule(n);
      const auto expected = tables.at("variance_" + std::to_string(n)).to(torch::kFloat64);
      for (int64_t i = 1; i < respaced.num_steps(); ++i) {  // step 0 adds no noise
        const int64_t k = respaced.num_steps() - 1 - i;     // the tables run from the noisiest step
        double variance = 0.0;
        if (!ddpm) {
          const diffpost::DDIMSampler sampler(respaced, diffpost::DDIMOptions{}.eta(1.0));
          variance = sampler.sigma(i) * sampler.sigma(i);
        } else if (scheduler.variance_type == "fixed_large") {
          variance = respaced.betas()[i];
        } else if (scheduler.variance_type == "learned_range") {
          variance = diffpost::learned_range_log_variance(respaced, torch::zeros({1}, torch::kFloat64), i)
                         .item<double>();
        } else {
          variance = respaced.posterior_variance()[i];
        }
        // diffusers computes in float32, where 1 - abar near t = 0 (abar ~ 0.9999) keeps about 3 digits.
        const double reference = expected[k].item<double>();
        worst = std::max(worst, std::abs(variance - reference) / std::abs(reference));
        CHECK(std::abs(variance - reference) <= 1e-3 * std::abs(reference));
      }
    }
    MESSAGE(name, ": respaced variances, largest relative difference ", worst);
  }
  const auto v = diffpost::read_diffusers_scheduler(kData / "schedulers" / "ddpm_scaled_linear_v.json");
  CHECK(v.prediction_type == diffpost::DiffusersPrediction::v_prediction);
  CHECK_FALSE(v.ddpm_options().clip_denoised());
  CHECK((v.ddpm_options().variance() == diffpost::VarianceType::fixed_small));
}

TEST_CASE("unsupported config keys and values are refused naming them") {
  const auto unet = [](const std::string& text) {
    return error_of(
        [&] { (void)diffpost::parse_diffusers_unet_config(nlohmann::json::parse(text), "config.json"); });
  };
  CHECK(unet(R"({"block_out_channels": [32, 64], "layer_per_block": 2})")
            .find("unknown key 'layer_per_block'") != std::string::npos);
  CHECK(unet(R"({"_class_name": "UNet2DConditionModel"})").find("_class_name 'UNet2DConditionModel'") !=
        std::string::npos);
  CHECK(unet(R"({"class_embed_type": "timestep"})").find("class_embed_type must be null") !=
        std::string::npos);
  CHECK(unet(R"({"num_class_embeds": 10})").find("num_class_embeds must be null") != std::string::npos);
  CHECK(
      unet(R"({"time_embedding_type": "fourier"})").find("time_embedding_type 'fourier' is not supported") !=
      std::string::npos);
  CHECK(unet(R"({"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]})")
            .find("down block type 'CrossAttnDownBlock2D'") != std::string::npos);
  CHECK(unet(R"({"resnet_time_scale_shift": "spatial"})").find("resnet_time_scale_shift 'spatial'") !=
        std::string::npos);
  CHECK(unet(R"({"layers_per_block": "two"})").find("'layers_per_block' must be an integer") !=
        std::string::npos);
  CHECK(unet(R"({"block_out_channels": [30, 60, 60, 60]})").find("not divisible by norm_num_groups 32") !=
        std::string::npos);
  // Missing keys take UNet2DModel's defaults.
  const auto defaults = diffpost::parse_diffusers_unet_config(nlohmann::json::parse("{}"), "config.json");
  CHECK(defaults.block_out_channels() == std::vector<int64_t>{224, 448, 672, 896});
  CHECK((defaults.attention_head_dim() == std::optional<int64_t>(8)));
  CHECK(defaults.flip_sin_to_cos());

  const auto scheduler = [](const std::string& text) {
    return error_of([&] {
      (void)diffpost::parse_diffusers_scheduler_config(nlohmann::json::parse(text), "scheduler_config.json");
    });
  };
  CHECK(scheduler(R"({"_class_name": "EulerDiscreteScheduler"})")
            .find("scheduler class 'EulerDiscreteScheduler'") != std::string::npos);
  CHECK(scheduler(R"({"thresholding": true})").find("thresholding") != std::string::npos);
  CHECK(scheduler(R"({"beta_schedule": "sigmoid"})").find("beta_schedule 'sigmoid'") != std::string::npos);
  CHECK(scheduler(R"({"variance_type": "learned"})").find("variance_type 'learned'") != std::string::npos);
  CHECK(scheduler(R"({"clip_sample_range": 2.0})").find("clip_sample_range 2") != std::string::npos);
  CHECK(scheduler(R"({"rescale_betas_zero_snr": true})").find("rescale_betas_zero_snr") != std::string::npos);
  CHECK(scheduler(R"({"prediction_type": "flow"})").find("prediction_type 'flow'") != std::string::npos);
  CHECK(scheduler(R"({"_class_name": "DDIMScheduler", "variance_type": "fixed_small"})")
            .find("unknown key 'variance_type'") != std::string::npos);

  // A learned_range scheduler with an eps-only model.
  TempDir dir("diffusers");
  const auto source = kData / "parity" / "variant_no_mid_attention";
  fs::copy_file(source / "config.json", dir.path() / "config.json");
  diffpost::DiffusersUNet model(small_options());
  diffpost::save_safetensors(*model, dir.path() / "diffusion_pytorch_model.safetensors");
  fs::copy_file(kData / "schedulers" / "ddpm_cosine_learned_range.json",
                dir.path() / "scheduler_config.json");
  CHECK(error_of([&] {
          (void)diffpost::load_diffusers_unet(dir.path());
        }).find("learned_range needs a model with out_channels = 2") != std::string::npos);
  fs::remove(dir.path() / "scheduler_config.json");
  // Weights missing a key: a strict load names it.
  auto state = diffpost::state_dict(*model);
  diffpost::StateDict partial;
  for (const auto& [name, tensor] : state)
    if (name != "conv_out.bias") partial.insert(name, tensor);
  diffpost::save_safetensors(partial, dir.path() / "diffusion_pytorch_model.safetensors", {{"format", "pt"}},
                             diffpost::SaveOptions{}.overwrite(true));
  CHECK(error_of([&] { (void)diffpost::load_diffusers_unet(dir.path()); }).find("'conv_out.bias'") !=
        std::string::npos);
}

TEST_CASE("DiffusersUNet in bfloat16 (mixed precision as the ADM UNet) stays close to float32") {
  const auto source = kData / "parity" / "variant_scale_shift";
  diffpost::DiffusersUNet model(diffpost::read_diffusers_unet_config(source / "config.json"));
  randomize(*model, 31);
  model->eval();
  const auto expected = diffpost::read_safetensors(source / "expected.safetensors");
  const auto& x = expected.tensors.at("x");
  const auto& t = expected.tensors.at("t");
  const auto full = model->forward(x, t);
  model->set_compute_dtype(torch::kBFloat16);
  CHECK((model->compute_dtype() == torch::kBFloat16));
  const auto input = x.clone().requires_grad_(true);
  const auto half = model->forward(input, t);
  CHECK((half.scalar_type() == torch::kFloat32));
  const double error = ((half - full).norm() / full.norm()).item<double>();
  MESSAGE("bf16 against float32: relative L2 error ", error);
  CHECK(error < 5e-2);
  const auto grad = torch::autograd::grad({half.sum()}, {input})[0];
  CHECK((grad.scalar_type() == torch::kFloat32));
  CHECK(torch::isfinite(grad).all().item<bool>());
  model->set_compute_dtype(torch::kFloat32);
  CHECK((model->compute_dtype() == torch::kFloat32));
}
