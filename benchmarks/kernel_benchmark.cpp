// Times the kernels an FFHQ 256 UNet step is made of, one at a time, to show where the CPU time goes and what
// the two CPU choices of diffpost buy (docs/performance.md): the caching allocator (run the program twice,
// with --cpu-allocator caching and default; the choice is process-wide) and the attention products as
// grouped convolutions instead of bmm. Prints the median milliseconds over the repeats.
//
//   kernel_benchmark [--threads 2] [--warmup 2] [--repeats 10] [--cpu-allocator caching|default]
#include <diffpost/models/adm_unet.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

struct Settings {
  int threads = 2;
  int warmup = 2;
  int repeats = 10;
  std::string cpu_allocator = "caching";
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app("Times single UNet kernels at FFHQ 256 sizes (docs/performance.md).", "kernel_benchmark");
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  benchmarks::add_timing_flags(app, s.warmup, s.repeats);
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

double median_milliseconds(const std::function<void()>& run, const Settings& s) {
  for (int i = 0; i < s.warmup; ++i) run();
  std::vector<double> times;
  for (int i = 0; i < s.repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return benchmarks::median(times);
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  torch::manual_seed(0);
  fmt::print("kernel_benchmark: threads {}, warmup {}, repeats {}, CPU allocator {}\n",
             torch::get_num_threads(), s.warmup, s.repeats, s.cpu_allocator);

  // The first level of FFHQ 256: 128 channels at 256x256 (32 MiB per activation).
  const auto x = torch::randn({1, 128, 256, 256});
  const auto weight = torch::randn({128, 128, 3, 3}) / 34.0;
  const auto bias = torch::randn({128});
  const auto upstream = torch::randn({1, 128, 256, 256});
  // The 16x16 attention of FFHQ 256: 8 heads of 64 channels over 256 positions.
  const auto q = torch::randn({8, 64, 256}), k = torch::randn({8, 64, 256}), v = torch::randn({8, 64, 256});
  const auto attention_upstream = torch::randn({8, 64, 256});

  using Attention = torch::Tensor (*)(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&);
  auto attention_with_gradient = [&](Attention attend) {
    return [&, attend] {
      auto qg = q.detach().requires_grad_(true), kg = k.detach().requires_grad_(true),
           vg = v.detach().requires_grad_(true);
      torch::autograd::grad({attend(qg, kg, vg)}, {qg, kg, vg}, {attention_upstream});
    };
  };
  namespace F = torch::nn::functional;
  const std::vector<std::pair<std::string, std::function<void()>>> kernels = {
      {"conv 3x3 128->128 at 256x256, forward",
       [&] { F::conv2d(x, weight, F::Conv2dFuncOptions().bias(bias).padding(1)); }},
      {"conv 3x3 128->128 at 256x256, input gradient",
       [&] {
         torch::convolution_backward(upstream, x, weight, std::vector<int64_t>{128}, {1, 1}, {1, 1}, {1, 1},
                                     false, {0, 0}, 1, {true, false, false});
       }},
      {"group_norm (32 groups) at 256x256", [&] { torch::group_norm(x, 32, bias, bias, 1e-5); }},
      {"silu at 256x256", [&] { torch::silu(x); }},
      {"copy of a 32 MiB activation", [&] { x.clone(); }},
      {"attention products by bmm, forward", [&] { diffpost::adm::attend_by_bmm(q, k, v); }},
      {"attention products by bmm, with gradient", attention_with_gradient(&diffpost::adm::attend_by_bmm)},
      {"attention products by convolution, forward", [&] { diffpost::adm::attend_by_convolution(q, k, v); }},
      {"attention products by convolution, with gradient",
       attention_with_gradient(&diffpost::adm::attend_by_convolution)},
  };
  fmt::print("{:<50} {:>10}\n", "kernel", "median ms");
  for (const auto& [name, run] : kernels) {
    torch::NoGradGuard no_grad_unless_asked;
    torch::AutoGradMode grad_mode(name.find("with gradient") != std::string::npos);
    fmt::print("{:<50} {:>10.2f}\n", name, median_milliseconds(run, s));
    std::fflush(stdout);
  }
}
