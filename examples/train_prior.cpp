// train_prior: trains an ADM UNet diffusion prior (the architecture of the DPS priors) on Fashion-MNIST or
// on a folder of same-size images, on the CPU or a GPU (--device), and exports the averaged weights in the
// reference checkpoint format with a model_config.yaml-style configuration, ready for `diffpost restore`.
//
//   train_prior --out-dir runs/fmnist --max-minutes 60     # train (resumes if runs/fmnist has a state)
//   train_prior --out-dir runs/fmnist --device cuda        # the same on the first GPU
//   train_prior --out-dir runs/fmnist --export-only --export prior   # write prior.pt and prior.yaml now
//   train_prior ... --export-safetensors                               # prior.safetensors instead of
//   prior.pt
//
// Objective: DDPM (Ho et al. 2020) on the linear 1000-step schedule, uniform t, with the learned
// (`learned_range`) variance trained by the hybrid loss of improved DDPM (Nichol & Dhariwal 2021), or
// L_simple alone with `--fixed-variance`. Adam, an exponential moving average of the weights, and a training
// state in the output folder written atomically every `--checkpoint-every` steps and on SIGINT / SIGTERM.
// Run with --help for every flag.
#include <diffpost/detail/random.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/io/safetensors.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/random.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>
#include <diffpost/samplers/ddpm.hpp>
#include <diffpost/schedule.hpp>
#include <diffpost/training/ema.hpp>
#include <diffpost/training/losses.hpp>

#include "training_common.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <fmt/ranges.h>

namespace fs = std::filesystem;

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) {
  stop_requested.store(true);
}

struct Flags {
  std::string data = "fashion-mnist";
  fs::path out_dir = "train_prior_run";
  std::string export_name = "prior";
  bool export_only = false;
  bool export_safetensors = false;
  int64_t batch_size = 64;
  double lr = 2e-4;
  double grad_clip = 1.0;
  double ema_decay = 0.999;
  int64_t max_steps = 0;
  double max_minutes = 0.0;
  int threads = 2;
  std::string device = "cpu";
  int64_t checkpoint_every = 250;
  int64_t seed = 0;
  bool flip = true;
  bool fixed_variance = false;
  int64_t time_batches = 0;
  fs::path sample_grid;
  int64_t samples = 64;
  std::string sample_steps = "250";
  int64_t grid_scale = 2;
  // Architecture (the reference create_model arguments).
  int64_t num_channels = 32;
  int64_t num_res_blocks = 1;
  std::vector<int64_t> channel_mult = {1, 2, 2};
  std::vector<int64_t> attention_resolutions = {7};
  int64_t num_head_channels = 32;
  double dropout = 0.0;
};

Flags parse_flags(int argc, char** argv) {
  Flags f;
  CLI::App app("train an ADM UNet diffusion prior on the CPU", "train_prior");
  const auto positive = CLI::PositiveNumber;
  app.add_option(
         "--data", f.data,
         "fashion-mnist (the train split, 60k images, Debian dataset-fashion-mnist; the test split is "
         "never read) or a folder of same-size images")
      ->type_name("fashion-mnist|FOLDER")
      ->capture_default_str()
      ->group("Data");
  app.add_option("--out-dir", f.out_dir, "training state, log curve and exports")
      ->capture_default_str()
      ->group("Output");
  app.add_option(
         "--export", f.export_name,
         "export DIR/NAME.pt (EMA weights, torch.save format) and DIR/NAME.yaml; done at the end of training")
      ->type_name("NAME")
      ->capture_default_str()
      ->group("Output");
  app.add_flag("--export-only", f.export_only, "export from the saved state without training")
      ->group("Output");
  app.add_flag(
         "--export-safetensors", f.export_safetensors,
         "export the weights as DIR/NAME.safetensors (safetensors' format, no pickle) instead of DIR/NAME.pt")
      ->group("Output");
  app.add_option(
         "--sample-grid", f.sample_grid,
         "after exporting, reload the exported files and write a grid of unconditional samples (DDPM, "
         "learned variance) to this PNG")
      ->type_name("PNG")
      ->group("Output");
  app.add_option("--samples", f.samples, "samples in the grid")
      ->check(positive)
      ->capture_default_str()
      ->group("Output");
  app.add_option("--sample-steps", f.sample_steps,
                 "respacing of the samples, as timestep_respacing (100, ddim50)")
      ->type_name("SPEC")
      ->capture_default_str()
      ->group("Output");
  app.add_option("--grid-scale", f.grid_scale,
                 "enlarge each grid cell N times (nearest neighbour) for viewing")
      ->check(positive)
      ->capture_default_str()
      ->group("Output");
  app.add_option("--max-steps", f.max_steps, "stop after N optimizer steps in total (0 = no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Schedule of the run");
  app.add_option("--max-minutes", f.max_minutes, "stop after M minutes of this invocation (0 = no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Schedule of the run");
  app.add_option("--checkpoint-every", f.checkpoint_every, "save the training state every N steps")
      ->check(positive)
      ->capture_default_str()
      ->group("Schedule of the run");
  app.add_option("--time-batches", f.time_batches,
                 "time N training steps, print seconds per step and exit (no state written)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Schedule of the run");
  app.add_option("--batch-size", f.batch_size, "images per step")
      ->check(positive)
      ->capture_default_str()
      ->group("Optimisation");
  app.add_option("--lr", f.lr, "Adam learning rate")
      ->check(diffpost::examples::positive_number())
      ->capture_default_str()
      ->group("Optimisation");
  app.add_option("--grad-clip", f.grad_clip, "global gradient norm clip (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Optimisation");
  app.add_option("--ema-decay", f.ema_decay, "EMA decay, with warm-up min(X, (1+s)/(10+s))")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->group("Optimisation");
  app.add_option("--seed", f.seed, "random seed")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Optimisation");
  app.add_flag_callback(
         "--no-flip", [&f] { f.flip = false; }, "no random horizontal flips")
      ->group("Optimisation");
  app.add_flag("--fixed-variance", f.fixed_variance,
               "L_simple with a fixed-variance (eps-only) model instead of the hybrid loss")
      ->group("Optimisation");
  app.add_option("--threads", f.threads, "intra-op threads")
      ->check(positive)
      ->capture_default_str()
      ->group("Optimisation");
  diffpost::examples::add_device_option(app, f.device)->group("Optimisation");
  const char* architecture =
      "Architecture (guided-diffusion create_model arguments; always learn_sigma unless "
      "--fixed-variance, use_scale_shift_norm, resblock_updown)";
  app.add_option("--num-channels", f.num_channels)
      ->check(positive)
      ->capture_default_str()
      ->group(architecture);
  app.add_option("--num-res-blocks", f.num_res_blocks)
      ->check(positive)
      ->capture_default_str()
      ->group(architecture);
  app.add_option("--channel-mult", f.channel_mult, "comma-separated")
      ->delimiter(',')
      ->check(positive)
      ->capture_default_str()
      ->group(architecture);
  app.add_option("--attention-resolutions", f.attention_resolutions, "comma-separated")
      ->delimiter(',')
      ->check(positive)
      ->capture_default_str()
      ->group(architecture);
  app.add_option("--num-head-channels", f.num_head_channels)
      ->check(positive)
      ->capture_default_str()
      ->group(architecture);
  app.add_option("--dropout", f.dropout)
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->group(architecture);
  diffpost::examples::parse_command_line(app, argc, argv);
  return f;
}

/// Training images [N, C, H, W] in [-1, 1].
torch::Tensor load_training_images(const std::string& data) {
  if (data == "fashion-mnist")
    return diffpost::read_idx_images(diffpost::debian_fashion_mnist_dir() / "train-images-idx3-ubyte.gz");
  return diffpost::load_image_folder(data);
}

/// Everything that makes a run resumable, saved in one torch archive.
struct TrainState {
  int64_t step = 0;
  double trained_seconds = 0.0;
  std::vector<float> losses;  // mean loss of every step, for the curve
};

void save_state(const fs::path& path, diffpost::AdmUNet& model, diffpost::AdmUNet& ema,
                torch::optim::Adam& optimizer, const TrainState& state) {
  torch::serialize::OutputArchive archive;
  torch::serialize::OutputArchive model_archive, ema_archive, optimizer_archive;
  model->save(model_archive);
  ema->save(ema_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("ema", ema_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("step", torch::tensor(state.step));
  archive.write("trained_seconds", torch::tensor(state.trained_seconds, torch::kFloat64));
  archive.write("losses", torch::tensor(state.losses.empty() ? std::vector<float>{} : state.losses));
  // Written beside the target and renamed, so an interruption never leaves a half-written state.
  diffpost::detail::write_file_atomically(path, true, "train_prior", "",
                                          [&](std::ostream& out) { archive.save_to(out); });
}

void load_state(const fs::path& path, diffpost::AdmUNet& model, diffpost::AdmUNet& ema,
                torch::optim::Adam* optimizer, TrainState& state, const torch::Device& device) {
  torch::serialize::InputArchive archive;
  archive.load_from(path.string(), device);  // onto the device the run trains on, whatever wrote it
  torch::serialize::InputArchive model_archive, ema_archive, optimizer_archive;
  archive.read("model", model_archive);
  archive.read("ema", ema_archive);
  model->load(model_archive);
  ema->load(ema_archive);
  if (optimizer) {
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
}

/// Draws a line from (x0, y0) to (x1, y1) into a [3, H, W] canvas with colour `rgb` (values in [-1, 1]).
void draw_line(torch::Tensor& canvas, double x0, double y0, double x1, double y1,
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
torch::Tensor render_loss_curve(const std::vector<float>& losses, int64_t window, double& y_min,
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

void export_prior(const Flags& flags, diffpost::AdmUNet& ema, const TrainState& state) {
  const auto weights =
      flags.out_dir / (flags.export_name + (flags.export_safetensors ? ".safetensors" : ".pt"));
  const auto config = flags.out_dir / (flags.export_name + ".yaml");
  if (flags.export_safetensors)
    diffpost::save_safetensors(ema, weights, {{"format", "pt"}}, diffpost::SaveOptions{}.overwrite(true));
  else
    diffpost::save_checkpoint(ema, weights, diffpost::SaveOptions{}.overwrite(true));
  diffpost::detail::write_file_atomically(config, true, "train_prior", "", [&](std::ostream& out) {
    out << "# ADM UNet trained by diffpost's train_prior for " << state.step << " steps; EMA weights in "
        << weights.filename().string() << "\n"
        << diffpost::adm_model_config_yaml(ema->options(), weights.filename().string());
  });
  fmt::print(stderr, "exported EMA weights after {} steps to {} and {}\n", state.step, weights.string(),
             config.string());
}

/// Reloads the exported prior exactly as a user would (config file, then a strict checkpoint load) and
/// writes a square-ish grid of `flags.samples` unconditional DDPM samples on the respaced schedule.
void write_sample_grid(const Flags& flags, const torch::Device& device) {
  const auto config_path = flags.out_dir / (flags.export_name + ".yaml");
  const auto config = diffpost::read_adm_model_config(config_path);
  diffpost::AdmUNet model(config.options);
  diffpost::load_checkpoint(model, flags.out_dir / config.model_path);
  model->eval();
  model->to(device);
  const diffpost::DDPMSampler sampler(diffpost::DiffusionSchedule::linear().respaced(flags.sample_steps));
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.seed));
  const int64_t size = config.options.image_size();
  diffpost::ProgressBar bar(sampler.schedule().num_steps(), "sample");
  auto samples = diffpost::sample_unconditional(
      model, sampler, {flags.samples, config.options.in_channels(), size, size}, generator,
      torch::TensorOptions().device(device), [&](const diffpost::StepInfo& info) { bar.update(info.step); });
  bar.finish();
  samples = samples.to(torch::kCPU);
  if (flags.grid_scale > 1)
    samples = samples.repeat_interleave(flags.grid_scale, 2).repeat_interleave(flags.grid_scale, 3);
  const auto columns = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(flags.samples))));
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t start = 0; start < flags.samples; start += columns)
    rows.push_back({samples.narrow(0, start, std::min(columns, flags.samples - start))});
  diffpost::save_grid(rows, flags.sample_grid.string(), diffpost::GridOptions{}.overwrite(true));
  fmt::print(stderr, "{} samples ({} DDPM steps, seed {}) -> {}\n", flags.samples,
             sampler.schedule().num_steps(), flags.seed, flags.sample_grid.string());
}

void write_loss_curve(const Flags& flags, const TrainState& state) {
  if (state.losses.size() < 2) return;
  double y_min = 0, y_max = 0;
  const int64_t window = std::max<int64_t>(10, static_cast<int64_t>(state.losses.size()) / 50);
  auto canvas = render_loss_curve(state.losses, window, y_min, y_max);
  diffpost::save_image(canvas * 2.0 - 1.0, (flags.out_dir / "loss_curve.png").string(), true);
  fmt::print(stderr,
             "loss curve: steps 0..{}, log y from {:.4g} to {:.4g}, moving average over {} steps -> {}\n",
             state.losses.size() - 1, y_min, y_max, window, (flags.out_dir / "loss_curve.png").string());
}

int run(const Flags& flags) {
  // From here on SIGINT / SIGTERM end the run cleanly: the loop stops, the state is saved, the prior
  // exported.
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  const auto device = diffpost::usable_device(flags.device, "--device");
  diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(flags.threads);
  torch::manual_seed(static_cast<uint64_t>(flags.seed));  // parameter initialisation
  fs::create_directories(flags.out_dir);
  const auto state_path = flags.out_dir / "state.pt";

  torch::Tensor images;
  int64_t channels = 1, size = 28;
  if (!flags.export_only) {
    images = load_training_images(flags.data);
    channels = images.size(1);
    size = images.size(2);
    TORCH_CHECK(images.size(2) == images.size(3), "train_prior: images must be square, got ", images.sizes());
    fmt::print(stderr, "data: {} images of {}x{}x{} from {}, on {}\n", images.size(0), channels, size, size,
               flags.data, device.str());
    images = images.to(device);  // once: batches are gathered on the device
  } else if (flags.data != "fashion-mnist") {
    auto first = diffpost::load_image_folder(flags.data);
    channels = first.size(1);
    size = first.size(2);
  }
  auto options = diffpost::AdmUNetOptions(size, flags.num_channels, flags.num_res_blocks)
                     .in_channels(channels)
                     .channel_mult(flags.channel_mult)
                     .attention_resolutions(flags.attention_resolutions)
                     .num_head_channels(flags.num_head_channels)
                     .learn_sigma(!flags.fixed_variance)
                     .use_scale_shift_norm(true)
                     .resblock_updown(true)
                     .dropout(flags.dropout);
  options.validate();
  diffpost::AdmUNet model(options);
  diffpost::AdmUNet ema(options);
  model->to(device);  // before the optimizer takes the parameters
  ema->to(device);
  {
    torch::NoGradGuard no_grad;
    auto source = model->named_parameters(true);
    for (auto& item : ema->named_parameters(true)) item.value().copy_(source[item.key()]);
  }
  ema->eval();
  const int64_t parameters = diffpost::examples::count_parameters(*model);
  fmt::print(stderr, "model: {} ({} parameters)\n", fmt::format("{}", options), parameters);

  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(flags.lr));
  TrainState state;
  if (fs::exists(state_path) && flags.time_batches == 0) {
    load_state(state_path, model, ema, &optimizer, state, device);
    fmt::print(stderr, "resumed from {} at step {} ({:.1f} min trained)\n", state_path.string(), state.step,
               state.trained_seconds / 60.0);
  }
  if (flags.export_only) {
    TORCH_CHECK(fs::exists(state_path), "train_prior: --export-only needs a training state at ",
                state_path.string());
    export_prior(flags, ema, state);
    write_loss_curve(flags, state);
    if (!flags.sample_grid.empty()) write_sample_grid(flags, device);
    return 0;
  }

  const auto schedule = diffpost::DiffusionSchedule::linear();
  // Each run draws from its own stream: resuming continues with a seed derived from the step.
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.seed) * 1000003ULL +
                                            static_cast<uint64_t>(state.step));
  const int64_t n = images.size(0);
  auto order = torch::randperm(n, generator, torch::kLong).to(device);
  int64_t cursor = 0;

  const auto start = std::chrono::steady_clock::now();
  auto minutes_used = [&] { return diffpost::examples::minutes_since(start); };
  const int64_t planned = flags.time_batches > 0 ? flags.time_batches
                          : flags.max_steps > 0  ? std::max<int64_t>(flags.max_steps - state.step, 0)
                                                 : 0;
  diffpost::ProgressBar bar(planned, "train");
  bar.log_interval(30.0);
  model->train();
  double recent_loss = 0.0, recent_mse = 0.0, recent_vlb = 0.0;
  int64_t recent = 0;
  double timed_seconds = 0.0;
  int64_t steps_this_run = 0;
  const double seconds_before = state.trained_seconds;
  while (true) {
    if (stop_requested.load()) break;
    if (flags.time_batches > 0 && steps_this_run >= flags.time_batches) break;
    if (flags.max_steps > 0 && state.step >= flags.max_steps) break;
    if (flags.max_minutes > 0 && minutes_used() >= flags.max_minutes) break;
    const auto step_start = std::chrono::steady_clock::now();
    if (cursor + flags.batch_size > n) {
      order = torch::randperm(n, generator, torch::kLong).to(device);
      cursor = 0;
    }
    auto x0 = images.index_select(0, order.narrow(0, cursor, flags.batch_size));
    cursor += flags.batch_size;
    if (flags.flip) {
      auto flip = (at::rand({flags.batch_size, 1, 1, 1}, generator) < 0.5).to(device);
      x0 = torch::where(flip, x0.flip(3), x0);
    }
    auto t = at::randint(0, schedule.num_steps(), {flags.batch_size}, generator, torch::kLong).to(device);
    auto noise = diffpost::detail::randn_like(x0, generator);
    auto x_t = q_sample(schedule, x0, t, noise);
    auto output = model(x_t, t);
    auto terms = diffpost::diffusion_loss(schedule, output, x0, x_t, t, noise);
    auto loss = terms.loss.mean();
    optimizer.zero_grad();
    loss.backward();
    if (flags.grad_clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), flags.grad_clip);
    optimizer.step();
    diffpost::ema_update(*ema, *model, diffpost::ema_decay_at(state.step, flags.ema_decay));
    ++state.step;
    ++steps_this_run;
    const float loss_value = loss.item<float>();  // waits for the device, so the step's time is all in
    const double step_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    if (steps_this_run > 1) timed_seconds += step_seconds;  // the first step includes one-off set-up
    state.losses.push_back(loss_value);
    recent_loss += loss_value;
    recent_mse += terms.mse.mean().item<double>();
    recent_vlb += terms.vlb.mean().item<double>();
    ++recent;
    state.trained_seconds = seconds_before + minutes_used() * 60.0;
    bar.update(flags.max_steps > 0 || flags.time_batches > 0 ? steps_this_run : state.step,
               fmt::format("step {} loss {:.4f} (mse {:.4f}, vlb {:.3f} bits)", state.step,
                           recent_loss / recent, recent_mse / recent, recent_vlb / recent));
    if (state.step % 100 == 0) recent_loss = recent_mse = recent_vlb = 0.0, recent = 0;
    if (flags.time_batches == 0 && state.step % flags.checkpoint_every == 0) {
      save_state(state_path, model, ema, optimizer, state);
      write_loss_curve(flags, state);
    }
  }
  bar.finish();
  if (flags.time_batches > 0) {
    fmt::print(
        "{} parameters, {:.3f} s per step of {} images with {} threads (mean of {} steps after the first)\n",
        parameters, timed_seconds / std::max<int64_t>(steps_this_run - 1, 1), flags.batch_size, flags.threads,
        steps_this_run - 1);
    return 0;
  }
  if (stop_requested.load() && steps_this_run == 0) {
    fmt::print(stderr, "stop requested before the first step: nothing written\n");
    return 1;
  }
  if (stop_requested.load()) fmt::print(stderr, "stop requested: saving the training state\n");
  save_state(state_path, model, ema, optimizer, state);
  write_loss_curve(flags, state);
  fmt::print(stderr, "stopped at step {} after {:.1f} min in this run ({:.1f} min in total)\n", state.step,
             minutes_used(), state.trained_seconds / 60.0);
  export_prior(flags, ema, state);
  if (!flags.sample_grid.empty()) write_sample_grid(flags, device);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return diffpost::examples::run_reporting_errors("train_prior",
                                                  [&] { return run(parse_flags(argc, argv)); });
}
