// The reverse loop every diffusion method runs, and the sampler that drives it: per step one network
// evaluation at x_t, then the method's correction (a DPS gradient step, a projection, a data-consistency
// step, a Langevin phase) produces x_{t-1}. Also what a method holds (its operator, likelihood, steps and
// options), the per-step progress report, the network cost of a run, the shape checks between images and
// measurements, and divergence detection.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/samplers/common.hpp>
#include <diffpost/schedule.hpp>

#include <concepts>
#include <cstdint>
#include <functional>
#include <type_traits>
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

/// The network work of one run: `forwards` network evaluations (the NFE of the literature) and `backwards`
/// backpropagations through the network (vector-Jacobian products with respect to x_t, as DPS and PiGDM
/// take). Counted per batch: a batch of B images costs the same number of (batched) passes as one image.
struct NetworkCost {
  int64_t forwards = 0;
  int64_t backwards = 0;
  friend bool operator==(const NetworkCost&, const NetworkCost&) = default;
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
  void check(std::string_view method, std::string_view remedy) const {
    const auto step = first_bad_step_.item<int64_t>();
    TORCH_CHECK(step < 0, method, " diverged: the sample became NaN or infinite at step ", step, ". ",
                remedy);
  }

 private:
  torch::Tensor first_bad_step_;
};

/// One step of the reverse loop at schedule step `index`: the network at x (with its graph when the method
/// differentiates through it), then the method's correction with the step's standard-normal `noise`.
template <class Method, ScoreModel Model, class Context>
MethodStep take_step(const Method& method, Model& model, const Context& context, const torch::Tensor& x,
                     int64_t index, const torch::Tensor& noise, at::Generator& generator) {
  auto prediction = evaluate_network(model, method.schedule(), x, index, Method::differentiates_network);
  return method.correct(model, context, prediction, noise, generator);
}

/// The reverse loop, the one place where diffusion methods iterate. From x at schedule step `start_index`
/// down to step 0, each step draws one standard-normal tensor shaped like x from `generator` (the ancestral
/// noise, drawn first so that every method keeps the order of its random draws) and takes the step
/// (`take_step`). A correction draws any further noise from `generator`. The loop reports each step to
/// `callback`, tracks divergence on the device and checks it once at the end, naming the method and its
/// remedy. `context` holds the per-run constants the method prepared. Returns the last iterate, detached.
template <class Method, ScoreModel Model, class Context>
torch::Tensor reverse_loop(const Method& method, Model& model, const Context& context, torch::Tensor x,
                           int64_t start_index, at::Generator& generator, const StepCallback& callback) {
  method.schedule().check_index(start_index);
  x = x.detach();
  DivergenceMonitor monitor(x);
  const int64_t steps = start_index + 1;
  for (int64_t index = start_index; index >= 0; --index) {
    auto noise = randn_like(x, generator);
    auto result = take_step(method, model, context, x, index, noise, generator);
    x = result.x_prev.detach();
    const int64_t step = steps - index;
    monitor.observe(x, step);
    if (callback) {
      callback(StepInfo{index, step, steps, x,
                        result.x0_hat.defined() ? result.x0_hat.detach() : result.x0_hat,
                        result.residual.defined() ? result.residual.detach() : result.residual});
    }
  }
  monitor.check(Method::method_name(), Method::divergence_remedy());
  return x;
}

/// The sampler's own reverse step on a prediction, without a graph: unconditional sampling, SDEdit, and the
/// first half of the projection methods.
template <Sampler SamplerType>
MethodStep plain_reverse_step(const SamplerType& sampler, const NetworkPrediction& prediction,
                              const torch::Tensor& noise) {
  torch::NoGradGuard no_grad;
  auto result = sampler.step(prediction.output, prediction.x_t, prediction.index, noise);
  return {result.x_prev, result.x0_hat, {}};
}

/// The stand-in likelihood of methods that take none (the projection methods ignore the measurement noise).
struct NoLikelihood {};

/// The options of a method that has none.
struct NoOptions {};

/// What a method holds: its measurement operator, its likelihood (NoLikelihood for those that take none),
/// what it steps along (a Sampler, or a DiffusionSchedule for methods that bring their own update) and its
/// options, with the accessors every method offers. Methods derive from it and add their equation.
template <class Likelihood, class Operator, class Steps, class Options>
class MethodParts {
 public:
  MethodParts(Likelihood likelihood, Operator measurement_operator, Steps steps, Options options)
      : likelihood_(std::move(likelihood)),
        operator_(std::move(measurement_operator)),
        steps_(std::move(steps)),
        options_(std::move(options)) {}

  MethodParts(Operator measurement_operator, Steps steps,
              Options options) requires std::same_as<Likelihood, NoLikelihood>
      : MethodParts(NoLikelihood{}, std::move(measurement_operator), std::move(steps), std::move(options)) {}

  [[nodiscard]] const Operator& measurement_operator() const noexcept { return operator_; }
  [[nodiscard]] const Likelihood& likelihood() const noexcept
      requires(!std::same_as<Likelihood, NoLikelihood>) {
    return likelihood_;
  }
  [[nodiscard]] const Options& options() const noexcept { return options_; }
  /// The steps the reverse loop runs: the sampler's schedule, or the schedule itself.
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept {
    if constexpr (Sampler<Steps>) {
      return steps_.schedule();
    } else {
      return steps_;
    }
  }
  [[nodiscard]] const Steps& sampler() const noexcept requires Sampler<Steps> { return steps_; }

 private:
  [[no_unique_address]] Likelihood likelihood_;
  Operator operator_;
  Steps steps_;
  Options options_;
};

}  // namespace detail

/// Runs a PosteriorStep method through the reverse loop: checks the measurement against the image shape,
/// draws `num_samples` posterior samples per measurement in one batch, starts the loop (x_T ~ N(0, I), or the
/// method's own start) and reports each step. Also the single place to take one step by hand (`step`, with
/// explicit noise, for comparisons with a reference) and the network cost of a run.
///
///   PosteriorSampler dps(DPS<GaussianLikelihood, BlurOperator<Motion>>(likelihood, blur, sampler, options));
///   torch::Tensor x = dps.sample(model, y, {3, 256, 256}, generator);
template <PosteriorStep Method>
class PosteriorSampler {
 public:
  explicit PosteriorSampler(Method method, int64_t num_samples = 1)
      : method_(std::move(method)), num_samples_(num_samples) {
    TORCH_CHECK(num_samples_ >= 1, Method::method_name(), ": num_samples must be >= 1, got ", num_samples_);
  }

  [[nodiscard]] const Method& method() const noexcept { return method_; }
  /// Posterior samples drawn per measurement, in one batch.
  [[nodiscard]] int64_t num_samples() const noexcept { return num_samples_; }

  /// The schedule step the loop starts from: the last, unless the method starts elsewhere (SDEdit); -1 when
  /// it takes no step at all.
  [[nodiscard]] int64_t start_index() const {
    if constexpr (requires { method_.start_index(); }) {
      return method_.start_index();
    } else {
      return method_.schedule().num_steps() - 1;
    }
  }

  /// The reverse steps of one run, as the callback counts them.
  [[nodiscard]] int64_t num_steps() const { return start_index() + 1; }

  /// Runs the whole reverse process for measurements y [B, ...] and images of `image_shape` [C, H, W],
  /// drawing the start and all noise from `generator`. Returns x_0 [B * num_samples, C, H, W]: the samples of
  /// measurement b are rows b * num_samples ... (b + 1) * num_samples - 1. Like the reference it returns the
  /// last iterate.
  template <ScoreModel Model>
  torch::Tensor sample(Model& model, const torch::Tensor& y, const Shape& image_shape,
                       at::Generator& generator, const StepCallback& callback = {}) const {
    TORCH_CHECK(y.dim() >= 1 && y.size(0) >= 1, "measurement y must be a batch [B, ...], got shape ",
                y.sizes());
    TORCH_CHECK(at::isFloatingType(y.scalar_type()), "measurement y must be a floating-point tensor, got ",
                y.scalar_type());
    const auto like = torch::empty(detail::batch_image_shape(image_shape, y.size(0) * num_samples_),
                                   y.options().requires_grad(false));
    const auto measurements = repeated(y);
    detail::check_measurement_shape(method_.measurement_operator(), like.sizes().vec(), measurements);
    torch::Tensor start;
    if constexpr (requires { method_.initial_state(measurements, like, generator); }) {
      start = method_.initial_state(measurements, like, generator);
    } else {
      start = detail::randn_like(like, generator);
    }
    return run(model, measurements, std::move(start), generator, callback);
  }

  /// As `sample`, from a given start [B * num_samples, C, H, W] at `start_index()` (x_T for most methods).
  template <ScoreModel Model>
  torch::Tensor sample_from(Model& model, const torch::Tensor& y, torch::Tensor start,
                            at::Generator& generator, const StepCallback& callback = {}) const {
    TORCH_CHECK(start.dim() == 4, "the start x_T must be [B, C, H, W], got ", start.sizes());
    TORCH_CHECK(y.dim() >= 1 && start.size(0) == y.size(0) * num_samples_, "x_T has batch ", start.size(0),
                " but ", y.dim() >= 1 ? y.size(0) : 0, " measurements x ", num_samples_, " samples need ",
                (y.dim() >= 1 ? y.size(0) : 0) * num_samples_);
    const auto measurements = repeated(y);
    detail::check_measurement_shape(method_.measurement_operator(), start.sizes().vec(), measurements);
    return run(model, measurements, std::move(start), generator, callback);
  }

  /// One step at schedule step `index` from x_t, exactly as the loop takes it, with the step's
  /// standard-normal `noise` given (for number-for-number comparisons with a reference) and any further
  /// draws from `generator`. `y` has x_t's batch size; the run's constants are prepared for this one step.
  template <ScoreModel Model>
  MethodStep step(Model& model, const torch::Tensor& x_t, const torch::Tensor& y, int64_t index,
                  const torch::Tensor& noise, at::Generator& generator) const {
    method_.schedule().check_index(index);
    return detail::take_step(method_, model, context(y.detach(), x_t), x_t, index, noise, generator);
  }

  /// The network work of one run: the network evaluations of every step (one, or the method's
  /// `network_evaluations(index)`), and one backpropagation per step for methods that differentiate through
  /// the network.
  [[nodiscard]] NetworkCost network_cost() const {
    NetworkCost cost;
    for (int64_t index = start_index(); index >= 0; --index) {
      if constexpr (requires { method_.network_evaluations(index); }) {
        cost.forwards += method_.network_evaluations(index);
      } else {
        cost.forwards += 1;
      }
    }
    if (Method::differentiates_network) cost.backwards = num_steps();
    return cost;
  }

 private:
  [[nodiscard]] torch::Tensor repeated(const torch::Tensor& y) const {
    return num_samples_ > 1 ? y.detach().repeat_interleave(num_samples_, 0) : y.detach();
  }

  [[nodiscard]] method_context_t<Method> context(const torch::Tensor& measurements,
                                                 const torch::Tensor& like) const {
    if constexpr (HasRunContext<Method>) {
      return method_.prepare(measurements, like);
    } else {
      return measurements;
    }
  }

  template <ScoreModel Model>
  torch::Tensor run(Model& model, const torch::Tensor& measurements, torch::Tensor start,
                    at::Generator& generator, const StepCallback& callback) const {
    TORCH_CHECK(start.scalar_type() == measurements.scalar_type() && start.device() == measurements.device(),
                "x_T (", start.scalar_type(), ", ", start.device(), ") and y (", measurements.scalar_type(),
                ", ", measurements.device(), ") must share dtype and device");
    const int64_t first = start_index();
    if (first < 0) return start.detach();
    const auto run_context = context(measurements, start);
    return detail::reverse_loop(method_, model, run_context, std::move(start), first, generator, callback);
  }

  Method method_;
  int64_t num_samples_;
};

}  // namespace diffpost
