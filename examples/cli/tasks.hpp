// The restoration tasks of the diffpost tool: run-time task names mapped to the compile-time operator and
// noise types of the library, with per-task defaults chosen for 28 x 28 Fashion-MNIST images.
#pragma once

#include <diffpost/io/operator_files.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include <diffpost/samplers.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "options.hpp"

namespace diffpost::cli {

/// A task the tool knows: its name, what it does, and the DPS step size (`scale`) used unless --scale says
/// otherwise.
struct TaskInfo {
  std::string name;
  std::string description;
  double default_scale;
};

/// All tasks, in the order of the help text. The step sizes of the five demo tasks were chosen by a sweep
/// (0.1 ... 10) at 100 steps and sigma = 0.05 on Fashion-MNIST (docs/cli.md); the others are untuned.
inline const std::vector<TaskInfo>& all_tasks() {
  static const std::vector<TaskInfo> tasks{
      {"box-inpaint", "fill a missing square (--box-size, --box-margin, or --mask-file)", 3.0},
      {"random-inpaint", "fill randomly dropped pixels (--drop-fraction, or --mask-file)", 3.0},
      {"sr", "super-resolution by --factor (bicubic antialiased downsampling)", 3.0},
      {"gaussian-deblur", "remove a Gaussian blur (--kernel-size, --kernel-sigma, or --kernel-file)", 3.0},
      {"motion-deblur",
       "remove a random camera-shake blur (--kernel-size, --motion-intensity, or --kernel-file)", 3.0},
      {"colorize", "colour a gray image (RGB models only)", 1.0},
      {"phase-retrieval", "recover an image from its Fourier magnitude (--oversample)", 1.0},
      {"denoise", "remove the measurement noise only (identity operator)", 1.0},
  };
  return tasks;
}

inline const TaskInfo& find_task(const std::string& name) {
  for (const auto& task : all_tasks())
    if (task.name == name) return task;
  std::vector<std::string> names;
  for (const auto& task : all_tasks()) names.push_back(task.name);
  throw UsageError(fmt::format("unknown task '{}'; tasks: {}", name, fmt::join(names, ", ")));
}

/// The task parameters given on the command line (shared by all tasks of one run).
struct TaskParameters {
  int64_t box_size = 14;
  int64_t box_margin = 4;
  double drop_fraction = 0.7;
  int64_t factor = 2;
  int64_t kernel_size = 9;
  double kernel_sigma = 1.5;
  double motion_intensity = 0.5;
  double oversample = 2.0;
  std::string kernel_file;
  std::string mask_file;
};

/// Applies `f(parts[i], rows of image i)` to each image's `repeats` rows of `batch` and concatenates the
/// results; the batch must hold parts.size() x repeats rows. `caller` names the type in the error.
template <class Part, class F>
torch::Tensor apply_per_image(const std::vector<Part>& parts, int64_t repeats, const torch::Tensor& batch,
                              F&& f, const char* caller) {
  const auto expected = static_cast<int64_t>(parts.size()) * repeats;
  TORCH_CHECK(batch.size(0) == expected, caller, ": batch of ", batch.size(0), " rows but ", parts.size(),
              " images x ", repeats, " rows each");
  std::vector<torch::Tensor> results;
  for (size_t i = 0; i < parts.size(); ++i)
    results.push_back(f(parts[i], batch.narrow(0, static_cast<int64_t>(i) * repeats, repeats)));
  return torch::cat(results, 0);
}

/// The SVD of a PerImageOperator: each image's operator's own SVD applied to that image's rows, so that
/// methods working in the spectral domain (DDRM, and the exact data steps of DiffPIR, DDNM and PiGDM) see
/// every image's own mask or kernel.
template <class SVD>
class PerImageSVD {
 public:
  PerImageSVD(std::vector<SVD> parts, int64_t repeats) : parts_(std::move(parts)), repeats_(repeats) {
    std::vector<torch::Tensor> values;
    for (const auto& part : parts_) {
      auto s = part.singular_values();
      std::vector<int64_t> shape(4 - static_cast<size_t>(s.dim()), 1);
      shape.insert(shape.end(), s.sizes().begin(), s.sizes().end());
      s = s.reshape(shape);
      values.push_back(s.expand({repeats_, s.size(1), s.size(2), s.size(3)}));
    }
    singular_values_ = torch::cat(values, 0);
  }

  [[nodiscard]] const torch::Tensor& singular_values() const noexcept { return singular_values_; }
  [[nodiscard]] torch::Tensor v_transpose(const torch::Tensor& x) const {
    return apply(x, [](const SVD& svd, const torch::Tensor& part) { return svd.v_transpose(part); });
  }
  [[nodiscard]] torch::Tensor v(const torch::Tensor& c) const {
    return apply(c, [](const SVD& svd, const torch::Tensor& part) { return svd.v(part); });
  }
  [[nodiscard]] torch::Tensor u_transpose(const torch::Tensor& y) const {
    return apply(y, [](const SVD& svd, const torch::Tensor& part) { return svd.u_transpose(part); });
  }
  [[nodiscard]] torch::Tensor u(const torch::Tensor& c) const {
    return apply(c, [](const SVD& svd, const torch::Tensor& part) { return svd.u(part); });
  }

 private:
  template <class F>
  torch::Tensor apply(const torch::Tensor& batch, F&& f) const {
    return apply_per_image(parts_, repeats_, batch, std::forward<F>(f), "PerImageSVD");
  }

  std::vector<SVD> parts_;
  int64_t repeats_;
  torch::Tensor singular_values_;
};

/// A different operator for every image of a batch (each image gets its own mask or motion kernel, drawn
/// from a generator seeded by the image's index, so results do not depend on how images are batched), each
/// applied to `repeats` consecutive rows (the posterior samples of one measurement, as DPS lays them out).
/// Satisfies ForwardOperator, and has the naive inverse, adjoint, pseudo-inverse and SVD that the wrapped
/// operator has (so it is a LinearOperator, PseudoInvertibleOperator or DecomposableOperator when Op is one).
template <ForwardOperator Op>
class PerImageOperator {
 public:
  PerImageOperator(std::vector<Op> operators, int64_t repeats)
      : operators_(std::move(operators)), repeats_(repeats) {}

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    return apply(x, [](const Op& op, const torch::Tensor& part) { return op.forward(part); });
  }

  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const requires HasNaiveInverse<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& part) { return op.naive_inverse(part); });
  }

  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const requires HasAdjoint<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& part) { return op.adjoint(part); });
  }

  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const requires HasPseudoInverse<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& part) { return op.pseudo_inverse(part); });
  }

  /// Each image's SVD, for image batches of `image_shape` [rows, C, H, W].
  [[nodiscard]] auto svd(const Shape& image_shape, const torch::TensorOptions& options) const requires
      HasSingularValueDecomposition<Op> {
    Shape part_shape = image_shape;
    part_shape[0] = repeats_;
    using SVD = decltype(operators_.front().svd(part_shape, options));
    std::vector<SVD> parts;
    for (const auto& op : operators_) parts.push_back(op.svd(part_shape, options));
    return PerImageSVD<SVD>(std::move(parts), repeats_);
  }

  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return operators_.front().measurement_shape(image_shape);
  }

  [[nodiscard]] const std::vector<Op>& operators() const { return operators_; }

  /// The same operators with each applied to `repeats` rows.
  [[nodiscard]] PerImageOperator repeated(int64_t repeats) const { return {operators_, repeats}; }

 private:
  template <class F>
  torch::Tensor apply(const torch::Tensor& batch, F&& f) const {
    return apply_per_image(operators_, repeats_, batch, std::forward<F>(f), "PerImageOperator");
  }

  std::vector<Op> operators_;
  int64_t repeats_;
};

/// The operator of every task, as a closed set of compile-time types.
using AnyOperator =
    std::variant<PerImageOperator<InpaintingOperator>, PerImageOperator<SuperResolutionOperator>,
                 PerImageOperator<BlurOperator<Gaussian>>, PerImageOperator<BlurOperator<Motion>>,
                 PerImageOperator<BlurOperator<Custom>>, PerImageOperator<ColorizationOperator>,
                 PerImageOperator<PhaseRetrievalOperator>, PerImageOperator<IdentityOperator>>;

/// The noise models.
using AnyNoise = std::variant<GaussianLikelihood, PoissonLikelihood, NoNoise>;

/// The samplers.
using AnySampler = std::variant<DDPMSampler, DDIMSampler>;

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

/// Operators for images `first ... first + count - 1` of a run, each applied to `repeats` rows.
inline AnyOperator make_operator(const std::string& task, const TaskParameters& p, const Shape& image_shape,
                                 uint64_t seed, int64_t first, int64_t count, int64_t repeats) {
  const int64_t height = image_shape[1], width = image_shape[2];
  auto per_image = [&](auto make) {
    using Op = decltype(make(std::declval<at::Generator&>()));
    std::vector<Op> operators;
    for (int64_t i = first; i < first + count; ++i) {
      auto generator = make_generator(image_seed(seed, i, SeedStream::operator_draw));
      operators.push_back(make(generator));
    }
    return AnyOperator(PerImageOperator<Op>(std::move(operators), repeats));
  };
  if (task == "box-inpaint" || task == "random-inpaint") {
    if (!p.mask_file.empty()) {
      auto op = inpainting_operator_from_file(p.mask_file);
      if (op.mask().size(0) != height || op.mask().size(1) != width)
        throw UsageError(fmt::format("mask '{}' is {}x{} but the images are {}x{}", p.mask_file,
                                     op.mask().size(0), op.mask().size(1), height, width));
      return per_image([&](at::Generator&) { return op; });
    }
    if (task == "box-inpaint") {
      const auto policy = BoxMask{}.size(p.box_size).margin(p.box_margin);
      return per_image([&](at::Generator& g) { return InpaintingOperator(policy, height, width, g); });
    }
    const auto policy = RandomPixelMask{}.fraction(p.drop_fraction);
    return per_image([&](at::Generator& g) { return InpaintingOperator(policy, height, width, g); });
  }
  if (task == "sr") {
    if (height % p.factor != 0 || width % p.factor != 0)
      throw UsageError(
          fmt::format("--factor {} does not divide the image size {}x{}", p.factor, height, width));
    return per_image([&](at::Generator&) { return SuperResolutionOperator(p.factor); });
  }
  if (task == "gaussian-deblur" || task == "motion-deblur") {
    if (!p.kernel_file.empty()) {
      auto kernel = blur_kernel_from_file(p.kernel_file);
      return per_image([&](at::Generator&) { return BlurOperator<Custom>(kernel); });
    }
    if (task == "gaussian-deblur") {
      const auto policy = Gaussian{}.size(p.kernel_size).sigma(p.kernel_sigma);
      return per_image([&](at::Generator&) { return BlurOperator<Gaussian>(policy); });
    }
    const auto policy = Motion{}.size(p.kernel_size).intensity(p.motion_intensity);
    return per_image([&](at::Generator& g) { return BlurOperator<Motion>(policy, g); });
  }
  if (task == "colorize") {
    if (image_shape[0] != 3)
      throw UsageError(
          fmt::format("colorize needs an RGB model; this model has {} channel(s)", image_shape[0]));
    return per_image([&](at::Generator&) { return ColorizationOperator{}; });
  }
  if (task == "phase-retrieval")
    return per_image([&](at::Generator&) { return PhaseRetrievalOperator(p.oversample); });
  if (task == "denoise") return per_image([&](at::Generator&) { return IdentityOperator{}; });
  find_task(task);  // throws for unknown names
  throw UsageError("task '" + task + "' has no operator");
}

/// The image a user has without a prior (zero-filled, bicubic-upsampled, the blurred image, the gray image);
/// undefined for phase retrieval, which has none.
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

/// A picture of the operator's random part for image `i` (the mask, or the blur kernel scaled to its
/// maximum), or undefined when the task has none.
inline torch::Tensor operator_picture(const AnyOperator& op, size_t i) {
  return std::visit(
      [&](const auto& o) -> torch::Tensor {
        const auto& single = o.operators().at(i);
        if constexpr (requires { single.mask(); }) {
          return (single.mask() * 2.0 - 1.0).unsqueeze(0);
        } else if constexpr (requires { single.kernel(); }) {
          const auto& k = single.kernel();
          return (k / k.max().clamp_min(1e-30) * 2.0 - 1.0).unsqueeze(0);
        } else {
          return {};
        }
      },
      op);
}

}  // namespace diffpost::cli
