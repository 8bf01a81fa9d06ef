// Times the nonlinear blur (bkse's KernelWizard with the published configuration, random weights) the way DPS
// uses it: a forward pass, and a forward pass plus the gradient of ||y - A(x)|| with respect to x only.
// Prints the median (and min) wall-clock seconds over the repeats after the warmup runs. With --dps-steps N
// it also runs N DPS steps (scale 0.3, sigma 0.05) on an analytic Gaussian prior twice, with the fixed kernel
// latent and with the reference's latent redrawn on every call, and prints how well each result fits the
// measurement (docs/operators.md).
//
//   nonlinear_blur_benchmark [--threads 2] [--warmup 1] [--repeats 5] [--size 256] [--batch 1]
//                            [--modes forward,backward] [--cpu-allocator caching|default]
//                            [--dps-steps 0] [--dps-size 128]
#include <diffpost/dps.hpp>
#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/models/gaussian_prior.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

struct Settings {
  int threads = 2;
  int warmup = 1;
  int repeats = 5;
  int64_t size = 256;
  int64_t batch = 1;
  std::vector<std::string> modes{"forward", "backward"};
  std::string cpu_allocator = "caching";
  int64_t dps_steps = 0;
  int64_t dps_size = 128;
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app(
      "Times the nonlinear blur operator, forward and forward + input gradient (docs/performance.md).",
      "nonlinear_blur_benchmark");
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  benchmarks::add_timing_flags(app, s.warmup, s.repeats);
  app.add_option("--size", s.size, "image height and width (a multiple of 128)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", s.batch, "images per call")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--modes", s.modes, "comma-separated: forward, backward (forward + input gradient)")
      ->delimiter(',')
      ->check(CLI::IsMember({"forward", "backward"}))
      ->capture_default_str();
  app.add_option("--dps-steps", s.dps_steps, "DPS steps of the fixed-vs-redrawn-latent comparison (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--dps-size", s.dps_size, "image size of that comparison (a multiple of 128)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

/// Fixed against redrawn latent: DPS on an analytic prior (independent pixels, mean 0, standard deviation
/// 0.5) whose sample is the truth; y = A(truth) + 0.05 n with the fixed latent. Prints, for each run, the
/// measurement fit ||y - A(x)|| / sqrt(n) with the fixed A and the PSNR against the truth.
void compare_latent_modes(const diffpost::KernelWizard& network, const Settings& s) {
  using diffpost::NonlinearBlurOperator;
  const int64_t size = s.dps_size;
  const auto schedule = diffpost::DiffusionSchedule::linear();
  diffpost::GaussianPrior prior(torch::zeros({3, size, size}), torch::full({3, size, size}, 0.5), schedule);
  auto generator = diffpost::make_generator(0);
  const auto truth = prior.sample(1, generator).to(torch::kFloat32).clamp(-1.0, 1.0);
  const NonlinearBlurOperator fixed(*network,
                                    NonlinearBlurOperator::draw_kernel_latent(1, size, size, generator));
  const diffpost::GaussianLikelihood likelihood(0.05);
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    y = likelihood.sample(fixed.forward(truth), generator);
  }
  const auto redrawn =
      NonlinearBlurOperator::redrawing_latent_every_call(*network, diffpost::make_generator(1));
  {
    torch::NoGradGuard no_grad;
    const auto first = redrawn.forward(truth), second = redrawn.forward(truth),
               blurred = fixed.forward(truth);
    fmt::print(
        "Redrawn latent, two calls on the truth: max |difference| {:.4f}, mean |difference| {:.4f}, "
        "mean |A(x) - x| {:.4f}\n",
        (first - second).abs().max().item<double>(), (first - second).abs().mean().item<double>(),
        (blurred - truth).abs().mean().item<double>());
  }
  const auto sampler = diffpost::DDPMSampler(schedule.respaced(std::to_string(s.dps_steps)));
  const auto options = diffpost::DPSOptions{}.scale(0.3);
  auto fit = [&](const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    return ((y - fixed.forward(x)).norm() / std::sqrt(static_cast<double>(y.numel()))).item<double>();
  };
  fmt::print(
      "DPS, {} steps, scale 0.3, sigma 0.05, {}x{}, Gaussian prior; fit = ||y - A(x)|| / sqrt(n) with the "
      "fixed A (noise alone gives 0.05):\n",
      s.dps_steps, size, size);
  fmt::print("  truth                 fit {:.4f}\n", fit(truth));
  std::vector<torch::Tensor> results;
  for (const bool redraw : {false, true}) {
    auto run_generator = diffpost::make_generator(2);
    const auto start = std::chrono::steady_clock::now();
    torch::Tensor x;
    const diffpost::PosteriorSampler dps(diffpost::DPS<diffpost::GaussianLikelihood, NonlinearBlurOperator>(
                                             likelihood, redraw ? redrawn : fixed, sampler, options),
                                         1);
    x = dps.sample(prior, y, {3, size, size}, run_generator);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("  {:<21} fit {:.4f}, PSNR against the truth {:.2f} dB ({:.1f} s)\n",
               redraw ? "redrawn latent (ref.)" : "fixed latent", fit(x),
               diffpost::psnr(x.clamp(-1.0, 1.0), truth).item<double>(), seconds);
    results.push_back(x);
  }
  fmt::print(
      "  the two results differ by {:.4f} (RMS)\n",
      ((results[0] - results[1]).norm() / std::sqrt(static_cast<double>(results[0].numel()))).item<double>());
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  // The published configuration; the weights are random (fill_random_kernel_wizard): the time does not depend
  // on them. The kernel extractor, which the operator never runs, is left out.
  diffpost::KernelWizard network(diffpost::KernelWizardOptions{}.with_kernel_extractor(false));
  diffpost::fill_random_kernel_wizard(*network, 0);
  auto generator = diffpost::make_generator(0);
  const diffpost::NonlinearBlurOperator blur(
      *network, diffpost::NonlinearBlurOperator::draw_kernel_latent(1, s.size, s.size, generator));
  const auto x = at::rand({s.batch, 3, s.size, s.size}, generator) * 2 - 1;
  const auto y = at::rand({s.batch, 3, s.size, s.size}, generator) * 2 - 1;
  fmt::print(
      "nonlinear_blur_benchmark: {}x{}, batch {}, threads {}, warmup {}, repeats {}, CPU allocator {}\n",
      s.size, s.size, s.batch, torch::get_num_threads(), s.warmup, s.repeats, s.cpu_allocator);
  fmt::print("{:<18} {:>10} {:>10}\n", "mode", "median s", "min s");
  for (const auto& mode : s.modes) {
    auto run = [&]() {
      if (mode == "forward") {
        torch::NoGradGuard no_grad;
        auto out = blur.forward(x);
      } else {  // as DPS: the gradient of the plain norm of the residual, with respect to the input only
        auto input = x.detach().requires_grad_(true);
        auto residual = (y - blur.forward(input)).norm();
        auto grad = torch::autograd::grad({residual}, {input});
      }
    };
    for (int i = 0; i < s.warmup; ++i) run();
    std::vector<double> times;
    for (int i = 0; i < s.repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    fmt::print("{:<18} {:>10.4f} {:>10.4f}\n", mode == "forward" ? "forward" : "forward+input-grad",
               benchmarks::median(times), *std::min_element(times.begin(), times.end()));
    std::fflush(stdout);
  }
  if (s.dps_steps > 0) compare_latent_modes(network, s);
}
