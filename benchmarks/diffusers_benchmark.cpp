// Times diffusers' UNet2DModel as diffpost runs it (DiffusersUNet) the way DPS uses it: a forward pass, and a
// forward pass plus the gradient with respect to the input only. The configuration is the published
// google/ddpm-cifar10-32 config.json (built in, or --config FILE for another UNet2DModel config.json) with
// LibTorch's default initialisation; the image size is its sample_size. Prints the median and minimum
// wall-clock seconds over the repeats after the warmup runs (docs/performance.md compares it with diffusers'
// own model on Debian's python3-torch).
//
//   diffusers_benchmark [--threads 2] [--warmup 2] [--repeats 10] [--batches 1,4] [--config FILE]
//                       [--cpu-allocator caching|default]
#include <diffpost/io/diffusers.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace {

// google/ddpm-cifar10-32's config.json (Ho et al.'s CIFAR-10 DDPM as ported to diffusers).
constexpr const char* kCifar10Config = R"({
  "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": null,
  "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
  "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
  "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
  "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]})";

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, warmup = 2, repeats = 10;
  std::vector<int64_t> batches{1, 4};
  std::string config, cpu_allocator = "caching";
  CLI::App app("Times DiffusersUNet forward and forward + input-only gradient (docs/performance.md).",
               "diffusers_benchmark");
  benchmarks::add_process_flags(app, threads, cpu_allocator);
  benchmarks::add_timing_flags(app, warmup, repeats);
  app.add_option("--batches", batches, "comma-separated batch sizes")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--config", config, "a UNet2DModel config.json (default: google/ddpm-cifar10-32's)")
      ->check(CLI::ExistingFile);
  benchmarks::parse_command_line(app, argc, argv);
  benchmarks::apply_process_settings(cpu_allocator, threads);

  const auto options = config.empty() ? diffpost::parse_diffusers_unet_config(
                                            nlohmann::json::parse(kCifar10Config), "cifar10-32")
                                      : diffpost::read_diffusers_unet_config(config);
  const int64_t size = options.sample_size().empty() ? 32 : options.sample_size()[0];
  diffpost::DiffusersUNet model(options);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);  // only the input gradient is wanted
  fmt::print("diffusers_benchmark: {}x{}, threads {}, warmup {}, repeats {}, CPU allocator {}\n", size, size,
             torch::get_num_threads(), warmup, repeats, cpu_allocator);
  fmt::print("{:>5} {:<18} {:>10} {:>10}\n", "batch", "mode", "median s", "min s");
  for (const int64_t batch : batches) {
    torch::manual_seed(0);
    const auto x = torch::randn({batch, options.in_channels(), size, size});
    const auto t = torch::full({batch}, 500, torch::kInt64);
    for (const std::string mode : {"forward", "forward+input-grad"}) {
      auto run = [&] {
        if (mode == "forward") {
          torch::NoGradGuard no_grad;
          (void)model->forward(x, t);
        } else {
          auto input = x.detach().requires_grad_(true);
          auto out = model->forward(input, t);
          (void)torch::autograd::grad({out}, {input}, {torch::ones_like(out)});
        }
      };
      for (int i = 0; i < warmup; ++i) run();
      std::vector<double> times;
      for (int i = 0; i < repeats; ++i) {
        const auto start = std::chrono::steady_clock::now();
        run();
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      fmt::print("{:>5} {:<18} {:>10.4f} {:>10.4f}\n", batch, mode, benchmarks::median(times),
                 *std::min_element(times.begin(), times.end()));
      std::fflush(stdout);
    }
  }
}
