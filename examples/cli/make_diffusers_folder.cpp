// ctest helper: writes a diffusers pipeline folder with a small randomly initialised UNet2DModel shaped like
// google/ddpm-cifar10-32 (32x32 RGB, DownBlock2D + AttnDownBlock2D, a mid block with attention, narrower
// channels so that a test runs in seconds) and its DDPMScheduler, and IMAGES 32x32 RGB test images:
//   FOLDER/model_index.json, FOLDER/unet/{config.json, diffusion_pytorch_model.safetensors},
//   FOLDER/scheduler/scheduler_config.json, FOLDER/images/cifar_<k>.png
//   make_diffusers_folder FOLDER IMAGES
// The weights are written with diffpost's own safetensors writer under diffusers' parameter names.
#include <diffpost/io/diffusers.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/safetensors.hpp>
#include <diffpost/models/diffusers_unet.hpp>

#include <torch/torch.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;

/// UNet2DModel's config.json for the test model: google/ddpm-cifar10-32's layout at two levels of 32 and 64
/// channels.
nlohmann::json unet_config() {
  return {{"_class_name", "UNet2DModel"},
          {"act_fn", "silu"},
          {"attention_head_dim", nullptr},
          {"block_out_channels", {32, 64}},
          {"center_input_sample", false},
          {"down_block_types", {"DownBlock2D", "AttnDownBlock2D"}},
          {"downsample_padding", 0},
          {"flip_sin_to_cos", false},
          {"freq_shift", 1},
          {"in_channels", 3},
          {"layers_per_block", 1},
          {"mid_block_scale_factor", 1},
          {"norm_eps", 1e-06},
          {"norm_num_groups", 8},
          {"out_channels", 3},
          {"sample_size", 32},
          {"time_embedding_type", "positional"},
          {"up_block_types", {"AttnUpBlock2D", "UpBlock2D"}}};
}

/// google/ddpm-cifar10-32's scheduler_config.json.
nlohmann::json scheduler_config() {
  return {{"_class_name", "DDPMScheduler"},
          {"beta_end", 0.02},
          {"beta_schedule", "linear"},
          {"beta_start", 0.0001},
          {"clip_sample", true},
          {"num_train_timesteps", 1000},
          {"trained_betas", nullptr},
          {"variance_type", "fixed_large"}};
}

void write_json(const nlohmann::json& json, const fs::path& path) {
  std::ofstream file(path);
  file << json.dump(2) << "\n";
  if (!file) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_diffusers_folder FOLDER IMAGES\n");
    return 2;
  }
  try {
    const fs::path folder(argv[1]);
    const int64_t images = std::stoll(argv[2]);
    fs::remove_all(folder);
    fs::create_directories(folder / "unet");
    fs::create_directories(folder / "scheduler");
    fs::create_directories(folder / "images");
    write_json({{"_class_name", "DDPMPipeline"},
                {"scheduler", {"diffusers", "DDPMScheduler"}},
                {"unet", {"diffusers", "UNet2DModel"}}},
               folder / "model_index.json");
    const auto config = unet_config();
    write_json(config, folder / "unet" / "config.json");
    write_json(scheduler_config(), folder / "scheduler" / "scheduler_config.json");
    torch::manual_seed(1);
    const diffpost::DiffusersUNet unet(diffpost::parse_diffusers_unet_config(config, "the test config"));
    diffpost::save_safetensors(unet, folder / "unet" / "diffusion_pytorch_model.safetensors");
    // Smooth colour images in [-1, 1]: a few random low-frequency waves per channel.
    const auto grid = torch::linspace(0.0, 1.0, 32);
    const auto y = grid.view({1, 1, 32, 1}), x = grid.view({1, 1, 1, 32});
    for (int64_t k = 0; k < images; ++k) {
      const auto frequency = torch::rand({1, 3, 1, 1}) * 6.0;
      const auto phase = torch::rand({1, 3, 1, 1}) * 6.0;
      const auto image = (torch::sin(frequency * x + phase) * torch::cos(frequency * y - phase)).clamp(-1, 1);
      diffpost::save_image(image, (folder / "images" / fmt::format("cifar_{}.png", k)).string(), true);
    }
    std::printf("wrote %s: a random-weight UNet2DModel (32x32 RGB) and %lld test images\n",
                folder.string().c_str(), static_cast<long long>(images));
    return 0;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "make_diffusers_folder: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_diffusers_folder: %s\n", e.what());
  }
  return 1;
}
