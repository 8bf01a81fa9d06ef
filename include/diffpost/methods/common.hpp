// What every diffusion-based method shares: the per-step progress report, the timestep tensor handed to the
// score model, the shape checks between images and measurements, and divergence detection.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
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

}  // namespace detail
}  // namespace diffpost
