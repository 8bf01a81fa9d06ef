// Decoupled Annealing Posterior Sampling (Zhang, Chu, Berner, Meng, Anandkumar & Song, "Improving Diffusion
// Inverse Problem Solving with Decoupled Noise Annealing", CVPR 2025; official code zhangbingliang2019/DAPS):
// at each of a decreasing sequence of noise levels, solve the probability-flow ODE from x_t to an x0
// estimate, run Langevin dynamics on x0 against the measurement, and re-noise the result to the next level.
// Only the operator is differentiated, never the network.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/schedule.hpp>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace diffpost {

/// Options of DAPS. Defaults are the official pixel-space DAPS-1K settings (`configs/sampler/edm_daps.yaml`,
/// `commands/pixel_ffhq.sh`, the Langevin settings of `configs/task/down_sampling.yaml`): 200 annealing
/// levels from sigma 100 down toward 0.1 on EDM's rho = 7 spacing, 5 Euler steps of the ODE down to sigma
/// 0.01 per level, 100 Langevin steps of size 1e-4 decaying linearly to 1e-6 over the levels, tau 0.01. Its
/// other tasks change `step_size` (5e-5 for motion deblur, box inpainting and phase retrieval; 1e-5 with 200
/// `langevin_steps` for nonlinear deblur). Sigmas are on the variance-exploding scale sigma = sqrt(1 / abar -
/// 1), images in [-1, 1].
struct DAPSOptions {
  TORCH_ARG(int64_t, annealing_steps) = 200;
  TORCH_ARG(double, sigma_max) = 100.0;
  TORCH_ARG(double, sigma_min) = 0.1;
  TORCH_ARG(int64_t, ode_steps) = 5;
  TORCH_ARG(double, ode_sigma_min) = 0.01;
  TORCH_ARG(int64_t, langevin_steps) = 100;
  TORCH_ARG(double, step_size) = 1e-4;
  TORCH_ARG(double, step_size_min_ratio) = 0.01;
  TORCH_ARG(double, tau) = 0.01;
  TORCH_ARG(bool, clip_denoised) = false;
  TORCH_ARG(int64_t, num_samples) = 1;
};

/// DAPS (the paper's Algorithm 1 as the official code runs it). At annealing level sigma (VE scale):
///   1. x0_hat: the probability-flow ODE from x_t to sigma_min^ODE in `ode_steps` Euler steps (deterministic
///      DDIM steps between the model's timesteps), no gradient;
///   2. Langevin dynamics x <- x + l grad log p + sqrt(2 l) z from x = x0_hat for `langevin_steps` steps on
///      log p(x) = -r(y, A(x))^2 / tau^2 - ||x - x0_hat||^2 / (2 sigma^2), r the likelihood's data fidelity
///      (||y - A x|| for Gaussian noise), with l decaying linearly from `step_size` to `step_size` x
///      `step_size_min_ratio` over the levels;
///   3. x_{t'} = x0 + sigma' z at the next level sigma' (0 after the last: the result is x0).
/// The model is discrete-time, so every sigma is rounded to the nearest timestep of `model_schedule` (the
/// schedule the network was trained on, e.g. `DiffusionSchedule::linear()`); levels that round to the same
/// timestep are merged, and `schedule()` gives the levels actually run. For Gaussian noise sigma_y, tau =
/// sqrt(2) sigma_y makes the Langevin target the true likelihood; the official tau = 0.01 weighs the
/// measurement more. Works with any ForwardOperator that autograd can differentiate, phase retrieval
/// included. The network is evaluated `ode_steps` times per level (`network_cost()`), never differentiated.
template <NoiseModel Likelihood, ForwardOperator Operator>
class DAPS : public detail::PosteriorSamplerBase<DAPS<Likelihood, Operator>> {
 public:
  DAPS(Operator measurement_operator, Likelihood likelihood, DiffusionSchedule model_schedule,
       DAPSOptions options = {})
      : operator_(std::move(measurement_operator)),
        likelihood_(std::move(likelihood)),
        model_schedule_(std::move(model_schedule)),
        options_(std::move(options)),
        annealing_(model_schedule_) {
    TORCH_CHECK(options_.annealing_steps() >= 1, "DAPSOptions::annealing_steps must be >= 1, got ",
                options_.annealing_steps());
    TORCH_CHECK(options_.sigma_max() > options_.sigma_min() && options_.sigma_min() > 0.0,
                "DAPSOptions: need sigma_max > sigma_min > 0, got sigma_max ", options_.sigma_max(),
                " and sigma_min ", options_.sigma_min());
    TORCH_CHECK(options_.ode_steps() >= 1 && options_.ode_sigma_min() > 0.0,
                "DAPSOptions: ode_steps must be >= 1 and ode_sigma_min > 0, got ", options_.ode_steps(),
                " and ", options_.ode_sigma_min());
    TORCH_CHECK(options_.langevin_steps() >= 0, "DAPSOptions::langevin_steps must be >= 0, got ",
                options_.langevin_steps());
    TORCH_CHECK(options_.step_size() > 0.0 && options_.step_size_min_ratio() > 0.0,
                "DAPSOptions: step_size and step_size_min_ratio must be > 0, got ", options_.step_size(),
                " and ", options_.step_size_min_ratio());
    TORCH_CHECK(options_.tau() > 0.0, "DAPSOptions::tau must be > 0, got ", options_.tau());
    TORCH_CHECK(options_.num_samples() >= 1, "DAPSOptions::num_samples must be >= 1, got ",
                options_.num_samples());
    // Annealing levels: EDM's spacing from sigma_max toward sigma_min, the last point (sigma_min) replaced by
    // 0 as the official scheduler does, each rounded to a model timestep.
    const auto sigmas =
        edm_sigmas(options_.sigma_max(), options_.sigma_min(), options_.annealing_steps() + 1);
    std::set<int64_t> levels;
    for (int64_t k = 0; k < options_.annealing_steps(); ++k) levels.insert(nearest_step(sigmas[k]));
    annealing_ = model_schedule_.restricted_to({levels.begin(), levels.end()});
    for (int64_t level : levels) ode_paths_.push_back(build_ode_path(level));
  }

  /// The model-schedule steps of the ODE at annealing level `index` (an index of `schedule()`): the level's
  /// own step first, then each Euler step's end. One step alone means a single Euler step to sigma = 0, which
  /// is Tweedie's estimate.
  [[nodiscard]] const std::vector<int64_t>& ode_path(int64_t index) const {
    annealing_.check_index(index);
    return ode_paths_[index];
  }

  /// The Langevin step size at annealing level `index`: step_size (1 + p (step_size_min_ratio - 1)) with p =
  /// k / (K + 1) for the k-th of K levels counted from the noisiest, as the official `get_lr`.
  [[nodiscard]] double langevin_step_size(int64_t index) const {
    annealing_.check_index(index);
    const int64_t levels = annealing_.num_steps();
    const double progress = static_cast<double>(levels - 1 - index) / static_cast<double>(levels + 1);
    return options_.step_size() * (1.0 + progress * (options_.step_size_min_ratio() - 1.0));
  }

  /// The DAPS step at annealing level `prediction.index`: the rest of the ODE from the loop's network
  /// prediction, the Langevin phase (its noise drawn from `generator`), and re-noising with `noise`.
  template <ScoreModel Model>
  MethodStep correct(Model& model, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    torch::NoGradGuard no_grad;
    const auto index = prediction.index;
    const auto& path = ode_paths_[index];
    const auto x0_hat = solve_ode(model, prediction, path);

    // Langevin dynamics on x0 at this level's sigma (VE scale).
    const double sigma = model_schedule_.sqrt_recipm1_alphas_cumprod()[path.front()];
    const double step = langevin_step_size(index);
    const double inverse_tau2 = 1.0 / (options_.tau() * options_.tau());
    const double inverse_sigma2 = 1.0 / (sigma * sigma);
    auto x = x0_hat;
    for (int64_t k = 0; k < options_.langevin_steps(); ++k) {
      torch::Tensor gradient;
      {
        auto leaf = x.detach().requires_grad_(true);
        torch::AutoGradMode enable_grad(true);
        const auto residual = likelihood_.data_fidelity(y, operator_.forward(leaf));
        gradient = torch::autograd::grad({residual.square().sum()}, {leaf})[0];
      }
      const auto score = (x0_hat - x) * inverse_sigma2 - gradient * inverse_tau2;
      x = x + step * score + std::sqrt(2.0 * step) * detail::randn_like(x, generator);
    }

    // Forward diffusion to the next level: x0 + sigma' z on the VE scale is sqrt(abar') x0 + sqrt(1 - abar')
    // z.
    const double abar_next = annealing_.alphas_cumprod_prev()[index];
    auto x_prev = std::sqrt(abar_next) * x + std::sqrt(1.0 - abar_next) * noise;
    auto residual = likelihood_.data_fidelity(y, operator_.forward(x));
    return {std::move(x_prev), x0_hat, std::move(residual)};
  }

  /// The network work of one run: the ODE's evaluations at every level, no backpropagation through the
  /// network.
  [[nodiscard]] NetworkCost network_cost() const {
    int64_t forwards = 0;
    for (const auto& path : ode_paths_) forwards += evaluations(path);
    return {forwards, 0};
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const Likelihood& likelihood() const noexcept { return likelihood_; }
  /// The annealing levels actually run, as a schedule restricted from the model's.
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return annealing_; }
  [[nodiscard]] const DiffusionSchedule& model_schedule() const noexcept { return model_schedule_; }
  [[nodiscard]] const DAPSOptions& options() const noexcept { return options_; }
  /// Only the operator is differentiated (Langevin), never the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] int64_t num_samples() const noexcept { return options_.num_samples(); }
  [[nodiscard]] static const char* method_name() noexcept { return "DAPS"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower DAPSOptions::step_size (Langevin steps must stay below tau^2 and sigma^2).";
  }

 private:
  /// EDM's noise levels (Karras et al. 2022, eq. 5 with rho = 7): `count` points from sigma_max to sigma_min.
  static std::vector<double> edm_sigmas(double sigma_max, double sigma_min, int64_t count) {
    std::vector<double> sigmas(static_cast<size_t>(count));
    const double first = std::pow(sigma_max, 1.0 / 7.0);
    const double last = std::pow(sigma_min, 1.0 / 7.0);
    for (int64_t k = 0; k < count; ++k) {
      const double r = count > 1 ? static_cast<double>(k) / static_cast<double>(count - 1) : 0.0;
      sigmas[k] = std::pow(first + r * (last - first), 7.0);
    }
    return sigmas;
  }

  /// The model-schedule step whose sigma = sqrt(1 / abar - 1) is nearest to `sigma` in log scale.
  [[nodiscard]] int64_t nearest_step(double sigma) const {
    const auto& sigmas = model_schedule_.sqrt_recipm1_alphas_cumprod();
    int64_t best = 0;
    double best_error = INFINITY;
    for (int64_t i = 0; i < model_schedule_.num_steps(); ++i) {
      const double error = std::abs(std::log(sigmas[i]) - std::log(sigma));
      if (error < best_error) {
        best_error = error;
        best = i;
      }
    }
    return best;
  }

  /// The ODE from model step `level` toward ode_sigma_min on EDM's spacing, as strictly decreasing steps.
  [[nodiscard]] std::vector<int64_t> build_ode_path(int64_t level) const {
    const double sigma = model_schedule_.sqrt_recipm1_alphas_cumprod()[level];
    std::vector<int64_t> path{level};
    for (double s : edm_sigmas(sigma, options_.ode_sigma_min(), options_.ode_steps() + 1)) {
      const auto step = nearest_step(s);
      if (step < path.back()) path.push_back(step);
    }
    return path;
  }

  static int64_t evaluations(const std::vector<int64_t>& path) {
    return std::max<int64_t>(1, static_cast<int64_t>(path.size()) - 1);
  }

  /// Euler steps of the probability-flow ODE along `path` from the loop's prediction (DDIM with eta = 0
  /// between the model's timesteps, DDIM eq. 12), ending on the VE scale x / sqrt(abar) at the last step; a
  /// one-step path goes to sigma = 0, Tweedie's estimate.
  template <ScoreModel Model>
  torch::Tensor solve_ode(Model& model, const NetworkPrediction& prediction,
                          const std::vector<int64_t>& path) const {
    const auto& abar = model_schedule_.alphas_cumprod();
    auto x = prediction.x_t;
    auto output = prediction.output;
    const int64_t steps = evaluations(path);
    for (int64_t j = 0; j < steps; ++j) {
      if (j > 0) output = detail::evaluate_network(model, model_schedule_, x, path[j], false).output;
      const auto denoised = detail::denoise(model_schedule_, {x, output, path[j]}, options_.clip_denoised());
      if (path.size() == 1) return denoised.x0;
      const auto eps = (x - std::sqrt(abar[path[j]]) * denoised.x0) / std::sqrt(1.0 - abar[path[j]]);
      x = std::sqrt(abar[path[j + 1]]) * denoised.x0 + std::sqrt(1.0 - abar[path[j + 1]]) * eps;
    }
    return x / std::sqrt(abar[path.back()]);
  }

  Operator operator_;
  Likelihood likelihood_;
  DiffusionSchedule model_schedule_;
  DAPSOptions options_;
  DiffusionSchedule annealing_;
  std::vector<std::vector<int64_t>> ode_paths_;  // per annealing level, model-schedule steps
};

}  // namespace diffpost
