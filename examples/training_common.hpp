// Pieces shared by the training examples (train_prior, train_latent_prior, train_classifier): parsing the
// command line (CLI11), the --device flag, the run flags of the diffusion trainers (TrainingRunFlags),
// reading a Fashion-MNIST split, counting parameters, wall-clock minutes, stopping on SIGINT / SIGTERM, the
// resumable training state written atomically, the loss curve image, sample grids, and the error reporting of
// main(). Private to the examples; not part of the diffpost library.
#pragma once

#include <diffpost/io/datasets.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/runtime/device.hpp>

#include <torch/torch.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

namespace diffpost::examples {

/// Parses the command line into the options declared on `app`: --help prints the help and exits with 0; a
/// bad or unknown flag prints CLI11's message and exits with its non-zero code.
inline void parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
}

/// CLI11 check of a finite number > 0 (learning rates), with a message that names the value.
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0.0;
        if (CLI::detail::lexical_cast(text, value) && std::isfinite(value) && value > 0.0) return {};
        return "must be a finite number > 0, got '" + text + "'";
      },
      "> 0");
}

/// Declares `--device` (cpu, cuda or cuda:N; checked when the run starts with `diffpost::usable_device`).
inline CLI::Option* add_device_option(CLI::App& app, std::string& device) {
  return app
      .add_option("--device", device,
                  "where to train: cpu, cuda or cuda:N (the data is moved there once; random draws come "
                  "from the seeded CPU generator, so a seed gives the same draws on every device)")
      ->capture_default_str();
}

/// The flags both diffusion training programs (train_prior, train_latent_prior) share: when a run stops
/// and saves, its seed, threads and device, and the sample grid it may write. One declaration
/// (add_training_run_flags) keeps their names, defaults and checks the same in both programs; what a
/// program chooses itself (sample_steps' default, the help that depends on its model) it passes in.
struct TrainingRunFlags {
  int64_t max_steps = 0;     ///< stop after this many steps in total (0 = no limit)
  double max_minutes = 0.0;  ///< stop after this many minutes of this invocation (0 = no limit)
  int64_t checkpoint_every = 250;
  int64_t seed = 0;
  int threads = 2;
  std::string device = "cpu";
  std::filesystem::path sample_grid{};  ///< empty: no grid
  int64_t samples = 64;
  std::string sample_steps;  ///< respacing of the samples; each program sets its own default
  int64_t grid_scale = 2;
};

/// The help of the TrainingRunFlags that differs between the programs, and the help groups they are listed
/// in ("Options" is CLI11's default group).
struct TrainingRunHelp {
  std::string max_steps;                   ///< --max-steps: what a step is
  std::string sample_grid;                 ///< --sample-grid: what the grid shows and when it is written
  std::string sample_steps;                ///< --sample-steps: the respacing syntax the sampler accepts
  std::string output_group = "Options";    ///< --sample-grid, --samples, --sample-steps, --grid-scale
  std::string schedule_group = "Options";  ///< --max-steps, --max-minutes, --checkpoint-every
  std::string run_group = "Options";       ///< --seed, --threads, --device
};

/// Declares the TrainingRunFlags on `app`, bound to `flags`, whose current values are the defaults that
/// --help shows. They are declared in one block, so --help lists them together within their groups.
inline void add_training_run_flags(CLI::App& app, TrainingRunFlags& flags, const TrainingRunHelp& help) {
  const auto positive = CLI::PositiveNumber;
  app.add_option("--sample-grid", flags.sample_grid, help.sample_grid)
      ->type_name("PNG")
      ->group(help.output_group);
  app.add_option("--samples", flags.samples, "samples in the grid")
      ->check(positive)
      ->capture_default_str()
      ->group(help.output_group);
  app.add_option("--sample-steps", flags.sample_steps, help.sample_steps)
      ->type_name("SPEC")
      ->capture_default_str()
      ->group(help.output_group);
  app.add_option("--grid-scale", flags.grid_scale,
                 "enlarge each grid cell N times (nearest neighbour) for viewing")
      ->check(positive)
      ->capture_default_str()
      ->group(help.output_group);
  app.add_option("--max-steps", flags.max_steps, help.max_steps)
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(help.schedule_group);
  app.add_option("--max-minutes", flags.max_minutes, "stop after M minutes of this invocation (0 = no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(help.schedule_group);
  app.add_option("--checkpoint-every", flags.checkpoint_every, "save the training state every N steps")
      ->check(positive)
      ->capture_default_str()
      ->group(help.schedule_group);
  app.add_option("--seed", flags.seed, "random seed")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(help.run_group);
  app.add_option("--threads", flags.threads, "intra-op threads")
      ->check(positive)
      ->capture_default_str()
      ->group(help.run_group);
  add_device_option(app, flags.device)->group(help.run_group);
}

/// One split of Fashion-MNIST: images [N, 1, 28, 28] in [-1, 1] and their int64 labels [N].
struct LabelledImages {
  torch::Tensor images;
  torch::Tensor labels;

  /// Both tensors on `device` (one copy each).
  LabelledImages to(const torch::Device& device) const { return {images.to(device), labels.to(device)}; }
};

/// Reads the split `split` ("train" or "t10k", the prefixes of the IDX file names) of Fashion-MNIST from the
/// gzip-compressed IDX files in `folder` (e.g. diffpost::debian_fashion_mnist_dir()). Throws c10::Error when
/// a file cannot be read (see diffpost::read_idx) or when the image and label counts differ.
inline LabelledImages read_fashion_mnist(const std::filesystem::path& folder, const std::string& split) {
  LabelledImages data{diffpost::read_idx_images(folder / (split + "-images-idx3-ubyte.gz")),
                      diffpost::read_idx_labels(folder / (split + "-labels-idx1-ubyte.gz"))};
  TORCH_CHECK(data.images.size(0) == data.labels.size(0), "read_fashion_mnist: ", data.images.size(0),
              " images but ", data.labels.size(0), " labels in the '", split, "' split of ", folder.string());
  return data;
}

/// Number of scalar parameters of `module` and its submodules, as printed in the training logs.
inline int64_t count_parameters(const torch::nn::Module& module) {
  int64_t parameters = 0;
  for (const auto& p : module.parameters()) parameters += p.numel();
  return parameters;
}

/// Wall-clock minutes since `start` (steady clock), for the time limits and reports of a training run.
inline double minutes_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
}

/// Set by SIGINT / SIGTERM once `stop_on_signals()` has run: training loops poll it, save their state and
/// export before exiting.
inline std::atomic<bool> stop_requested{false};

inline void request_stop(int) {
  stop_requested.store(true);
}

/// From here on SIGINT / SIGTERM end a run cleanly (see stop_requested) instead of killing it.
inline void stop_on_signals() {
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
}

/// What makes a run resumable besides the modules and the optimizer: the step, the training time, every
/// step's mean loss (for the curve), and named numbers a stage fixes once (e.g. a latent scale factor).
struct TrainingState {
  int64_t step = 0;
  double trained_seconds = 0.0;
  std::vector<float> losses;
  std::map<std::string, double> values;
};

/// The modules a training state holds, by the name they have in the archive (e.g. {"model", &unet}).
using NamedModules = std::vector<std::pair<std::string, torch::nn::Module*>>;

/// Writes `modules`, `optimizer` and `state` to one torch archive at `path`, beside the target and renamed,
/// so that an interruption never leaves a half-written state.
inline void save_training_state(const std::filesystem::path& path, const char* program,
                                const NamedModules& modules, torch::optim::Optimizer& optimizer,
                                const TrainingState& state) {
  torch::serialize::OutputArchive archive;
  for (const auto& [name, module] : modules) {
    torch::serialize::OutputArchive module_archive;
    module->save(module_archive);
    archive.write(name, module_archive);
  }
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("step", torch::tensor(state.step));
  archive.write("trained_seconds", torch::tensor(state.trained_seconds, torch::kFloat64));
  archive.write("losses", torch::tensor(state.losses.empty() ? std::vector<float>{} : state.losses));
  for (const auto& [name, value] : state.values)
    archive.write("value." + name, torch::tensor(value, torch::kFloat64));
  diffpost::detail::write_file_atomically(path, true, program, "",
                                          [&](std::ostream& out) { archive.save_to(out); });
}

/// Reads a state written by save_training_state onto `device` (whatever device wrote it); the optimizer's
/// state is skipped when `optimizer` is null (exporting).
inline void load_training_state(const std::filesystem::path& path, const NamedModules& modules,
                                torch::optim::Optimizer* optimizer, TrainingState& state,
                                const torch::Device& device) {
  torch::serialize::InputArchive archive;
  archive.load_from(path.string(), device);
  for (const auto& [name, module] : modules) {
    torch::serialize::InputArchive module_archive;
    archive.read(name, module_archive);
    module->load(module_archive);
  }
  if (optimizer != nullptr) {
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer->load(optimizer_archive);
  }
  torch::Tensor step, seconds, losses;
  archive.read("step", step);
  archive.read("trained_seconds", seconds);
  archive.read("losses", losses);
  state.step = step.item<int64_t>();
  state.trained_seconds = seconds.item<double>();
  losses = losses.to(torch::kCPU).contiguous();
  state.losses.assign(losses.data_ptr<float>(), losses.data_ptr<float>() + losses.numel());
  state.values.clear();
  const std::string value_prefix = "value.";
  for (const auto& key : archive.keys()) {
    if (key.rfind(value_prefix, 0) != 0) continue;
    torch::Tensor value;
    archive.read(key, value);
    state.values[key.substr(value_prefix.size())] = value.item<double>();
  }
}

/// Draws a line from (x0, y0) to (x1, y1) into a [3, H, W] canvas with colour `rgb` (values in [-1, 1]).
inline void draw_line(torch::Tensor& canvas, double x0, double y0, double x1, double y1,
                      const std::vector<float>& rgb) {
  auto pixels = canvas.accessor<float, 3>();
  const int64_t h = canvas.size(1), w = canvas.size(2);
  const int steps = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
  for (int k = 0; k <= steps; ++k) {
    const double s = static_cast<double>(k) / steps;
    const auto x = static_cast<int64_t>(std::lround(x0 + s * (x1 - x0)));
    const auto y = static_cast<int64_t>(std::lround(y0 + s * (y1 - y0)));
    if (x < 0 || y < 0 || x >= w || y >= h) continue;
    for (int c = 0; c < 3; ++c) pixels[c][y][x] = rgb[c];
  }
}

/// Renders the loss curve as an image: log10(loss) against the step, the per-step losses in light grey, a
/// moving average over `window` steps in blue, horizontal grid lines at 1, 2, 5 x 10^k, vertical ones every
/// 10% of the steps. No text: the axis ranges are printed by the program and belong in the caption.
inline torch::Tensor render_loss_curve(const std::vector<float>& losses, int64_t window, double& y_min,
                                       double& y_max) {
  const int64_t width = 640, height = 360, margin = 20;
  auto canvas = torch::ones({3, height, width});
  const auto n = static_cast<int64_t>(losses.size());
  std::vector<double> smooth(losses.size());
  double running = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    running += losses[i];
    if (i >= window) running -= losses[i - window];
    smooth[i] = running / static_cast<double>(std::min(i + 1, window));
  }
  y_min = 1e30;
  y_max = -1e30;
  for (int64_t i = std::min<int64_t>(n - 1, 10); i < n; ++i) {  // skip the first steps' huge losses
    y_min = std::min(y_min, static_cast<double>(losses[i]));
    y_max = std::max(y_max, smooth[i] * 2.0);
  }
  y_min = std::max(y_min, 1e-4);
  if (!(y_max > y_min)) y_max = y_min * 10;
  const double ly0 = std::log10(y_min), ly1 = std::log10(y_max);
  auto to_x = [&](double i) { return margin + (width - 2 * margin) * i / std::max<double>(n - 1, 1); };
  auto to_y = [&](double v) {
    const double lv = std::log10(std::max(v, 1e-12));
    return height - margin - (height - 2 * margin) * (lv - ly0) / (ly1 - ly0);
  };
  const std::vector<float> grid{0.7f, 0.7f, 0.7f}, raw{0.5f, 0.5f, 0.5f}, blue{-1.0f, -0.4f, 0.6f},
      black{-1.0f, -1.0f, -1.0f};
  for (int e = static_cast<int>(std::floor(ly0)); e <= static_cast<int>(std::ceil(ly1)); ++e) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, e);
      if (v < y_min || v > y_max) continue;
      draw_line(canvas, margin, to_y(v), width - margin, to_y(v), grid);
    }
  }
  for (int k = 0; k <= 10; ++k) {
    const double x = to_x(k * (n - 1) / 10.0);
    draw_line(canvas, x, margin, x, height - margin, grid);
  }
  for (int64_t i = 1; i < n; ++i)
    draw_line(canvas, to_x(i - 1), to_y(losses[i - 1]), to_x(i), to_y(losses[i]), raw);
  for (int64_t i = 1; i < n; ++i)
    draw_line(canvas, to_x(i - 1), to_y(smooth[i - 1]), to_x(i), to_y(smooth[i]), blue);
  draw_line(canvas, margin, height - margin, width - margin, height - margin, black);
  draw_line(canvas, margin, margin, margin, height - margin, black);
  return canvas;
}

/// Writes the loss curve of `losses` (render_loss_curve) to `path` and prints its axis ranges.
inline void write_loss_curve(const std::vector<float>& losses, const std::filesystem::path& path) {
  if (losses.size() < 2) return;
  double y_min = 0, y_max = 0;
  const int64_t window = std::max<int64_t>(10, static_cast<int64_t>(losses.size()) / 50);
  auto canvas = render_loss_curve(losses, window, y_min, y_max);
  diffpost::save_image(canvas * 2.0 - 1.0, path.string(), true);
  fmt::print(stderr,
             "loss curve: steps 0..{}, log y from {:.4g} to {:.4g}, moving average over {} steps -> {}\n",
             losses.size() - 1, y_min, y_max, window, path.string());
}

/// Writes images [N, C, H, W] in [-1, 1] as a square-ish grid PNG, each enlarged `scale` times (nearest).
inline void save_sample_grid(torch::Tensor images, int64_t scale, const std::filesystem::path& path) {
  images = images.detach().to(torch::kCPU);
  if (scale > 1) images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3);
  const int64_t count = images.size(0);
  const auto columns = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(count))));
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t start = 0; start < count; start += columns)
    rows.push_back({images.narrow(0, start, std::min(columns, count - start))});
  diffpost::save_grid(rows, path.string(), diffpost::GridOptions{}.overwrite(true));
}

/// The body of main() of a training program: returns `run()`, or prints "PROGRAM: message" (without a
/// LibTorch backtrace) to stderr and returns 1 when it throws.
template <class Run>
int run_reporting_errors(const char* program, Run&& run) {
  try {
    return run();
  } catch (const c10::Error& e) {
    std::cerr << program << ": " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
  }
  return 1;
}

}  // namespace diffpost::examples
