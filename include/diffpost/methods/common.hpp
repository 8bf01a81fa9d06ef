// What every diffusion-based method shares: the per-step progress report, the timestep tensor handed to the
// score model, the shape checks between images and measurements, and divergence detection.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/schedule.hpp>

#include <cstdint>
#include <functional>

namespace diffpost {

/// What a method reports after each reverse step. Tensors are detached; reading a value (`.item()`) is the
/// callback's choice and costs a device sync, the loop itself never syncs.
struct StepInfo {
  int64_t index;                  ///< schedule step just taken (counts down to 0)
  int64_t step;                   ///< 1-based count of steps taken so far
  int64_t num_steps;              ///< steps in this run
  const torch::Tensor& x;         ///< the new iterate x_{t-1}
  const torch::Tensor& x0_hat;    ///< Tweedie estimate at x_t
  const torch::Tensor& residual;  ///< data-fidelity per sample [B]; undefined for unconditional sampling
};

/// A per-step callback, for progress bars and trajectories.
using StepCallback = std::function<void(const StepInfo&)>;

/// Result of one step of a conditional method.
struct MethodStep {
  torch::Tensor x_prev;    ///< x_{t-1}, detached
  torch::Tensor x0_hat;    ///< Tweedie estimate at x_t, detached
  torch::Tensor residual;  ///< data fidelity per sample [B], detached; undefined where a method has none
};

namespace detail {

/// The integer timesteps the score model receives at schedule step `index`, one per batch element.
inline torch::Tensor model_timesteps(const DiffusionSchedule& schedule, int64_t index,
                                     const torch::Tensor& x) {
  return torch::full({x.size(0)}, schedule.model_timestep(index),
                     x.options().dtype(torch::kLong).requires_grad(false));
}

/// Checks that a 3-D [C, H, W] image shape was given and returns [batch, C, H, W].
inline Shape batch_image_shape(const Shape& image_shape, int64_t batch) {
  TORCH_CHECK(image_shape.size() == 3, "image_shape must be [C, H, W], got ", c10::IntArrayRef(image_shape));
  for (auto extent : image_shape)
    TORCH_CHECK(extent > 0, "image_shape ", c10::IntArrayRef(image_shape), " has a non-positive extent");
  return {batch, image_shape[0], image_shape[1], image_shape[2]};
}

/// Checks that `op` maps images of `image_shape` to measurements shaped like `y`.
template <ForwardOperator Operator>
void check_measurement_shape(const Operator& op, const Shape& image_shape, const torch::Tensor& y) {
  const Shape expected = op.measurement_shape(image_shape);
  TORCH_CHECK(y.sizes().vec() == expected, "measurement y has shape ", y.sizes(),
              " but the operator maps images ", c10::IntArrayRef(image_shape), " to measurements ",
              c10::IntArrayRef(expected), "; check the image size, channel count and operator parameters");
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), "measurement y must be a floating-point tensor, got ",
              y.scalar_type());
}

/// Tracks, without a device sync per step, the first step at which the iterate stopped being finite.
class DivergenceMonitor {
 public:
  explicit DivergenceMonitor(const torch::Tensor& like)
      : first_bad_step_(torch::full({}, -1, like.options().dtype(torch::kLong).requires_grad(false))) {}

  void observe(const torch::Tensor& x, int64_t step) {
    auto bad = x.isfinite().logical_not().any();
    first_bad_step_ = torch::where(first_bad_step_.lt(0).logical_and(bad),
                                   torch::full_like(first_bad_step_, step), first_bad_step_);
  }

  /// Throws a c10::Error naming the first bad step when the run diverged; one device sync.
  void check(const char* method, const char* remedy) const {
    const int64_t step = first_bad_step_.item<int64_t>();
    TORCH_CHECK(step < 0, method, " diverged: the sample became NaN or infinite at step ", step, ". ",
                remedy);
  }

 private:
  torch::Tensor first_bad_step_;
};

/// The reverse loop shared by the posterior samplers (DPS, MCG, Score-SDE projection, ScoreALD). `Derived`
/// provides `sampler()`, `measurement_operator()`, `num_samples()`, `method_name()`, `divergence_remedy()`
/// and `step(model, x_t, y, index, generator)`; this base adds the shape checks, the batching of several
/// samples per measurement, the loop, the callback and divergence detection.
template <class Derived>
class PosteriorSamplerBase {
 public:
  /// Runs the whole reverse process for measurements y [B, ...] and images of `image_shape` [C, H, W],
  /// drawing x_T and all noise from `generator`. Returns x_0 [B * num_samples, C, H, W]: the samples of
  /// measurement b are rows b * num_samples ... (b + 1) * num_samples - 1. Like the reference it returns the
  /// last iterate.
  template <ScoreModel Model>
  torch::Tensor sample(Model& model, const torch::Tensor& y, const Shape& image_shape,
                       at::Generator& generator, const StepCallback& callback = {}) const {
    TORCH_CHECK(y.dim() >= 1 && y.size(0) >= 1, "measurement y must be a batch [B, ...], got shape ",
                y.sizes());
    TORCH_CHECK(at::isFloatingType(y.scalar_type()), "measurement y must be a floating-point tensor, got ",
                y.scalar_type());
    const int64_t batch = y.size(0) * self().num_samples();
    auto like = torch::empty(batch_image_shape(image_shape, batch), y.options().requires_grad(false));
    return sample_from(model, y, randn_like(like, generator), generator, callback);
  }

  /// As `sample`, starting from a given x_T [B * num_samples, C, H, W].
  template <ScoreModel Model>
  torch::Tensor sample_from(Model& model, const torch::Tensor& y, torch::Tensor x_T, at::Generator& generator,
                            const StepCallback& callback = {}) const {
    const int64_t samples = self().num_samples();
    TORCH_CHECK(x_T.dim() == 4, "x_T must be [B, C, H, W], got ", x_T.sizes());
    TORCH_CHECK(x_T.size(0) == y.size(0) * samples, "x_T has batch ", x_T.size(0), " but ", y.size(0),
                " measurements x ", samples, " samples need ", y.size(0) * samples);
    auto measurements = samples > 1 ? y.detach().repeat_interleave(samples, 0) : y.detach();
    check_measurement_shape(self().measurement_operator(), x_T.sizes().vec(), measurements);
    TORCH_CHECK(x_T.scalar_type() == y.scalar_type() && x_T.device() == y.device(), "x_T (",
                x_T.scalar_type(), ", ", x_T.device(), ") and y (", y.scalar_type(), ", ", y.device(),
                ") must share dtype and device");
    auto x = x_T.detach();
    DivergenceMonitor monitor(x);
    const int64_t n = self().sampler().schedule().num_steps();
    for (int64_t index = n - 1; index >= 0; --index) {
      auto result = self().step(model, x, measurements, index, generator);
      x = result.x_prev;
      monitor.observe(x, n - index);
      if (callback) callback(StepInfo{index, n - index, n, x, result.x0_hat, result.residual});
    }
    monitor.check(self().method_name(), self().divergence_remedy());
    return x;
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

}  // namespace detail
}  // namespace diffpost
