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
#include <chrono>
#include <cmath>
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
  bool flip = true;
  bool fixed_variance = false;
  int64_t time_batches = 0;
  // --max-steps, --seed, --sample-grid, ... (training_common.hpp), with train_prior's respacing.
  diffpost::examples::TrainingRunFlags run{.sample_steps = "250"};
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
  diffpost::examples::add_training_run_flags(
      app, f.run,
      {.max_steps = "stop after N optimizer steps in total (0 = no limit)",
       .sample_grid = "after exporting, reload the exported files and write a grid of unconditional samples "
                      "(DDPM, learned variance) to this PNG",
       .sample_steps = "respacing of the samples, as timestep_respacing (100, ddim50)",
       .output_group = "Output",
       .schedule_group = "Schedule of the run",
       .run_group = "Optimisation"});
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
  app.add_flag_callback(
         "--no-flip", [&f] { f.flip = false; }, "no random horizontal flips")
      ->group("Optimisation");
  app.add_flag("--fixed-variance", f.fixed_variance,
               "L_simple with a fixed-variance (eps-only) model instead of the hybrid loss")
      ->group("Optimisation");
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

void export_prior(const Flags& flags, diffpost::AdmUNet& ema,
                  const diffpost::examples::TrainingState& state) {
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
/// writes a square-ish grid of `flags.run.samples` unconditional DDPM samples on the respaced schedule.
void write_sample_grid(const Flags& flags, const torch::Device& device) {
  const auto config_path = flags.out_dir / (flags.export_name + ".yaml");
  const auto config = diffpost::read_adm_model_config(config_path);
  diffpost::AdmUNet model(config.options);
  diffpost::load_checkpoint(model, flags.out_dir / config.model_path);
  model->eval();
  model->to(device);
  const diffpost::DDPMSampler sampler(diffpost::DiffusionSchedule::linear().respaced(flags.run.sample_steps));
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed));
  const int64_t size = config.options.image_size();
  diffpost::ProgressBar bar(sampler.schedule().num_steps(), "sample");
  auto samples = diffpost::sample_unconditional(
      model, sampler, {flags.run.samples, config.options.in_channels(), size, size}, generator,
      torch::TensorOptions().device(device), [&](const diffpost::StepInfo& info) { bar.update(info.step); });
  bar.finish();
  diffpost::examples::save_sample_grid(samples, flags.run.grid_scale, flags.run.sample_grid);
  fmt::print(stderr, "{} samples ({} DDPM steps, seed {}) -> {}\n", flags.run.samples,
             sampler.schedule().num_steps(), flags.run.seed, flags.run.sample_grid.string());
}

void write_loss_curve(const Flags& flags, const diffpost::examples::TrainingState& state) {
  diffpost::examples::write_loss_curve(state.losses, flags.out_dir / "loss_curve.png");
}

/// The modules of the training state, as train_prior has always named them.
diffpost::examples::NamedModules state_modules(diffpost::AdmUNet& model, diffpost::AdmUNet& ema) {
  return {{"model", model.ptr().get()}, {"ema", ema.ptr().get()}};
}

int run(const Flags& flags) {
  // From here on SIGINT / SIGTERM end the run cleanly: the loop stops, the state is saved, the prior
  // exported.
  diffpost::examples::stop_on_signals();
  const auto device = diffpost::usable_device(flags.run.device, "--device");
  diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(flags.run.threads);
  torch::manual_seed(static_cast<uint64_t>(flags.run.seed));  // parameter initialisation
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
  diffpost::examples::TrainingState state;
  if (fs::exists(state_path) && flags.time_batches == 0) {
    diffpost::examples::load_training_state(state_path, state_modules(model, ema), &optimizer, state, device);
    fmt::print(stderr, "resumed from {} at step {} ({:.1f} min trained)\n", state_path.string(), state.step,
               state.trained_seconds / 60.0);
  }
  if (flags.export_only) {
    TORCH_CHECK(fs::exists(state_path), "train_prior: --export-only needs a training state at ",
                state_path.string());
    export_prior(flags, ema, state);
    write_loss_curve(flags, state);
    if (!flags.run.sample_grid.empty()) write_sample_grid(flags, device);
    return 0;
  }

  const auto schedule = diffpost::DiffusionSchedule::linear();
  // Each run draws from its own stream: resuming continues with a seed derived from the step.
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed) * 1000003ULL +
                                            static_cast<uint64_t>(state.step));
  const int64_t n = images.size(0);
  auto order = torch::randperm(n, generator, torch::kLong).to(device);
  int64_t cursor = 0;

  const auto start = std::chrono::steady_clock::now();
  auto minutes_used = [&] { return diffpost::examples::minutes_since(start); };
  const int64_t planned = flags.time_batches > 0    ? flags.time_batches
                          : flags.run.max_steps > 0 ? std::max<int64_t>(flags.run.max_steps - state.step, 0)
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
    if (diffpost::examples::stop_requested.load()) break;
    if (flags.time_batches > 0 && steps_this_run >= flags.time_batches) break;
    if (flags.run.max_steps > 0 && state.step >= flags.run.max_steps) break;
    if (flags.run.max_minutes > 0 && minutes_used() >= flags.run.max_minutes) break;
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
    bar.update(flags.run.max_steps > 0 || flags.time_batches > 0 ? steps_this_run : state.step,
               fmt::format("step {} loss {:.4f} (mse {:.4f}, vlb {:.3f} bits)", state.step,
                           recent_loss / recent, recent_mse / recent, recent_vlb / recent));
    if (state.step % 100 == 0) recent_loss = recent_mse = recent_vlb = 0.0, recent = 0;
    if (flags.time_batches == 0 && state.step % flags.run.checkpoint_every == 0) {
      diffpost::examples::save_training_state(state_path, "train_prior", state_modules(model, ema), optimizer,
                                              state);
      write_loss_curve(flags, state);
    }
  }
  bar.finish();
  if (flags.time_batches > 0) {
    fmt::print(
        "{} parameters, {:.3f} s per step of {} images with {} threads (mean of {} steps after the first)\n",
        parameters, timed_seconds / std::max<int64_t>(steps_this_run - 1, 1), flags.batch_size,
        flags.run.threads, steps_this_run - 1);
    return 0;
  }
  if (diffpost::examples::stop_requested.load() && steps_this_run == 0) {
    fmt::print(stderr, "stop requested before the first step: nothing written\n");
    return 1;
  }
  if (diffpost::examples::stop_requested.load())
    fmt::print(stderr, "stop requested: saving the training state\n");
  diffpost::examples::save_training_state(state_path, "train_prior", state_modules(model, ema), optimizer,
                                          state);
  write_loss_curve(flags, state);
  fmt::print(stderr, "stopped at step {} after {:.1f} min in this run ({:.1f} min in total)\n", state.step,
             minutes_used(), state.trained_seconds / 60.0);
  export_prior(flags, ema, state);
  if (!flags.run.sample_grid.empty()) write_sample_grid(flags, device);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return diffpost::examples::run_reporting_errors("train_prior",
                                                  [&] { return run(parse_flags(argc, argv)); });
}
