// The restoration tasks of the diffpost tool, one registry entry each: its name and help, the DPS step size
// it runs with unless --scale says otherwise, its parameters (a typed struct with its flags, shared by the
// tasks that read it), and how its operator is made for each image (from that image's own generator, after
// the parameters were checked once against the image shape). What a task's operators can do (a naive inverse,
// a mask or kernel to show) comes from their types.
#pragma once

#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/io/operator_files.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/operators/per_image.hpp>
#include <diffpost/random.hpp>
#include <diffpost/samplers.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "options.hpp"
#include "registry.hpp"

namespace diffpost::cli {

// ---------------------------------------------------------------------------------------------------------------
// Task parameters. The numbers are in the "Task parameters" group (a sweep of `diffpost eval` may vary them),
// the files in "Task files".
// ---------------------------------------------------------------------------------------------------------------

/// The masks of the inpainting tasks.
struct MaskParameters {
  int64_t box_size = 14;
  int64_t box_margin = 4;
  double drop_fraction = 0.7;
  std::string mask_file;

  static void add_options(CLI::App& app, MaskParameters& p) {
    add_value_option(app, "--box-size", p.box_size, "box-inpaint: side of the missing square", "N",
                     "Task parameters")
        ->check(CLI::PositiveNumber);
    add_value_option(app, "--box-margin", p.box_margin,
                     "box-inpaint: the box lies at least this far from the border (random position)", "N",
                     "Task parameters")
        ->check(CLI::NonNegativeNumber);
    add_value_option(app, "--drop-fraction", p.drop_fraction, "random-inpaint: fraction of pixels removed",
                     "P", "Task parameters")
        ->check(finite_in(0.0, 1.0));
    app.add_option("--mask-file", p.mask_file,
                   "inpainting: mask image, white = observed, black = missing (instead of a random one)")
        ->type_name("FILE")
        ->group("Task files");
  }
};

/// The factor of super-resolution.
struct FactorParameters {
  int64_t factor = 2;

  static void add_options(CLI::App& app, FactorParameters& p) {
    add_value_option(app, "--factor", p.factor, "sr: downsampling factor", "N", "Task parameters")
        ->check(CLI::PositiveNumber);
  }
};

/// The kernels of the deblurring tasks.
struct KernelParameters {
  int64_t kernel_size = 9;
  double kernel_sigma = 1.5;
  double motion_intensity = 0.5;
  std::string kernel_file;

  static void add_options(CLI::App& app, KernelParameters& p) {
    const CLI::Validator odd(
        [](std::string& text) -> std::string {
          int64_t value = 0;
          const auto* end = text.data() + text.size();
          const auto parsed = std::from_chars(text.data(), end, value);
          const bool even = parsed.ec == std::errc() && parsed.ptr == end && value % 2 == 0;
          return even ? "must be odd, got " + text : std::string{};
        },
        "odd");
    add_value_option(app, "--kernel-size", p.kernel_size, "gaussian-deblur, motion-deblur: odd kernel side",
                     "N", "Task parameters")
        ->check(CLI::PositiveNumber & odd);
    add_value_option(app, "--kernel-sigma", p.kernel_sigma,
                     "gaussian-deblur: kernel standard deviation, pixels", "X", "Task parameters")
        ->check(finite_in(1e-3, 1e3));
    add_value_option(app, "--motion-intensity", p.motion_intensity, "motion-deblur: camera shake in [0, 1]",
                     "X", "Task parameters")
        ->check(finite_in(0.0, 1.0));
    app.add_option("--kernel-file", p.kernel_file,
                   "deblurring: kernel image (normalised to sum 1) instead of the generated one")
        ->type_name("FILE")
        ->group("Task files");
  }
};

/// The zero padding of phase retrieval.
struct OversampleParameters {
  double oversample = 2.0;

  static void add_options(CLI::App& app, OversampleParameters& p) {
    add_value_option(app, "--oversample", p.oversample,
                     "phase-retrieval: zero padding, oversample / 8 of the size per side", "X",
                     "Task parameters")
        ->check(finite_in(0.0, 16.0));
  }
};

/// The blur network of nonlinear deblurring and how its kernel latent is drawn.
struct NonlinearBlurParameters {
  std::string operator_weights;
  std::string kernel_latent = "fixed";

  static void add_options(CLI::App& app, NonlinearBlurParameters& p) {
    add_value_option(
        app, "--kernel-latent", p.kernel_latent,
        "nonlinear-deblur: 'fixed' draws one kernel latent per image from the image's seed and keeps "
        "it for the measurement and every step; 'redrawn' draws a new one on every call of the "
        "operator, as the DPS reference does (its issue #7), only to reproduce its numbers",
        "MODE", "Task parameters")
        ->check(CLI::IsMember({"fixed", "redrawn"}));
    app.add_option(
           "--operator-weights", p.operator_weights,
           "nonlinear-deblur: bkse's blur network, GOPRO_wVAE.pth (docs/operators.md says where to get it)")
        ->type_name("FILE")
        ->group("Task files");
  }
};

/// The parameters of a task that has none.
struct NoParameters {
  static void add_options(CLI::App& /*app*/, NoParameters& /*p*/) {}
};

/// How a task's operator is made for one image, from that image's generator.
template <class Op>
using OperatorFactory = std::function<Op(at::Generator&)>;

/// One factory that ignores the generator: every image gets the same operator.
template <class Op>
OperatorFactory<Op> same_for_every_image(Op op) {
  return [op = std::move(op)](at::Generator& /*generator*/) { return op; };
}

/// The mask of an inpainting task: from --mask-file (the same for every image), or drawn per image.
template <class Policy>
OperatorFactory<InpaintingOperator> mask_factory(const MaskParameters& p, const Shape& image_shape,
                                                 Policy policy) {
  const int64_t height = image_shape[1], width = image_shape[2];
  if (!p.mask_file.empty()) {
    auto op = inpainting_operator_from_file(p.mask_file);
    if (op.mask().size(0) != height || op.mask().size(1) != width)
      throw UsageError(fmt::format("mask '{}' is {}x{} but the images are {}x{}", p.mask_file,
                                   op.mask().size(0), op.mask().size(1), height, width));
    return same_for_every_image(std::move(op));
  }
  return [policy, height, width](at::Generator& generator) {
    return InpaintingOperator(policy, height, width, generator);
  };
}

/// The kernel of a deblurring task: from --kernel-file (the same for every image), or made by `make_kernel`.
template <class Factory>
std::variant<OperatorFactory<BlurOperator<Custom>>, Factory> kernel_factory(const KernelParameters& p,
                                                                            Factory make_kernel) {
  if (!p.kernel_file.empty())
    return same_for_every_image(BlurOperator<Custom>(blur_kernel_from_file(p.kernel_file)));
  return make_kernel;
}

// ---------------------------------------------------------------------------------------------------------------
// The tasks. An entry names itself (`name`, `help`), gives the DPS step size it runs with unless --scale says
// otherwise (`default_scale`; the five demo tasks' values come from a sweep of 0.1 ... 10 at 100 steps and
// sigma = 0.05 on Fashion-MNIST, docs/cli.md; the others are untuned), its `Parameters`, and
// `factory(parameters, image_shape)`: the parameters checked against [C, H, W] images (UsageError
// otherwise), then the per-image operator factory (or a std::variant of factories when the parameters choose
// the operator's type).
// ---------------------------------------------------------------------------------------------------------------

struct BoxInpaintTask {
  static constexpr const char* name = "box-inpaint";
  static constexpr const char* help = "fill a missing square (--box-size, --box-margin, or --mask-file)";
  static constexpr double default_scale = 3.0;
  using Parameters = MaskParameters;
  static auto factory(const Parameters& p, const Shape& image_shape) {
    if (p.mask_file.empty() && p.box_size + 2 * p.box_margin >= std::min(image_shape[1], image_shape[2]))
      throw UsageError(
          fmt::format("--box-size {} with --box-margin {} leaves no room for the box in {}x{} images "
                      "(box size + 2 margin must be below the image size)",
                      p.box_size, p.box_margin, image_shape[1], image_shape[2]));
    return mask_factory(p, image_shape, BoxMask{}.size(p.box_size).margin(p.box_margin));
  }
};

struct RandomInpaintTask {
  static constexpr const char* name = "random-inpaint";
  static constexpr const char* help = "fill randomly dropped pixels (--drop-fraction, or --mask-file)";
  static constexpr double default_scale = 3.0;
  using Parameters = MaskParameters;
  static auto factory(const Parameters& p, const Shape& image_shape) {
    return mask_factory(p, image_shape, RandomPixelMask{}.fraction(p.drop_fraction));
  }
};

struct SuperResolutionTask {
  static constexpr const char* name = "sr";
  static constexpr const char* help = "super-resolution by --factor (bicubic antialiased downsampling)";
  static constexpr double default_scale = 3.0;
  using Parameters = FactorParameters;
  static auto factory(const Parameters& p, const Shape& image_shape) {
    if (image_shape[1] % p.factor != 0 || image_shape[2] % p.factor != 0)
      throw UsageError(fmt::format("--factor {} does not divide the image size {}x{}", p.factor,
                                   image_shape[1], image_shape[2]));
    return same_for_every_image(SuperResolutionOperator(p.factor));
  }
};

struct GaussianDeblurTask {
  static constexpr const char* name = "gaussian-deblur";
  static constexpr const char* help =
      "remove a Gaussian blur (--kernel-size, --kernel-sigma, or --kernel-file)";
  static constexpr double default_scale = 3.0;
  using Parameters = KernelParameters;
  static auto factory(const Parameters& p, const Shape& /*image_shape*/) {
    return kernel_factory(
        p,
        same_for_every_image(BlurOperator<Gaussian>(Gaussian{}.size(p.kernel_size).sigma(p.kernel_sigma))));
  }
};

struct MotionDeblurTask {
  static constexpr const char* name = "motion-deblur";
  static constexpr const char* help =
      "remove a random camera-shake blur (--kernel-size, --motion-intensity, or --kernel-file)";
  static constexpr double default_scale = 3.0;
  using Parameters = KernelParameters;
  static auto factory(const Parameters& p, const Shape& /*image_shape*/) {
    const auto policy = Motion{}.size(p.kernel_size).intensity(p.motion_intensity);
    return kernel_factory(p, OperatorFactory<BlurOperator<Motion>>([policy](at::Generator& generator) {
                            return BlurOperator<Motion>(policy, generator);
                          }));
  }
};

struct ColorizeTask {
  static constexpr const char* name = "colorize";
  static constexpr const char* help = "colour a gray image (RGB models only)";
  static constexpr double default_scale = 1.0;
  using Parameters = NoParameters;
  static auto factory(const Parameters& /*p*/, const Shape& image_shape) {
    if (image_shape[0] != 3)
      throw UsageError(
          fmt::format("colorize needs an RGB model; this model has {} channel(s)", image_shape[0]));
    return same_for_every_image(ColorizationOperator{});
  }
};

struct PhaseRetrievalTask {
  static constexpr const char* name = "phase-retrieval";
  static constexpr const char* help = "recover an image from its Fourier magnitude (--oversample)";
  static constexpr double default_scale = 1.0;
  using Parameters = OversampleParameters;
  static auto factory(const Parameters& p, const Shape& /*image_shape*/) {
    return same_for_every_image(PhaseRetrievalOperator(p.oversample));
  }
};

struct NonlinearDeblurTask {
  static constexpr const char* name = "nonlinear-deblur";
  static constexpr const char* help =
      "remove bkse's non-uniform blur, the DPS paper's nonlinear deblurring (--operator-weights "
      "GOPRO_wVAE.pth; RGB, height and width multiples of 128; --kernel-latent)";
  // The DPS reference's configs/nonlinear_deblur_config.yaml (scale 0.3, with sigma 0.05).
  static constexpr double default_scale = 0.3;
  using Parameters = NonlinearBlurParameters;
  static OperatorFactory<NonlinearBlurOperator> factory(const Parameters& p, const Shape& image_shape) {
    if (p.operator_weights.empty())
      throw UsageError(
          "nonlinear-deblur needs --operator-weights FILE, bkse's blur network GOPRO_wVAE.pth "
          "(docs/operators.md says where to get it)");
    const int64_t channels = image_shape[0], height = image_shape[1], width = image_shape[2];
    const int64_t stride = KernelWizardOptions::latent_stride;
    if (height % stride != 0 || width % stride != 0)
      throw UsageError(
          fmt::format("nonlinear-deblur: the blur network needs image height and width that are multiples of "
                      "{} (it halves "
                      "them seven times), but the images are {}x{}",
                      stride, height, width));
    // One file read per run; every image's operator shares the network.
    const auto network = load_kernel_wizard_as_saved(p.operator_weights);
    const auto options = network->options();
    if (channels != options.input_nc())
      throw UsageError(
          fmt::format("nonlinear-deblur: the blur network '{}' takes {}-channel images, but the "
                      "images have {} channel(s) (an RGB model is needed)",
                      p.operator_weights, options.input_nc(), channels));
    const NonlinearBlurOperator base(
        *network, torch::zeros({1, options.latent_channels(), height / stride, width / stride}));
    if (p.kernel_latent == "redrawn")
      return [base](at::Generator& generator) { return base.redrawing_latent_from(generator); };
    return [base, options, height, width](at::Generator& generator) {
      return base.with_kernel_latent(
          NonlinearBlurOperator::draw_kernel_latent(1, height, width, generator, options));
    };
  }
};

struct DenoiseTask {
  static constexpr const char* name = "denoise";
  static constexpr const char* help = "remove the measurement noise only (identity operator)";
  static constexpr double default_scale = 1.0;
  using Parameters = NoParameters;
  static auto factory(const Parameters& /*p*/, const Shape& /*image_shape*/) {
    return same_for_every_image(IdentityOperator{});
  }
};

/// Every task, in the order of the help text.
using Tasks = TypeList<BoxInpaintTask, RandomInpaintTask, SuperResolutionTask, GaussianDeblurTask,
                       MotionDeblurTask, ColorizeTask, PhaseRetrievalTask, NonlinearDeblurTask, DenoiseTask>;

// ---------------------------------------------------------------------------------------------------------------
// What the registry gives: the parameters of every task, the operator types, and a checked plan per task.
// ---------------------------------------------------------------------------------------------------------------

namespace detail {

template <class Factory>
struct factory_operators;
template <class Op>
struct factory_operators<OperatorFactory<Op>> {
  using type = TypeList<Op>;
};
template <class... Ops>
struct factory_operators<std::variant<OperatorFactory<Ops>...>> {
  using type = TypeList<Ops...>;
};

/// The operator types a task's factory can make.
template <class Task>
using task_operators = typename factory_operators<decltype(Task::factory(
    std::declval<const typename Task::Parameters&>(), std::declval<const Shape&>()))>::type;

template <class List>
struct per_image_of;
template <class... Ops>
struct per_image_of<TypeList<Ops...>> {
  using operators = std::variant<PerImageOperator<Ops>...>;
  using factories = std::variant<OperatorFactory<Ops>...>;
};

template <class... Tasks>
struct task_types {
  using parameters = Apply<std::tuple, UniqueTypes<typename Tasks::Parameters...>>;
  using operators = UniqueUnion<task_operators<Tasks>...>;
};
template <class... Tasks>
task_types<Tasks...> task_types_of(TypeList<Tasks...>);
template <class Registry>
using task_types_t = decltype(task_types_of(Registry{}));

}  // namespace detail

/// The parameters of every task of a registry, one struct per kind, each with its flags.
template <class Registry = Tasks>
using TaskParametersOf = typename detail::task_types_t<Registry>::parameters;
using TaskParameters = TaskParametersOf<Tasks>;

/// The operator of a batch: one of the registry's operator types, per image.
template <class Registry = Tasks>
using AnyOperatorOf =
    typename detail::per_image_of<typename detail::task_types_t<Registry>::operators>::operators;
using AnyOperator = AnyOperatorOf<Tasks>;

/// The noise models.
using AnyNoise = std::variant<GaussianLikelihood, PoissonLikelihood, NoNoise>;

/// The samplers.
using AnySampler = std::variant<DDPMSampler, DDIMSampler>;

/// The names of all tasks, in order.
template <class Registry = Tasks>
std::vector<std::string> task_names() {
  return entry_names(Registry{});
}

/// The DPS step size `task` runs with by default.
template <class Registry = Tasks>
double default_scale(const std::string& task) {
  double scale = 0.0;
  if (!with_entry(Registry{}, task, [&]<class Task>() { scale = Task::default_scale; }))
    throw UsageError(
        fmt::format("unknown task '{}'; tasks: {}", task, fmt::join(task_names<Registry>(), ", ")));
  return scale;
}

/// "box-inpaint: ..." per task, after `title`, for a --task help text.
template <class Registry = Tasks>
std::string tasks_help(const std::string& title) {
  std::string help = title;
  for_each_entry(Registry{}, [&]<class Task>() { help += fmt::format("\n{}: {}", Task::name, Task::help); });
  return help;
}

/// Declares the flags of every task's parameters.
template <class Registry = Tasks>
void add_task_parameter_options(CLI::App& app, TaskParametersOf<Registry>& parameters) {
  std::apply([&](auto&... p) { (std::decay_t<decltype(p)>::add_options(app, p), ...); }, parameters);
}

/// The random streams of one image: its operator (mask, motion kernel), its measurement noise, and the
/// sampling of the batch it starts.
enum class SeedStream : uint64_t { operator_draw = 0, measurement_noise = 1, sampling = 2 };

/// A seed for stream `stream` of image `index` from the run seed (splitmix64 finaliser), so that every image
/// has its own reproducible mask, kernel and noise whatever the batch size.
inline uint64_t image_seed(uint64_t seed, int64_t index, SeedStream stream) {
  uint64_t z =
      seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(index) * 4 + static_cast<uint64_t>(stream) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// One task of a run, its parameters checked once against the image shape (files read, sizes compared):
/// the operators of any batch of images follow from it.
template <class Registry = Tasks>
class BasicTaskPlan {
 public:
  BasicTaskPlan(std::string task, const TaskParametersOf<Registry>& parameters, const Shape& image_shape,
                uint64_t seed)
      : task_(std::move(task)), seed_(seed) {
    const bool found = with_entry(Registry{}, task_, [&]<class Task>() {
      default_scale_ = Task::default_scale;
      const auto factory = Task::factory(std::get<typename Task::Parameters>(parameters), image_shape);
      if constexpr (requires { factory.index(); }) {
        std::visit([&](const auto& f) { factory_ = f; }, factory);
      } else {
        factory_ = factory;
      }
    });
    if (!found)
      throw UsageError(
          fmt::format("unknown task '{}'; tasks: {}", task_, fmt::join(task_names<Registry>(), ", ")));
  }

  [[nodiscard]] const std::string& task() const noexcept { return task_; }
  /// The DPS step size this task runs with by default.
  [[nodiscard]] double default_scale() const noexcept { return default_scale_; }

  /// The operators of images first ... first + count - 1 of the run, each drawn from the image's own
  /// generator and applied to `repeats` rows.
  [[nodiscard]] AnyOperatorOf<Registry> batch(int64_t first, int64_t count, int64_t repeats) const {
    return std::visit(
        [&](const auto& factory) {
          using Op = decltype(factory(std::declval<at::Generator&>()));
          std::vector<Op> operators;
          operators.reserve(static_cast<size_t>(count));
          for (int64_t i = first; i < first + count; ++i) {
            auto generator = make_generator(image_seed(seed_, i, SeedStream::operator_draw));
            operators.push_back(factory(generator));
          }
          return AnyOperatorOf<Registry>(PerImageOperator<Op>(std::move(operators), repeats));
        },
        factory_);
  }

  /// Calls `f(std::type_identity<PerImageOperator<Op>>{})` with the type of this task's operators.
  template <class F>
  decltype(auto) visit_type(F&& f) const {
    return std::visit(
        [&](const auto& factory) -> decltype(auto) {
          using Op = decltype(factory(std::declval<at::Generator&>()));
          return f(std::type_identity<PerImageOperator<Op>>{});
        },
        factory_);
  }

  /// Whether the operators have a naive inverse (every task but phase retrieval).
  [[nodiscard]] bool has_naive_inverse() const {
    return visit_type([]<class Op>(std::type_identity<Op>) { return HasNaiveInverse<Op>; });
  }

 private:
  std::string task_;
  uint64_t seed_;
  double default_scale_ = 0.0;
  typename detail::per_image_of<typename detail::task_types_t<Registry>::operators>::factories factory_;
};

using TaskPlan = BasicTaskPlan<Tasks>;

/// The image a user has without a prior (zero-filled, bicubic-upsampled, the blurred image, the gray image);
/// undefined where the operator has none (phase retrieval).
inline torch::Tensor naive_inverse(const AnyOperator& op, const torch::Tensor& y) {
  return std::visit(
      [&](const auto& o) -> torch::Tensor {
        if constexpr (requires { o.naive_inverse(y); })
          return o.naive_inverse(y);
        else
          return {};
      },
      op);
}

/// A picture of the measurement for the grid: the naive inverse where there is one, else (phase retrieval)
/// the log Fourier magnitude scaled to [-1, 1] per image.
inline torch::Tensor measurement_picture(const AnyOperator& op, const torch::Tensor& y) {
  auto naive = naive_inverse(op, y);
  if (naive.defined()) return naive.clamp(-1.0, 1.0);
  auto magnitude = torch::log1p(y.abs());
  const auto flat = magnitude.reshape({y.size(0), -1});
  const auto low = std::get<0>(flat.min(1)).view({-1, 1, 1, 1});
  const auto high = std::get<0>(flat.max(1)).view({-1, 1, 1, 1});
  return (magnitude - low) / (high - low).clamp_min(1e-12) * 2.0 - 1.0;
}

/// The measurement y of one image as saved to a PNG: as is (clamped) where it is an image, which it is
/// wherever the operator has a naive inverse, and otherwise (phase retrieval's magnitudes) its picture.
inline torch::Tensor measurement_to_save(const AnyOperator& op, const torch::Tensor& y) {
  const bool is_image =
      std::visit([](const auto& o) { return HasNaiveInverse<std::decay_t<decltype(o)>>; }, op);
  return is_image ? y.clamp(-1.0, 1.0) : measurement_picture(op, y);
}

/// Applies the per-image operator and noise to clean images x [B, C, H, W] of run indices first ... first + B
/// - 1: y_i = noise(A_i x_i), the noise of image i drawn from its own generator.
inline torch::Tensor measure(const AnyOperator& op, const AnyNoise& noise, const torch::Tensor& x,
                             uint64_t seed, int64_t first) {
  torch::NoGradGuard no_grad;
  const auto clean = std::visit([&](const auto& o) { return o.forward(x); }, op);
  std::vector<torch::Tensor> noisy;
  for (int64_t i = 0; i < clean.size(0); ++i) {
    auto generator = make_generator(image_seed(seed, first + i, SeedStream::measurement_noise));
    noisy.push_back(
        std::visit([&](const auto& n) { return n.sample(clean.narrow(0, i, 1), generator); }, noise));
  }
  return torch::cat(noisy, 0);
}

/// Per restored image x_j [B * k, C, H, W] of measurement y_(j / k) [B, ...] made from `truth` [B, C, H, W]:
/// the part of the measurement it leaves unexplained, beyond the noise, relative to a blank (mid-gray)
/// image: (||y - A(x)||^2 - ||y - A(truth)||^2) / (||y - A(0)||^2 - ||y - A(truth)||^2). Near 0 for a good
/// restoration; 0.5 or more means it explains less than half of what the truth explains, which a step size
/// far too large or too small gives.
inline torch::Tensor unexplained_fraction(const AnyOperator& repeated, const torch::Tensor& y,
                                          const torch::Tensor& truth, const torch::Tensor& restored) {
  torch::NoGradGuard no_grad;
  const int64_t samples = restored.size(0) / y.size(0);
  const auto measurements = y.repeat_interleave(samples, 0);
  const auto energy = [&](const torch::Tensor& x) {
    const auto predicted = std::visit([&](const auto& o) { return o.forward(x); }, repeated);
    return (measurements - predicted).reshape({x.size(0), -1}).to(torch::kFloat64).square().sum(1);
  };
  const auto noise = energy(truth.repeat_interleave(samples, 0));
  return (energy(restored) - noise) / (energy(torch::zeros_like(restored)) - noise).clamp_min(1e-12);
}

/// What a task's operator shows of its random part for image `i`: the mask ("mask"), or the blur kernel
/// scaled to its maximum ("kernel"); an undefined picture when it has neither.
struct OperatorPicture {
  const char* kind = "";
  torch::Tensor image;
};

inline OperatorPicture operator_picture(const AnyOperator& op, size_t i) {
  return std::visit(
      [&](const auto& o) -> OperatorPicture {
        const auto& single = o.operators().at(i);
        if constexpr (requires { single.mask(); }) {
          return {"mask", (single.mask() * 2.0 - 1.0).unsqueeze(0)};
        } else if constexpr (requires { single.kernel(); }) {
          const auto& k = single.kernel();
          return {"kernel", (k / k.max().clamp_min(1e-30) * 2.0 - 1.0).unsqueeze(0)};
        } else {
          return {};
        }
      },
      op);
}

}  // namespace diffpost::cli
