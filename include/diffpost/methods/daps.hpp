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
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace diffpost {

/// The Markov chain of DAPS's second phase (the official `mcmc_sampler_config.mc_algo`).
enum class DAPSChain {
  langevin,  ///< x <- x + l s + sqrt(2 l) z (`mc_algo: langevin`, the pixel-space settings)
  hmc,       ///< damped HMC, v <- m v + sqrt(l) s + sqrt(2 (1 - m)) z, x <- x + sqrt(l) v (`mc_algo: hmc`)
};

/// Options of DAPS. Defaults are the official pixel-space DAPS-1K settings (`configs/sampler/edm_daps.yaml`,
/// `commands/pixel_ffhq.sh`, the Langevin settings of `configs/task/down_sampling.yaml`): 200 annealing
/// levels from sigma 100 down toward 0.1 on EDM's rho = 7 spacing, 5 Euler steps of the ODE down to sigma
/// 0.01 per level, 100 Langevin steps of size 1e-4 decaying linearly to 1e-6 over the levels, tau 0.01. Its
/// other tasks change `step_size` (5e-5 for motion deblur, box inpainting and phase retrieval; 1e-5 with 200
/// `langevin_steps` for nonlinear deblur). Sigmas are on the variance-exploding scale sigma = sqrt(1 / abar -
/// 1), images in [-1, 1]. `latent()` is the official LatentDAPS preset (methods/latent_daps.hpp).
struct DAPSOptions {
  /// The official LatentDAPS-100 settings on the FFHQ LDM (`configs/sampler/latent_edm_daps.yaml`,
  /// `commands/ldm_ffhq.sh`, the `ldm` block of `configs/task/down_sampling.yaml`): 50 annealing levels from
  /// sigma 10 toward 0.1, 2 Euler steps of the ODE down to sigma 0.001, 24 HMC steps of size 1.35e-4
  /// decaying to 1.35e-4 x 0.023 with momentum 0.86, tau 0.01, the latent gradient clamped to [-1, 1].
  /// Other tasks change the chain's settings (docs/methods.md, LatentDAPS).
  static DAPSOptions latent() {
    return DAPSOptions{}
        .annealing_steps(50)
        .sigma_max(10.0)
        .sigma_min(0.1)
        .ode_steps(2)
        .ode_sigma_min(0.001)
        .chain(DAPSChain::hmc)
        .langevin_steps(24)
        .step_size(1.35e-4)
        .step_size_min_ratio(0.023)
        .momentum(0.86)
        .tau(0.01)
        .gradient_clamp(1.0);
  }

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
  /// The chain of the second phase; `langevin_steps` counts its steps whichever it is.
  TORCH_ARG(DAPSChain, chain) = DAPSChain::langevin;
  /// HMC's momentum m in [0, 1) (the official `momentum`, 0.9 unless a task sets it); unused by Langevin.
  TORCH_ARG(double, momentum) = 0.9;
  /// When > 0, each entry of the data term's gradient (of r^2, before the 1 / tau^2) is clamped to
  /// [-gradient_clamp, gradient_clamp], as the official `LatentWrapper.gradient` does with 1; 0 = no clamp.
  TORCH_ARG(double, gradient_clamp) = 0.0;
};

/// DAPS (the paper's Algorithm 1 as the official code runs it). At annealing level sigma (VE scale):
///   1. x0_hat: the probability-flow ODE from x_t to sigma_min^ODE in `ode_steps` Euler steps (deterministic
///      DDIM steps between the model's timesteps), no gradient;
///   2. Langevin dynamics x <- x + l grad log p + sqrt(2 l) z from x = x0_hat for `langevin_steps` steps on
///      log p(x) = -r(y, A(x))^2 / tau^2 - ||x - x0_hat||^2 / (2 sigma^2), r the likelihood's data fidelity
///      (||y - A x|| for Gaussian noise), with l decaying linearly from `step_size` to `step_size` x
///      `step_size_min_ratio` over the levels; or, with `DAPSChain::hmc`, the official damped HMC on the same
///      target from a fresh standard-normal velocity v: v <- m v + sqrt(l) grad log p + sqrt(2 (1 - m)) z,
///      x <- x + sqrt(l) v (an Euler step of underdamped Langevin dynamics with friction (1 - m) / sqrt(l));
///   3. x_{t'} = x0 + sigma' z at the next level sigma' (0 after the last: the result is x0).
/// The model is discrete-time, so every sigma is rounded to the nearest timestep of `model_schedule` (the
/// schedule the network was trained on, e.g. `DiffusionSchedule::linear()`); levels that round to the same
/// timestep are merged, and `schedule()` gives the levels actually run. For Gaussian noise sigma_y, tau =
/// sqrt(2) sigma_y makes the Langevin target the true likelihood; the official tau = 0.01 weighs the
/// measurement more. Works with any ForwardOperator that autograd can differentiate, phase retrieval
/// included. The network is evaluated `ode_steps` times per level (`network_cost()`), never differentiated.
template <NoiseModel Likelihood, ForwardOperator Operator>
class DAPS : public detail::MethodParts<Likelihood, Operator, DiffusionSchedule, DAPSOptions> {
 public:
  DAPS(Likelihood likelihood, Operator measurement_operator, const DiffusionSchedule& model_schedule,
       const DAPSOptions& options = {})
      : DAPS(std::move(likelihood), std::move(measurement_operator), model_schedule, options,
             annealing_levels(model_schedule, options)) {}

  /// The annealing levels actually run (`schedule()`), as a schedule restricted from the model's.
  [[nodiscard]] const DiffusionSchedule& model_schedule() const noexcept { return model_schedule_; }

  /// The model-schedule steps of the ODE at annealing level `index` (an index of `schedule()`): the level's
  /// own step first, then each Euler step's end. One step alone means a single Euler step to sigma = 0, which
  /// is Tweedie's estimate.
  [[nodiscard]] const std::vector<int64_t>& ode_path(int64_t index) const {
    this->schedule().check_index(index);
    return ode_paths_[index];
  }

  /// The network evaluations at annealing level `index`: the ODE's Euler steps.
  [[nodiscard]] int64_t network_evaluations(int64_t index) const { return evaluations(ode_path(index)); }

  /// The Langevin step size at annealing level `index`: step_size (1 + p (step_size_min_ratio - 1)) with p =
  /// k / (K + 1) for the k-th of K levels counted from the noisiest, as the official `get_lr`.
  [[nodiscard]] double langevin_step_size(int64_t index) const {
    this->schedule().check_index(index);
    const int64_t levels = this->schedule().num_steps();
    const double progress = static_cast<double>(levels - 1 - index) / static_cast<double>(levels + 1);
    return this->options().step_size() * (1.0 + progress * (this->options().step_size_min_ratio() - 1.0));
  }

  /// The DAPS step at annealing level `prediction.index`: the rest of the ODE from the loop's network
  /// prediction, the Langevin phase (its noise drawn from `generator`), and re-noising with the loop's
  /// `noise`.
  template <ScoreModel Model>
  MethodStep correct(Model& model, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& generator) const {
    torch::NoGradGuard no_grad;
    const auto& o = this->options();
    const auto index = prediction.index;
    const auto& path = ode_paths_[index];
    const auto x0_hat = solve_ode(model, prediction, path);

    // Langevin dynamics (or damped HMC) on x0 at this level's sigma (VE scale).
    const double sigma = model_schedule_.sqrt_recipm1_alphas_cumprod()[path.front()];
    const double step = langevin_step_size(index);
    const double inverse_tau2 = 1.0 / (o.tau() * o.tau());
    const double inverse_sigma2 = 1.0 / (sigma * sigma);
    const bool hmc = o.chain() == DAPSChain::hmc;
    auto x = x0_hat;
    // The official order of draws: the velocity first, then one standard normal per step.
    auto velocity = hmc ? detail::randn_like(x, generator) : torch::Tensor();
    for (int64_t k = 0; k < o.langevin_steps(); ++k) {
      auto gradient = fidelity_gradient(this->likelihood(), this->measurement_operator(), y, x,
                                        FidelityPenalty::squared_norm)
                          .gradient;
      if (o.gradient_clamp() > 0.0) gradient = gradient.clamp(-o.gradient_clamp(), o.gradient_clamp());
      const auto score = (x0_hat - x) * inverse_sigma2 - gradient * inverse_tau2;
      const auto z = detail::randn_like(x, generator);
      if (hmc) {
        const double h = std::sqrt(step);
        velocity = o.momentum() * velocity + h * score + std::sqrt(2.0 * (1.0 - o.momentum())) * z;
        x = x + h * velocity;
      } else {
        x = x + step * score + std::sqrt(2.0 * step) * z;
      }
    }

    // Forward diffusion to the next level: x0 + sigma' z on the VE scale is sqrt(abar') x0 + sqrt(1 - abar')
    // z; after the last level the result is x0 itself.
    auto x_prev = q_sample_previous(this->schedule(), x, index, noise);
    auto residual = this->likelihood().data_fidelity(y, this->measurement_operator().forward(x));
    return {std::move(x_prev), x0_hat, std::move(residual)};
  }

  /// Only the operator is differentiated (Langevin), never the network.
  static constexpr bool differentiates_network = false;
  [[nodiscard]] static const char* method_name() noexcept { return "DAPS"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower DAPSOptions::step_size (Langevin steps must stay below tau^2 and sigma^2).";
  }

 private:
  DAPS(Likelihood likelihood, Operator measurement_operator, const DiffusionSchedule& model_schedule,
       const DAPSOptions& options, const std::vector<int64_t>& levels)
      : DAPS::MethodParts(std::move(likelihood), std::move(measurement_operator),
                          model_schedule.restricted_to(levels), options),
        model_schedule_(model_schedule) {
    for (int64_t level : levels) ode_paths_.push_back(build_ode_path(level));
  }

  /// The annealing levels of `options` as steps of `model_schedule`: EDM's spacing from sigma_max toward
  /// sigma_min, the last point (sigma_min) replaced by 0 as the official scheduler does, each rounded to the
  /// nearest model step; levels that round to the same step are merged.
  static std::vector<int64_t> annealing_levels(const DiffusionSchedule& model_schedule,
                                               const DAPSOptions& o) {
    TORCH_CHECK(o.annealing_steps() >= 1, "DAPSOptions::annealing_steps must be >= 1, got ",
                o.annealing_steps());
    TORCH_CHECK(o.sigma_max() > o.sigma_min() && o.sigma_min() > 0.0,
                "DAPSOptions: need sigma_max > sigma_min > 0, got sigma_max ", o.sigma_max(),
                " and sigma_min ", o.sigma_min());
    TORCH_CHECK(o.ode_steps() >= 1 && o.ode_sigma_min() > 0.0,
                "DAPSOptions: ode_steps must be >= 1 and ode_sigma_min > 0, got ", o.ode_steps(), " and ",
                o.ode_sigma_min());
    TORCH_CHECK(o.langevin_steps() >= 0, "DAPSOptions::langevin_steps must be >= 0, got ",
                o.langevin_steps());
    TORCH_CHECK(o.step_size() > 0.0 && o.step_size_min_ratio() > 0.0,
                "DAPSOptions: step_size and step_size_min_ratio must be > 0, got ", o.step_size(), " and ",
                o.step_size_min_ratio());
    TORCH_CHECK(o.tau() > 0.0, "DAPSOptions::tau must be > 0, got ", o.tau());
    TORCH_CHECK(o.momentum() >= 0.0 && o.momentum() < 1.0, "DAPSOptions::momentum must be in [0, 1), got ",
                o.momentum(), " (HMC's velocity decay; the official LatentDAPS presets use 0.41 to 0.95)");
    TORCH_CHECK(o.gradient_clamp() >= 0.0, "DAPSOptions::gradient_clamp must be >= 0 (0 = no clamp), got ",
                o.gradient_clamp());
    const auto sigmas = edm_sigmas(o.sigma_max(), o.sigma_min(), o.annealing_steps() + 1);
    std::set<int64_t> levels;
    for (int64_t k = 0; k < o.annealing_steps(); ++k) levels.insert(model_schedule.nearest_step(sigmas[k]));
    return {levels.begin(), levels.end()};
  }

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

  /// The ODE from model step `level` toward ode_sigma_min on EDM's spacing, as strictly decreasing steps.
  [[nodiscard]] std::vector<int64_t> build_ode_path(int64_t level) const {
    const double sigma = model_schedule_.sqrt_recipm1_alphas_cumprod()[level];
    std::vector<int64_t> path{level};
    for (double s : edm_sigmas(sigma, this->options().ode_sigma_min(), this->options().ode_steps() + 1)) {
      const auto step = model_schedule_.nearest_step(s);
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
    const bool clip = this->options().clip_denoised();
    auto x = prediction.x_t;
    auto output = prediction.output;
    const int64_t steps = evaluations(path);
    for (int64_t j = 0; j < steps; ++j) {
      if (j > 0) output = detail::evaluate_network(model, model_schedule_, x, path[j], false).output;
      const auto denoised = detail::denoise(model_schedule_, {x, output, path[j]}, clip);
      if (path.size() == 1) return denoised.x0;
      const auto eps =
          predict_eps_from_x0(model_schedule_, x, denoised.x0, path[j], EpsForm::forward_process);
      x = q_sample(model_schedule_, denoised.x0, path[j + 1], eps);
    }
    return x / model_schedule_.sqrt_alphas_cumprod()[path.back()];
  }

  DiffusionSchedule model_schedule_;
  std::vector<std::vector<int64_t>> ode_paths_;  // per annealing level, model-schedule steps
};

}  // namespace diffpost
