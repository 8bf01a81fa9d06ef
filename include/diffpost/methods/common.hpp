// The reverse loop every diffusion method runs, and what it hands to a method: per step one network
// evaluation at x_t, then the method's correction (a DPS gradient step, a projection, a data-consistency
// step, a Langevin phase) produces x_{t-1}. Also the per-step progress report, the network cost of a run, the
// shape checks between images and measurements, and divergence detection.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>

#include <cstdint>
#include <functional>
#include <utility>

namespace diffpost {

/// What a method reports after each reverse step. The tensors are held by value and detached, so a callback
/// may keep them (e.g. to record a trajectory); reading a value (`.item()`) is the callback's choice and
/// costs a device sync, the loop itself never syncs.
struct StepInfo {
  int64_t index;           ///< schedule step just taken (counts down to 0)
  int64_t step;            ///< 1-based count of steps taken so far
  int64_t num_steps;       ///< steps in this run
  torch::Tensor x;         ///< the new iterate x_{t-1}
  torch::Tensor x0_hat;    ///< the network's estimate of x_0 at x_t (Tweedie's; DAPS: its ODE's end)
  torch::Tensor residual;  ///< data-fidelity per sample [B]; undefined where a method has none
};

/// A per-step callback, for progress bars and trajectories.
using StepCallback = std::function<void(const StepInfo&)>;

/// Result of one step of a conditional method.
struct MethodStep {
  torch::Tensor x_prev;    ///< x_{t-1}, detached
  torch::Tensor x0_hat;    ///< estimate of x_0 at x_t, detached
  torch::Tensor residual;  ///< data fidelity per sample [B], detached; undefined where a method has none
};

/// The network work of one run: `forwards` network evaluations (the NFE of the literature) and `backwards`
/// backpropagations through the network (vector-Jacobian products with respect to x_t, as DPS and PiGDM
/// take). Counted per batch: a batch of B images costs the same number of (batched) passes as one image.
struct NetworkCost {
  int64_t forwards = 0;
  int64_t backwards = 0;
  friend bool operator==(const NetworkCost&, const NetworkCost&) = default;
};

/// One evaluation of the score model, as the reverse loop hands it to a method's correction.
struct NetworkPrediction {
  torch::Tensor x_t;     ///< the iterate the network saw; a leaf requiring grad when `output` keeps its graph
  torch::Tensor output;  ///< the raw model output at x_t (eps, possibly followed by variance channels)
  int64_t index;         ///< the schedule step of x_t
};

namespace detail {

/// The integer timesteps the score model receives at schedule step `index`, one per batch element.
inline torch::Tensor model_timesteps(const DiffusionSchedule& schedule, int64_t index,
                                     const torch::Tensor& x) {
  return torch::full({x.size(0)}, schedule.model_timestep(index),
                     x.options().dtype(torch::kLong).requires_grad(false));
}

/// The one network evaluation of a reverse step: the score model at x_t and schedule step `index`. With
/// `differentiable`, x_t is taken as a fresh leaf requiring grad and the output keeps its graph, so that a
/// method can backpropagate through the network to x_t (DPS, PiGDM); otherwise no graph is built.
template <ScoreModel Model>
NetworkPrediction evaluate_network(Model& model, const DiffusionSchedule& schedule, const torch::Tensor& x_t,
                                   int64_t index, bool differentiable) {
  if (differentiable) {
    auto x = x_t.detach().requires_grad_(true);
    torch::AutoGradMode enable_grad(true);
    auto output = model(x, model_timesteps(schedule, index, x));
    return {x, output, index};
  }
  torch::NoGradGuard no_grad;
  auto output = model(x_t, model_timesteps(schedule, index, x_t));
  return {x_t, output, index};
}

/// The network's eps and Tweedie's x0 estimate (clamped to [-1, 1] when `clip`) of a prediction (Ho et al.
/// eq. 15), for methods that correct x0 before re-noising it.
struct Denoised {
  torch::Tensor eps;
  torch::Tensor x0;
};

inline Denoised denoise(const DiffusionSchedule& schedule, const NetworkPrediction& prediction, bool clip) {
  auto eps = split_model_output(prediction.output, prediction.x_t).eps;
  auto x0 = predict_x0_from_eps(schedule, prediction.x_t, eps, prediction.index, clip);
  return {std::move(eps), std::move(x0)};
}

/// An operator's SVD for one run when it has one (HasSingularValueDecomposition), nothing otherwise, so that
/// a method's per-run context can hold it either way.
template <class Operator>
struct OptionalSVD {
  OptionalSVD(const Operator& /*op*/, const torch::Tensor& /*like*/) {}
};

template <class Operator>
requires HasSingularValueDecomposition<Operator>
struct OptionalSVD<Operator> {
  using Type = decltype(std::declval<const Operator&>().svd(Shape{}, torch::TensorOptions{}));
  OptionalSVD(const Operator& op, const torch::Tensor& like)
      : value(op.svd(like.sizes().vec(), like.options())) {}
  const Type& operator*() const noexcept { return value; }
  Type value;
};

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
    const auto step = first_bad_step_.item<int64_t>();
    TORCH_CHECK(step < 0, method, " diverged: the sample became NaN or infinite at step ", step, ". ",
                remedy);
  }

 private:
  torch::Tensor first_bad_step_;
};

/// The reverse loop, the one place where diffusion methods iterate. From x at schedule step `start_index`
/// down to step 0, each step draws one standard-normal tensor shaped like x from `generator` (the ancestral
/// noise, drawn first so that every method keeps the order of its random draws), evaluates the network once
/// at x_t (`evaluate_network`, with its graph when `Method::differentiates_network`), and lets the method's
/// correction turn that prediction into x_{t-1}:
///   `method.correct(model, context, prediction, noise, generator) -> MethodStep`.
/// A correction draws any further noise from `generator`; it may evaluate the network again only where its
/// method needs several evaluations per step (DAPS's ODE), which its `network_cost()` then counts. The loop
/// reports each step to `callback`, tracks divergence on the device and checks it once at the end, naming
/// `method.method_name()` and `method.divergence_remedy()`. `context` holds the per-run constants the method
/// prepared (the measurement, an operator's SVD, ...). Returns the last iterate, detached.
template <class Method, ScoreModel Model, class Context>
torch::Tensor reverse_loop(const Method& method, Model& model, const Context& context, torch::Tensor x,
                           int64_t start_index, at::Generator& generator, const StepCallback& callback) {
  const auto& schedule = method.schedule();
  schedule.check_index(start_index);
  x = x.detach();
  DivergenceMonitor monitor(x);
  const int64_t steps = start_index + 1;
  for (int64_t index = start_index; index >= 0; --index) {
    auto noise = randn_like(x, generator);
    auto prediction = evaluate_network(model, schedule, x, index, Method::differentiates_network);
    auto result = method.correct(model, context, prediction, noise, generator);
    x = result.x_prev.detach();
    const int64_t step = steps - index;
    monitor.observe(x, step);
    if (callback) {
      callback(StepInfo{index, step, steps, x,
                        result.x0_hat.defined() ? result.x0_hat.detach() : result.x0_hat,
                        result.residual.defined() ? result.residual.detach() : result.residual});
    }
  }
  monitor.check(method.method_name(), method.divergence_remedy());
  return x;
}

/// The front end of the posterior samplers: shape checks, several samples per measurement, x_T, and the
/// network cost of a run; the steps themselves run in `reverse_loop`. `Derived` provides what the loop needs
/// (`schedule()`, `differentiates_network`, `correct(...)`, `method_name()`, `divergence_remedy()`) and
/// `measurement_operator()` and `num_samples()`; it may provide `prepare(measurements, x_T)` to compute
/// per-run constants once (the default context is the measurement batch itself).
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
    const int64_t start = self().schedule().num_steps() - 1;
    if constexpr (requires { self().prepare(measurements, x_T); }) {
      return reverse_loop(self(), model, self().prepare(measurements, x_T), x_T, start, generator, callback);
    } else {
      return reverse_loop(self(), model, measurements, x_T, start, generator, callback);
    }
  }

  /// The network work of one run over the whole schedule: one evaluation per step, and one backpropagation
  /// per step for methods that differentiate through the network.
  [[nodiscard]] NetworkCost network_cost() const {
    const int64_t steps = self().schedule().num_steps();
    return {steps, Derived::differentiates_network ? steps : 0};
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

/// What the methods that bring their own re-noising share (DiffPIR, DDNM, PiGDM, DDRM): the operator, the
/// likelihood, the schedule they run on and their options struct (which has `num_samples`), with accessors.
template <class Derived, class Likelihood, class Operator, class Options>
class ScheduledMethod : public PosteriorSamplerBase<Derived> {
 public:
  ScheduledMethod(Operator measurement_operator, Likelihood likelihood, DiffusionSchedule schedule,
                  Options options)
      : operator_(std::move(measurement_operator)),
        likelihood_(std::move(likelihood)),
        schedule_(std::move(schedule)),
        options_(std::move(options)) {
    TORCH_CHECK(options_.num_samples() >= 1, Derived::method_name(),
                "Options::num_samples must be >= 1, got ", options_.num_samples());
  }

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const Likelihood& likelihood() const noexcept { return likelihood_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }
  [[nodiscard]] const Options& options() const noexcept { return options_; }
  [[nodiscard]] int64_t num_samples() const noexcept { return options_.num_samples(); }

 protected:
  Operator operator_;
  Likelihood likelihood_;
  DiffusionSchedule schedule_;
  Options options_;
};

}  // namespace detail
}  // namespace diffpost
