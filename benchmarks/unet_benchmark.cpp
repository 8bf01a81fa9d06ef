// Times the ADM UNet the way DPS uses it: a forward pass, and a forward pass plus the gradient with respect
// to the input only (DPS eq. 16 needs d/dx_t of the data-fidelity term; parameters do not require grad).
// Prints a table of median (and min) wall-clock seconds over the repeats after the warmup runs.
//
//   unet_benchmark [--threads 2] [--warmup 1] [--repeats 5] [--configs small,ffhq] [--batches 1,4]
//                  [--modes forward,backward] [--channels-last] [--interop-threads N]
//                  [--cpu-allocator caching|default]
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Settings {
  int threads = 2;
  int interop_threads = 0;
  int warmup = 1;
  int repeats = 5;
  std::vector<std::string> configs{"small", "ffhq"};
  std::vector<int64_t> batches{1, 4};
  std::vector<std::string> modes{"forward", "backward"};
  bool channels_last = false;
  std::string cpu_allocator = "caching";
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app("Times AdmUNet forward and forward + input-only gradient (docs/performance.md).",
               "unet_benchmark");
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  app.add_option("--interop-threads", s.interop_threads, "inter-op threads (0 = LibTorch's default)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  benchmarks::add_timing_flags(app, s.warmup, s.repeats);
  app.add_option("--configs", s.configs, "comma-separated configurations")
      ->delimiter(',')
      ->check(CLI::IsMember({"small", "ffhq"}))
      ->capture_default_str();
  app.add_option("--batches", s.batches, "comma-separated batch sizes")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--modes", s.modes, "comma-separated: forward, backward (forward + input gradient)")
      ->delimiter(',')
      ->check(CLI::IsMember({"forward", "backward"}))
      ->capture_default_str();
  app.add_flag("--channels-last", s.channels_last, "run in the channels-last memory format");
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

// The small configuration: 32 base channels, mult (1,2,2), attention at 16 and 8, at 32x32 (what a small
// trained prior looks like); ffhq: the DPS FFHQ prior at 256x256.
diffpost::AdmUNetOptions options_for(const std::string& name) {
  if (name == "ffhq") return diffpost::AdmUNetOptions::ffhq256();
  if (name == "small") {
    return diffpost::AdmUNetOptions(32, 32, 1)
        .channel_mult({1, 2, 2})
        .attention_resolutions({16, 8})
        .num_head_channels(16)
        .learn_sigma(true)
        .use_scale_shift_norm(true)
        .resblock_updown(true);
  }
  std::cerr << "unknown config " << name << " (small, ffhq)\n";
  std::exit(2);
}

// CPU time of the calling thread. With --threads 1 every kernel (and the CPU autograd engine) runs on this
// thread, so it is the compute time even when other processes preempt the benchmark on a shared machine.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  if (s.interop_threads > 0) torch::set_num_interop_threads(s.interop_threads);
  fmt::print("unet_benchmark: threads {}, warmup {}, repeats {}, memory format {}, CPU allocator {}\n",
             torch::get_num_threads(), s.warmup, s.repeats,
             s.channels_last ? "channels_last" : "contiguous (NCHW)", s.cpu_allocator);
  fmt::print("{:<6} {:>5} {:<18} {:>10} {:>10} {:>12}\n", "config", "batch", "mode", "median s", "min s",
             "thread-cpu s");
  for (const auto& config : s.configs) {
    const auto options = options_for(config);
    diffpost::AdmUNet model(options);
    model->eval();
    for (auto& p : model->parameters()) p.set_requires_grad(false);  // only the input gradient is wanted
    if (s.channels_last) {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters())
        if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
    for (int64_t batch : s.batches) {
      auto x = torch::randn({batch, options.in_channels(), options.image_size(), options.image_size()});
      if (s.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      auto t = torch::full({batch}, 500, torch::kInt64);
      for (const auto& mode : s.modes) {
        auto run = [&]() {
          if (mode == "forward") {
            torch::NoGradGuard no_grad;
            auto out = model(x, t);
          } else {
            auto input = x.detach().requires_grad_(true);
            auto out = model(input, t);
            auto grad = torch::autograd::grad({out}, {input}, {torch::ones_like(out)});
          }
        };
        for (int i = 0; i < s.warmup; ++i) run();
        const auto& cache = diffpost::CachingCpuAllocator::instance();
        const auto misses_before = cache.stats().misses;
        std::vector<double> times, cpu_times;
        for (int i = 0; i < s.repeats; ++i) {
          const auto start = std::chrono::steady_clock::now();
          const double cpu_start = thread_cpu_seconds();
          run();
          cpu_times.push_back(thread_cpu_seconds() - cpu_start);
          times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        fmt::print("{:<6} {:>5} {:<18} {:>10.4f} {:>10.4f} {:>12.4f}\n", config, batch,
                   mode == "forward" ? "forward" : "forward+input-grad", benchmarks::median(times),
                   *std::min_element(times.begin(), times.end()), benchmarks::median(cpu_times));
        if (diffpost::caching_cpu_allocator_installed()) {
          const auto stats = cache.stats();
          fmt::print(
              "       CPU cache: {} misses in the timed repeats, {:.2f} GB peak in use, {:.2f} GB cached\n",
              stats.misses - misses_before, static_cast<double>(stats.peak_allocated_bytes) / 1e9,
              static_cast<double>(stats.cached_bytes) / 1e9);
        }
        std::fflush(stdout);
      }
    }
  }
}
