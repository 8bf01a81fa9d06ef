// Times DPS steps on a device: super-resolution (x4 on the FFHQ-256 UNet, x2 on the bundled prior's
// configuration), Gaussian noise sigma 0.05, scale 0.3, with random weights. Reports the milliseconds of one
// DPS step(sampler step, network forward, operator, residual, input gradient, update) and of the bare
// network forward + input gradient measured in the same run, their ratio (what DPS adds around the network),
// the seconds of a 1000-step image, and the peak memory of the timed steps (docs/performance.md).
//
//   dps_benchmark [--config small|ffhq] [--device cpu|cuda|cuda:N] [--precision fp32|tf32|bf16|fp16]
//                 [--batch N] [--graphs on|off] [--checkpointing] [--generator cpu|device]
//                 [--warmup N] [--steps N] [--threads N] [--cpu-allocator caching|default]
#include <diffpost/dps.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/runtime/cuda_graph.hpp>
#include <diffpost/runtime/device.hpp>
#include <diffpost/runtime/memory.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <string>

// Where --config small reads its configuration; benchmarks/CMakeLists.txt sets it to the source tree's file.
#ifndef DIFFPOST_BENCHMARK_PRIOR_CONFIG
#define DIFFPOST_BENCHMARK_PRIOR_CONFIG "examples/prior/fashion_mnist_28.yaml"
#endif

namespace {

struct Settings {
  std::string config = "small";
  std::string config_file = DIFFPOST_BENCHMARK_PRIOR_CONFIG;
  std::string device = "cpu";
  std::string precision = "fp32";
  int64_t batch = 1;
  std::string graphs = "off";
  bool checkpointing = false;
  std::string generator = "cpu";
  int warmup = 2;
  int steps = 10;
  int threads = 2;
  std::string cpu_allocator = "caching";
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app("Times DPS steps(sigma 0.05, SR) against the bare network on a device (docs/performance.md).",
               "dps_benchmark");
  app.add_option("--config", s.config,
                 "small: the bundled prior's configuration (28x28, SR x2); ffhq: FFHQ-256 (SR x4)")
      ->check(CLI::IsMember({"small", "ffhq"}))
      ->capture_default_str();
  app.add_option("--config-file", s.config_file, "the configuration file read for --config small")
      ->check(CLI::ExistingFile)
      ->capture_default_str();
  app.add_option("--device", s.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--precision", s.precision, "fp32, tf32, bf16 or fp16")->capture_default_str();
  app.add_option("--batch", s.batch, "images per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--graphs", s.graphs, "replay the network through CUDA graphs (CudaGraphModel)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_flag("--checkpointing", s.checkpointing, "gradient checkpointing of the UNet's blocks");
  app.add_option("--generator", s.generator,
                 "where the noise is drawn: cpu (reproducible everywhere) or device")
      ->check(CLI::IsMember({"cpu", "device"}))
      ->capture_default_str();
  app.add_option("--warmup", s.warmup, "untimed steps first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--steps", s.steps, "timed steps (and timed network passes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

/// Waits for the device's queued work, so that wall-clock time covers it.
void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

/// Wall-clock seconds of `count` calls of `work`, synchronised with the device at both ends.
template <class Work>
double seconds_of(int count, const torch::Device& device, Work&& work) {
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) work(i);
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string gigabytes(const std::optional<int64_t>& bytes) {
  return bytes ? fmt::format("{:.3f} GB", static_cast<double>(*bytes) / 1e9) : std::string("n/a");
}

}  // namespace

int main(int argc, char** argv) try {
  const Settings s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  const auto device = diffpost::usable_device(s.device, "--device");
  const auto precision = diffpost::parse_precision(s.precision, "--precision");
  diffpost::check_precision(precision, device, "--precision");
  diffpost::apply_precision(precision);

  const bool ffhq = s.config == "ffhq";
  const auto options =
      ffhq ? diffpost::AdmUNetOptions::ffhq256() : diffpost::read_adm_model_config(s.config_file).options;
  const int64_t factor = ffhq ? 4 : 2;
  const int64_t size = options.image_size();
  const int64_t channels = options.in_channels();

  torch::manual_seed(0);
  diffpost::AdmUNet model(options);  // random weights: the time does not depend on them
  model->eval();
  model->to(device);
  if (precision == diffpost::Precision::bf16 || precision == diffpost::Precision::fp16)
    model->set_compute_dtype(diffpost::compute_dtype(precision));
  model->set_gradient_checkpointing(s.checkpointing);
  diffpost::CudaGraphModel<diffpost::AdmUNet> graphed(model);

  auto generator =
      s.generator == "device" ? diffpost::make_generator(0, device) : diffpost::make_generator(0);
  const auto image_options = torch::TensorOptions().device(device).dtype(torch::kFloat32);
  const diffpost::SuperResolutionOperator op(factor);
  const diffpost::GaussianLikelihood likelihood(0.05);
  const auto truth =
      (at::rand({s.batch, channels, size, size}, generator, image_options.device(generator.device())) * 2 - 1)
          .to(device);
  const auto y = likelihood.sample(op.forward(truth), generator);
  const diffpost::PosteriorSampler dps(
      diffpost::DPS<diffpost::GaussianLikelihood, diffpost::SuperResolutionOperator>(
          likelihood, op, diffpost::DDPMSampler(diffpost::DiffusionSchedule::linear()),
          diffpost::DPSOptions{}.scale(0.3)));
  const int64_t num_steps = dps.num_steps();

  fmt::print(
      "dps_benchmark: config {} ({}x{}, {} channels), SR x{}, sigma 0.05, device {}, precision {}, batch {}, "
      "graphs {}, checkpointing {}, noise from the {} generator, threads {}, warmup {}, steps {}\n",
      s.config, size, size, channels, factor, device.str(), s.precision, s.batch, s.graphs,
      s.checkpointing ? "on" : "off", s.generator == "device" ? device.str() : "cpu",
      torch::get_num_threads(), s.warmup, s.steps);

  auto run = [&](auto& network) {
    auto x = diffpost::detail::randn_like(truth, generator);
    int64_t index = num_steps - 1;
    auto dps_step = [&](int) {
      x = dps.step(network, x, y, index, diffpost::detail::randn_like(x, generator), generator).x_prev;
      index = index > 0 ? index - 1 : num_steps - 1;
    };
    const auto t = torch::full({s.batch}, 500, torch::TensorOptions().dtype(torch::kLong).device(device));
    auto bare_network = [&](int) {
      auto input = x.detach().requires_grad_(true);
      auto out = network(input, t);
      torch::autograd::grad({out}, {input}, {torch::ones_like(out)});
    };
    seconds_of(s.warmup, device, dps_step);
    seconds_of(s.warmup, device, bare_network);
    diffpost::reset_peak_memory(device);
    const double step_seconds = seconds_of(s.steps, device, dps_step) / s.steps;
    const auto peak = diffpost::peak_memory_bytes(device);
    const double network_seconds = seconds_of(s.steps, device, bare_network) / s.steps;
    fmt::print("  DPS step                        {:10.2f} ms\n", 1e3 * step_seconds);
    fmt::print("  network forward + input grad    {:10.2f} ms\n", 1e3 * network_seconds);
    fmt::print("  DPS step / network              {:10.3f}\n", step_seconds / network_seconds);
    fmt::print("  1000-step image                 {:10.3f} s  ({} images per batch)\n",
               1000.0 * step_seconds / static_cast<double>(s.batch), s.batch);
    fmt::print("  peak memory of the DPS steps    {:>13}\n", gigabytes(peak));
    if (!std::isfinite(x.abs().max().item<double>())) {
      fmt::print(stderr, "dps_benchmark: the iterate diverged\n");
      return 1;
    }
    return 0;
  };
  if (s.graphs == "on") {
    const int status = run(graphed);
    fmt::print("  CUDA graphs: {}\n", graphed.captured()
                                          ? fmt::format("captured, {} forward replays", graphed.replays())
                                          : "not used: " + graphed.fallback_reason());
    return status;
  }
  return run(model);
} catch (const c10::Error& e) {
  fmt::print(stderr, "dps_benchmark: {}\n", e.what_without_backtrace());
  return 2;
}
