// Denoising diffusion implicit models (Song, Meng & Ermon 2021): a non-Markovian reverse process that allows
// few-step sampling on a respaced schedule; eta = 1 recovers DDPM-like noise, eta = 0 is deterministic.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace diffpost {

/// Options of DDIMSampler.
struct DDIMOptions {
  TORCH_ARG(double, eta) = 0.0;
  TORCH_ARG(bool, clip_denoised) = true;
};

/// The coefficients of a DDIM step from abar_t to abar_prev (DDIM eqs. 12 and 16): x_{t-1} = sqrt(abar_prev)
/// x0 + eps_scale eps + noise_scale z.
struct DDIMCoefficients {
  double noise_scale;  ///< s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
  double eps_scale;    ///< sqrt(1 - abar_prev - s^2)
};

/// DDIM's coefficients at step `index` of `schedule` for a given eta (PiGDM takes its steps with them too).
inline DDIMCoefficients ddim_coefficients(const DiffusionSchedule& schedule, int64_t index, double eta) {
  schedule.check_index(index);
  const double abar = schedule.alphas_cumprod()[index];
  const double abar_prev = schedule.alphas_cumprod_prev()[index];
  const double s = eta * std::sqrt((1.0 - abar_prev) / (1.0 - abar)) * std::sqrt(1.0 - abar / abar_prev);
  return {s, std::sqrt(std::max(0.0, 1.0 - abar_prev - s * s))};
}

/// The DDIM sampler: x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps' + s z (DDIM eq. 12),
/// with eps' re-derived from the clipped x0_hat and s = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 -
/// abar/abar_prev). Learned-variance channels, if any, are ignored. Satisfies the Sampler concept.
class DDIMSampler {
 public:
  explicit DDIMSampler(DiffusionSchedule schedule, DDIMOptions options = {})
      : schedule_(std::move(schedule)), options_(std::move(options)) {
    TORCH_CHECK(options_.eta() >= 0.0, "DDIMOptions::eta must be >= 0, got ", options_.eta());
  }

  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }
  [[nodiscard]] const DDIMOptions& options() const noexcept { return options_; }

  /// The noise scale s of step `index` (DDIM eq. 16).
  [[nodiscard]] double sigma(int64_t index) const {
    return ddim_coefficients(schedule_, index, options_.eta()).noise_scale;
  }

  /// One DDIM step with the given standard-normal `noise` (unused at index 0 or when eta = 0).
  [[nodiscard]] SamplerStep step(const torch::Tensor& model_output, const torch::Tensor& x_t, int64_t index,
                                 const torch::Tensor& noise) const {
    detail::check_step_inputs(schedule_, x_t, index, noise);
    auto parts = split_model_output(model_output, x_t);
    auto x0_hat = predict_x0_from_eps(schedule_, x_t, parts.eps, index, options_.clip_denoised());
    auto eps = predict_eps_from_x0(schedule_, x_t, x0_hat, index);
    const auto c = ddim_coefficients(schedule_, index, options_.eta());
    auto x_prev = std::sqrt(schedule_.alphas_cumprod_prev()[index]) * x0_hat + c.eps_scale * eps;
    if (index > 0 && c.noise_scale > 0.0) x_prev = x_prev + c.noise_scale * noise;
    return {x_prev, x0_hat};
  }

 private:
  DiffusionSchedule schedule_;
  DDIMOptions options_;
};

static_assert(Sampler<DDIMSampler>);

/// ldm's uniform DDIM discretisation of an N-step `model_schedule` (CompVis ldm's `make_ddim_timesteps(
/// "uniform")` and `make_ddim_sampling_parameters`, which the latent solvers' official code runs): with
/// stride c = N / steps (integer division), the network sees the timesteps 1, 1 + c, 1 + 2c, ... (every one
/// below N
/// + 1, so 1000 / 300 gives 334 steps) and each step's abar is the model's abar at that timestep. When the
/// last timestep equals the number of steps (c = 1: timesteps 1 ... N), abar is taken one timestep earlier,
/// as the PSLD code's `make_ddim_sampling_parameters` does to avoid ldm's index error at t = N. ldm's last
/// step goes to abar_0 (its `alphas_prev[0]`); a DiffusionSchedule's last step goes to abar = 1, the only
/// difference. `model_schedule` must be un-respaced (the schedule the network was trained on).
inline DiffusionSchedule ldm_uniform_ddim_schedule(const DiffusionSchedule& model_schedule, int64_t steps) {
  const int64_t n = model_schedule.num_steps();
  TORCH_CHECK(steps >= 1 && steps <= n, "ldm_uniform_ddim_schedule: steps must be in [1, ", n, "], got ",
              steps);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(
        model_schedule.model_timestep(i) == i,
        "ldm_uniform_ddim_schedule: give the un-respaced schedule the network was trained on; this one "
        "maps step ",
        i, " to timestep ", model_schedule.model_timestep(i));
  }
  const int64_t stride = n / steps;
  std::vector<int64_t> timesteps;
  for (int64_t t = 0; t < n; t += stride) timesteps.push_back(t + 1);
  const bool shifted = timesteps.back() == static_cast<int64_t>(timesteps.size());
  std::vector<int64_t> kept;
  kept.reserve(timesteps.size());
  for (auto t : timesteps) kept.push_back(shifted ? t - 1 : t);
  TORCH_CHECK(kept.back() < n, "ldm_uniform_ddim_schedule: ", steps, " steps of a ", n,
              "-step schedule reach timestep ", kept.back(),
              ", outside it (ldm fails there too); choose another "
              "step count");
  return DiffusionSchedule(model_schedule.restricted_to(kept).betas(), std::move(timesteps));
}

}  // namespace diffpost
