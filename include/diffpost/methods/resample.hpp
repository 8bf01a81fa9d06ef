// ReSample (Song, Kwon, Zhang, Hu, Qu & Shen, "Solving Inverse Problems with Latent Diffusion Models via Hard
// Data Consistency", ICLR 2024; official code soominkwon/resample, ldm/models/diffusion/ddim.py): DDIM in the
// latent space of an autoencoder with a DPS-like gradient step, and at every tenth step of the last two
// thirds hard data consistency (the measurement fitted exactly by AdamW, in pixel space and then in latent
// space) followed by stochastic resampling back to the current noise level.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/methods/common.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/samplers/common.hpp>
#include <diffpost/samplers/ddim.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace diffpost {

/// Options of ReSample. Defaults are the official code's (`sample_condition.py`, `ddim.py`; the task configs'
/// `scale` is never read): 500 DDIM steps with eta 0; after each step a gradient step of size
/// `gradient_scale` x abar_t on the residual norm; hard data consistency at the steps with index a multiple
/// of `consistency_interval`, in the last (stages - 1) / stages of the run, each from an x0 estimate
/// `time_travel_steps` unconditional DDIM steps ahead; pixel-space optimisation (AdamW, lr 1e-2, at most 2000
/// iterations) in the middle third and latent optimisation (AdamW, lr 5e-3, at most 500 iterations) in the
/// last, both on the mean squared residual, stopped when it falls below `tolerance`^2 and (latent only) when
/// it exceeds its value `latent_patience` iterations earlier; resampling variance gamma = `gamma_scale` (1 -
/// abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev). `stop_check_interval` is diffpost's: how often (in
/// iterations) the optimisation reads its stopping flags back from the device to end early (0 = never: it
/// runs every iteration with the stopped samples frozen, which gives the same result without a device sync).
struct ReSampleOptions {
  TORCH_ARG(int64_t, steps) = 500;
  TORCH_ARG(double, gradient_scale) = 0.5;
  TORCH_ARG(int64_t, consistency_interval) = 10;
  TORCH_ARG(int64_t, stages) = 3;
  TORCH_ARG(int64_t, time_travel_steps) = 5;
  TORCH_ARG(double, gamma_scale) = 40.0;
  TORCH_ARG(bool, pixel_optimization) = true;
  TORCH_ARG(double, pixel_learning_rate) = 1e-2;
  TORCH_ARG(int64_t, pixel_iterations) = 2000;
  TORCH_ARG(double, latent_learning_rate) = 5e-3;
  TORCH_ARG(int64_t, latent_iterations) = 500;
  TORCH_ARG(int64_t, latent_patience) = 200;
  TORCH_ARG(double, tolerance) = 1e-3;
  TORCH_ARG(double, weight_decay) = 1e-2;  // torch.optim.AdamW's default, which the reference keeps
  TORCH_ARG(int64_t, stop_check_interval) = 50;
  TORCH_ARG(bool, tweedie_x0) = false;
};

namespace detail {

/// argmin_v mean |y - forward(v)|^2 per sample by AdamW from `start`, as ReSample's pixel_optimization and
/// latent_optimization: iteration k evaluates the loss at v_k and steps to v_{k+1}; a sample stops (keeps
/// v_{k+1}) once its loss at v_k is below `threshold` or, with `patience` > 0 and k >= patience, above its
/// loss at v_{k - patience}. Stopping is tracked on the device; a stopped sample is frozen by a select, not
/// by leaving the loop, so the result does not depend on `check_interval` (every how many iterations the
/// flags are read back, one device sync, to end the loop when all samples have stopped; 0 = never).
template <class Forward>
torch::Tensor fit_measurement(const torch::Tensor& y, const torch::Tensor& start, const Forward& forward,
                              double learning_rate, double weight_decay, int64_t iterations, int64_t patience,
                              double threshold, int64_t check_interval) {
  auto variable = start.detach().clone().requires_grad_(true);
  torch::optim::AdamW optimizer({variable},
                                torch::optim::AdamWOptions(learning_rate).weight_decay(weight_decay));
  const int64_t batch = variable.size(0);
  const auto measurement = y.detach();
  auto active = torch::ones({batch}, variable.options().dtype(torch::kBool).requires_grad(false));
  std::vector<int64_t> per_sample(static_cast<size_t>(variable.dim()), 1);
  per_sample[0] = batch;
  torch::Tensor history;  // the last `patience` losses, a ring indexed by iteration
  if (patience > 0) history = torch::zeros({patience, batch}, measurement.options().requires_grad(false));
  for (int64_t k = 0; k < iterations; ++k) {
    optimizer.zero_grad();
    torch::Tensor loss;
    {
      torch::AutoGradMode enable_grad(true);
      loss = (measurement - forward(variable)).square().reshape({batch, -1}).mean(1);
      // Each sample's own mean squared error: the samples are independent problems.
      loss.sum().backward();
    }
    torch::NoGradGuard no_grad;
    const auto before = variable.detach().clone();
    optimizer.step();
    variable.copy_(torch::where(active.view(per_sample), variable, before));
    const auto current = loss.detach();
    auto stop = current.lt(threshold);
    if (patience > 0) {
      auto slot = history.select(0, k % patience);
      if (k >= patience) stop = stop.logical_or(slot.lt(current));
      slot.copy_(current);
    }
    active = active.logical_and(stop.logical_not());
    if (check_interval > 0 && (k + 1) % check_interval == 0 && !active.any().item<bool>()) break;
  }
  return variable.detach();
}

}  // namespace detail

/// ReSample for y = A(D(z)) + noise with a latent diffusion prior, as the official `resample_sampling` runs
/// it. At DDIM step i (abar_t = abar_i, abar_prev = abar_{i-1}; ldm's DDIM: abar_prev of the last step is the
/// schedule's first abar, not 1):
///   1. z'_{t-1} = sqrt(abar_prev) z0_pred + sqrt(1 - abar_prev) eps, z0_pred = (z_t - sqrt(1 - abar_t) eps)
///   /
///      sqrt(abar_t) (DDIM, eta 0);
///   2. z_{t-1} = z'_{t-1} - gradient_scale abar_t grad_{z_t} r(y, A(D(z0_hat(z_t)))), r the likelihood's
///   data
///      fidelity (||y - A(D(.))|| for Gaussian noise) and z0_hat = (z_t - (1 - abar_t) eps) / sqrt(abar_t)
///      (the reference's "Tweedie" estimate; `tweedie_x0` uses z0_pred instead);
///   3. at a consistency step (`is_consistency_step`): `time_travel_steps` unconditional DDIM steps from
///      z_{t-1} give z0_hat; then z0 = E(argmin_x ||y - A(x)||^2 from D(z0_hat)) in the middle stage
///      (`uses_pixel_optimization`) or z0 = argmin_z ||y - A(D(z))||^2 from z0_hat in the last, and
///      z_{t-1} ~ N((gamma sqrt(abar_prev) z0 + (1 - abar_prev) z_{t-1}) / (gamma + 1 - abar_prev),
///      gamma (1 - abar_prev) / (gamma + 1 - abar_prev)) (stochastic resampling, ReSample eq. 9);
///   4. after the last step, z_0 = argmin_z ||y - A(D(z))||^2 from z_0 (latent optimisation).
/// The hard-consistency fits ignore the likelihood (a mean squared residual, as the reference). The loop's
/// noise of a step is the resampling noise (eta 0 leaves it otherwise unused), so `PosteriorSampler::step`
/// with given noise compares number for number. Returns latents; decode them with the autoencoder. The steps
/// are ldm's DDIM discretisation of `model_schedule` (`ldm_uniform_ddim_schedule`, samplers/ddim.hpp).
template <NoiseModel Likelihood, ForwardOperator Operator, Autoencoder Codec>
class ReSample : public detail::MethodParts<Likelihood, ThroughDecoder<Operator, Codec>, DiffusionSchedule,
                                            ReSampleOptions> {
 public:
  ReSample(Likelihood likelihood, ThroughDecoder<Operator, Codec> measurement_operator,
           const DiffusionSchedule& model_schedule, ReSampleOptions options = {})
      : ReSample::MethodParts(std::move(likelihood), std::move(measurement_operator),
                              ldm_uniform_ddim_schedule(model_schedule, options.steps()), options),
        first_alpha_cumprod_(model_schedule.alphas_cumprod().front()) {
    const auto& o = this->options();
    TORCH_CHECK(o.gradient_scale() >= 0.0 && std::isfinite(o.gradient_scale()),
                "ReSampleOptions::gradient_scale must be a finite number >= 0, got ", o.gradient_scale());
    TORCH_CHECK(o.consistency_interval() >= 1, "ReSampleOptions::consistency_interval must be >= 1, got ",
                o.consistency_interval());
    TORCH_CHECK(o.stages() >= 1, "ReSampleOptions::stages must be >= 1, got ", o.stages());
    TORCH_CHECK(o.time_travel_steps() >= 1,
                "ReSampleOptions::time_travel_steps must be >= 1 (the reference's 5), got ",
                o.time_travel_steps());
    TORCH_CHECK(o.gamma_scale() > 0.0, "ReSampleOptions::gamma_scale must be > 0 (the reference's 40), got ",
                o.gamma_scale());
    TORCH_CHECK(o.pixel_learning_rate() > 0.0 && o.latent_learning_rate() > 0.0,
                "ReSampleOptions: learning rates must be > 0, got pixel ", o.pixel_learning_rate(),
                " and latent ", o.latent_learning_rate());
    TORCH_CHECK(o.pixel_iterations() >= 0 && o.latent_iterations() >= 0 && o.latent_patience() >= 0,
                "ReSampleOptions: iteration counts and patience must be >= 0");
    TORCH_CHECK(o.tolerance() >= 0.0 && o.weight_decay() >= 0.0 && o.stop_check_interval() >= 0,
                "ReSampleOptions: tolerance, weight_decay and stop_check_interval must be >= 0");
  }

  /// abar of the step after `index` (ldm's `ddim_alphas_prev`): the schedule's, and at index 0 the model
  /// schedule's first abar (ldm's DDIM ends at its first timestep, not at abar = 1).
  [[nodiscard]] double alpha_cumprod_prev(int64_t index) const {
    this->schedule().check_index(index);
    return index > 0 ? this->schedule().alphas_cumprod_prev()[index] : first_alpha_cumprod_;
  }

  /// The steps per stage, `num_steps / stages` (the reference's `index_split`).
  [[nodiscard]] int64_t stage_length() const {
    return this->schedule().num_steps() / this->options().stages();
  }

  /// Whether step `index` ends with hard data consistency and resampling: 0 < index <= N - N / stages and
  /// index a multiple of `consistency_interval`.
  [[nodiscard]] bool is_consistency_step(int64_t index) const {
    this->schedule().check_index(index);
    return index > 0 && index <= this->schedule().num_steps() - stage_length() &&
           index % this->options().consistency_interval() == 0;
  }

  /// Whether the consistency at step `index` fits in pixel space (the middle stage, index >= N / stages).
  [[nodiscard]] bool uses_pixel_optimization(int64_t index) const {
    return is_consistency_step(index) && this->options().pixel_optimization() && index >= stage_length();
  }

  /// The resampling variance at step `index`: gamma_scale (1 - abar_prev) / (1 - abar_t) (1 - abar_t /
  /// abar_prev).
  [[nodiscard]] double resampling_variance(int64_t index) const {
    const double abar = this->schedule().alphas_cumprod()[index];
    const double abar_prev = alpha_cumprod_prev(index);
    return this->options().gamma_scale() * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev);
  }

  /// Network evaluations at step `index`: one, plus the time-travel steps at a consistency step.
  [[nodiscard]] int64_t network_evaluations(int64_t index) const {
    return 1 + (is_consistency_step(index) ? std::min(this->options().time_travel_steps(), index) : 0);
  }

  /// Stochastic resampling (ReSample eq. 9, the reference's `stochastic_resample`) of the iterate `x_t` at
  /// the noise level of abar = `alpha_cumprod` towards the measurement-consistent `z0`, with
  /// standard-normal `noise` and variance `gamma`: the Gaussian N(sqrt(abar) z0, (1 - abar) I) times N(x_t,
  /// gamma I).
  [[nodiscard]] static torch::Tensor stochastic_resample(const torch::Tensor& z0, const torch::Tensor& x_t,
                                                         double alpha_cumprod, double gamma,
                                                         const torch::Tensor& noise) {
    const double one_minus = 1.0 - alpha_cumprod;
    const auto mean = (gamma * std::sqrt(alpha_cumprod) * z0 + one_minus * x_t) / (gamma + one_minus);
    return mean + std::sqrt(1.0 / (1.0 / gamma + 1.0 / one_minus)) * noise;
  }

  /// Stochastic resampling after step `index`: `x_prev` at abar_prev towards `z0` with the step's variance.
  [[nodiscard]] torch::Tensor resample(const torch::Tensor& z0, const torch::Tensor& x_prev, int64_t index,
                                       const torch::Tensor& noise) const {
    return stochastic_resample(z0, x_prev, alpha_cumprod_prev(index), resampling_variance(index), noise);
  }

  /// The latent optimisation: argmin_z mean |y - A(D(z))|^2 from `z_init`, AdamW at `latent_learning_rate`
  /// for at most `latent_iterations` with the reference's stopping rules.
  [[nodiscard]] torch::Tensor consistent_latent(const torch::Tensor& y, const torch::Tensor& z_init) const {
    const auto& o = this->options();
    const auto& op = this->measurement_operator();
    return detail::fit_measurement(
        y, z_init, [&](const torch::Tensor& z) { return op.forward(z); }, o.latent_learning_rate(),
        o.weight_decay(), o.latent_iterations(), o.latent_patience(), o.tolerance() * o.tolerance(),
        o.stop_check_interval());
  }

  /// The pixel optimisation: argmin_x mean |y - A(x)|^2 from `x_init`, AdamW at `pixel_learning_rate` for at
  /// most `pixel_iterations`, stopped below `tolerance`^2.
  [[nodiscard]] torch::Tensor consistent_image(const torch::Tensor& y, const torch::Tensor& x_init) const {
    const auto& o = this->options();
    const auto& op = this->measurement_operator().pixel_operator();
    return detail::fit_measurement(
        y, x_init, [&](const torch::Tensor& x) { return op.forward(x); }, o.pixel_learning_rate(),
        o.weight_decay(), o.pixel_iterations(), 0, o.tolerance() * o.tolerance(), o.stop_check_interval());
  }

  /// The ReSample step at `prediction.index`: the DDIM step and the gradient step, then hard data consistency
  /// and resampling with the loop's `noise` at a consistency step, or the final latent optimisation at step
  /// 0.
  template <ScoreModel Model>
  MethodStep correct(Model& model, const torch::Tensor& y, const NetworkPrediction& prediction,
                     const torch::Tensor& noise, at::Generator& /*generator*/) const {
    const auto index = prediction.index;
    torch::Tensor x_prev, x0_pred;
    FidelityGradient fidelity;
    {
      torch::AutoGradMode enable_grad(true);
      const auto& x_t = prediction.x_t;
      const auto eps = split_model_output(prediction.output, x_t).eps;
      const double abar = this->schedule().alphas_cumprod()[index];
      const double abar_prev = alpha_cumprod_prev(index);
      x0_pred = (x_t - std::sqrt(1.0 - abar) * eps) / std::sqrt(abar);
      const auto x0_hat =
          this->options().tweedie_x0() ? x0_pred : (x_t - (1.0 - abar) * eps) / std::sqrt(abar);
      fidelity = fidelity_gradient_through(this->likelihood(), this->measurement_operator(), y, x0_hat, x_t,
                                           FidelityPenalty::norm);
      const auto ddim = std::sqrt(abar_prev) * x0_pred.detach() + std::sqrt(1.0 - abar_prev) * eps.detach();
      x_prev = ddim - this->options().gradient_scale() * abar * fidelity.gradient;
    }
    if (is_consistency_step(index)) {
      x_prev = hard_consistency(model, y, x_prev, index, noise);
    } else if (index == 0) {
      x_prev = consistent_latent(y, x_prev);
    }
    return {x_prev.detach(), x0_pred.detach(), std::move(fidelity.residual)};
  }

  /// ReSample backpropagates through the network at every step (the gradient step); the time travel and the
  /// optimisations do not (they differentiate the decoder and the operator only).
  static constexpr bool differentiates_network = true;
  [[nodiscard]] static const char* method_name() noexcept { return "ReSample"; }
  [[nodiscard]] static const char* divergence_remedy() noexcept {
    return "Lower ReSampleOptions::gradient_scale (the reference's 0.5) or the learning rates, or check that "
           "y is on the decoder's [-1, 1] image scale.";
  }

 private:
  // Step 3 of the class comment: time travel from x_prev (at index - 1) to z0_hat, the fit, the resampling.
  template <ScoreModel Model>
  torch::Tensor hard_consistency(Model& model, const torch::Tensor& y, const torch::Tensor& x_prev,
                                 int64_t index, const torch::Tensor& noise) const {
    const auto& schedule = this->schedule();
    torch::Tensor z0_hat;
    {
      torch::NoGradGuard no_grad;
      auto x = x_prev;
      const int64_t travel = std::min(this->options().time_travel_steps(), index);
      for (int64_t m = 0; m < travel; ++m) {
        // As the reference: the network sees x's own timestep (index - 1 - m) but the DDIM coefficients are
        // those of the step before (index - m).
        const int64_t coefficients = index - m;
        const auto eps =
            split_model_output(model(x, detail::model_timesteps(schedule, index - 1 - m, x)), x).eps;
        const double abar = schedule.alphas_cumprod()[coefficients];
        const double abar_prev = alpha_cumprod_prev(coefficients);
        const auto x0_pred = (x - std::sqrt(1.0 - abar) * eps) / std::sqrt(abar);
        z0_hat = this->options().tweedie_x0() ? x0_pred : (x - (1.0 - abar) * eps) / std::sqrt(abar);
        x = std::sqrt(abar_prev) * x0_pred + std::sqrt(1.0 - abar_prev) * eps;
      }
    }
    torch::Tensor z0;
    if (uses_pixel_optimization(index)) {
      const auto& codec = this->measurement_operator().autoencoder();
      torch::Tensor image;
      {
        torch::NoGradGuard no_grad;
        image = codec.decode(z0_hat);
      }
      const auto consistent = consistent_image(y, image);
      torch::NoGradGuard no_grad;
      z0 = codec.encode(consistent);
    } else {
      z0 = consistent_latent(y, z0_hat);
    }
    torch::NoGradGuard no_grad;
    return resample(z0, x_prev.detach(), index, noise);
  }

  double first_alpha_cumprod_;
};

}  // namespace diffpost
