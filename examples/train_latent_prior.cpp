// train_latent_prior: trains a small latent diffusion prior (Rombach et al. 2022) on Fashion-MNIST in two
// stages and exports it in CompVis latent-diffusion's layout: one Lightning-style checkpoint (tensors under
// "state_dict": `model.diffusion_model.*` = the latent UNet's EMA weights, `first_stage_model.*` = the
// autoencoder, ldm's `register_schedule` buffers and `scale_factor`) and its CompVis YAML config.
//
//   train_latent_prior --stage autoencoder --out-dir runs/ldm --max-minutes 10   # stage 1 (resumes)
//   train_latent_prior --stage unet --out-dir runs/ldm --max-minutes 15          # stage 2 (resumes)
//   train_latent_prior --stage export --out-dir runs/ldm --sample-grid s.png     # NAME.ckpt + NAME.yaml
//
// Stage 1: an ldm AutoencoderKL (models/ldm_autoencoder.hpp, 28x28x1 -> 3x14x14) trained with ldm's
// objective minus its adversarial and perceptual terms: the L1 reconstruction summed per image plus
// 1e-6 x the KL of the Gaussian posterior to N(0, I), on a posterior sample (ldm's sample_posterior). A KL
// bottleneck rather than a codebook: a Gaussian posterior trains stably in minutes, a VQ codebook needs its
// commitment loss, codebook collapse care and many more steps. No GAN and no LPIPS: at 28x28 on the CPU the
// discriminator would dominate the time, and LPIPS' VGG features are meaningless on 28x28 grey images.
// Stage 2: the training set is encoded once (posterior means), scale_factor = 1 / std of those latents
// (ldm's scale_by_std, Stable Diffusion's 0.18215), and an ADM UNet (eps prediction, fixed variance, as the
// LDMs are trained) learns the scaled latents on ldm's linear schedule (linear_start 0.0015, linear_end
// 0.0195, 1000 steps). Adam, an EMA of the UNet's weights, resumable states written atomically, SIGINT /
// SIGTERM save and stop, --max-minutes (examples/training_common.hpp). Run with --help for every flag.
#include <diffpost/detail/random.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/random.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>
#include <diffpost/samplers/ddim.hpp>
#include <diffpost/schedule.hpp>
#include <diffpost/training/ema.hpp>
#include <diffpost/training/losses.hpp>

#include "training_common.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <fmt/ranges.h>

namespace fs = std::filesystem;
namespace ex = diffpost::examples;

namespace {

// ldm's schedule of its LDM configs (ffhq-ldm-vq-4.yaml and the others).
constexpr double kLinearStart = 0.0015;
constexpr double kLinearEnd = 0.0195;
constexpr int64_t kTimesteps = 1000;

struct Flags {
  std::string stage = "autoencoder";
  fs::path out_dir = "train_latent_prior_run";
  std::string export_name = "fashion_mnist_28_ldm";
  int64_t batch_size = 64;
  double lr = 0.0;  // 0: the stage's default
  double grad_clip = 1.0;
  double ema_decay = 0.999;
  double kl_weight = 1e-6;
  // --max-steps, --seed, --sample-grid, ... (training_common.hpp), with DDIM's respacing.
  ex::TrainingRunFlags run{.sample_steps = "ddim100"};
  double eta = 0.0;
  int64_t eval_images = 100;
  int64_t latent_images = 0;
  std::string export_dtype = "float32";
  // Stage 1: the autoencoder (ldm ddconfig).
  int64_t ae_ch = 32;
  std::vector<int64_t> ae_ch_mult = {1, 2};
  int64_t ae_res_blocks = 1;
  int64_t embed_dim = 3;
  // Stage 2: the latent UNet (ldm UNetModel arguments).
  int64_t model_channels = 64;
  int64_t num_res_blocks = 1;
  std::vector<int64_t> channel_mult = {1, 2};
  std::vector<int64_t> attention_ds = {2};
  int64_t num_head_channels = 32;
};

Flags parse_flags(int argc, char** argv) {
  Flags f;
  CLI::App app("train a latent diffusion prior (KL autoencoder + latent ADM UNet) on Fashion-MNIST",
               "train_latent_prior");
  const auto positive = CLI::PositiveNumber;
  app.add_option("--stage", f.stage,
                 "autoencoder (stage 1), unet (stage 2, needs stage 1's state), export (CompVis .ckpt and "
                 ".yaml from both states, then the checks)")
      ->check(CLI::IsMember({"autoencoder", "unet", "export"}))
      ->capture_default_str();
  app.add_option("--out-dir", f.out_dir, "training states, loss curves and exports")->capture_default_str();
  app.add_option("--export", f.export_name, "export DIR/NAME.ckpt and DIR/NAME.yaml")
      ->type_name("NAME")
      ->capture_default_str();
  ex::add_training_run_flags(
      app, f.run,
      {.max_steps = "stop after N steps of the stage in total (0 = no limit)",
       .sample_grid = "export: reload the exported files and write a grid of decoded unconditional samples",
       .sample_steps = "respacing of the DDIM samples (ddimN or N)"});
  app.add_option("--eta", f.eta, "DDIM eta of the samples (0: deterministic DDIM, 1: DDPM-like noise)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--eval-images", f.eval_images,
                 "export: reconstruction PSNR over the first N Fashion-MNIST test images")
      ->check(positive)
      ->capture_default_str();
  app.add_option("--latent-images", f.latent_images,
                 "stage 2: train on the latents of the first N training images (0 = all 60,000)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--export-dtype", f.export_dtype,
                 "dtype of the exported tensors (float16 halves the file; loads convert to the model's)")
      ->check(CLI::IsMember({"float32", "float16"}))
      ->capture_default_str();
  app.add_option("--batch-size", f.batch_size)->check(positive)->capture_default_str();
  app.add_option("--lr", f.lr, "Adam learning rate (default: 1e-3 for the autoencoder, 2e-4 for the UNet)")
      ->check(ex::positive_number());
  app.add_option("--grad-clip", f.grad_clip, "global gradient norm clip (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--ema-decay", f.ema_decay, "UNet EMA decay, with warm-up min(X, (1+s)/(10+s))")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--kl-weight", f.kl_weight, "weight of the autoencoder's KL term (ldm: 1e-6)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  const char* autoencoder = "Autoencoder (ldm ddconfig; fixed when stage 1 has started)";
  app.add_option("--ae-ch", f.ae_ch)->check(positive)->capture_default_str()->group(autoencoder);
  app.add_option("--ae-ch-mult", f.ae_ch_mult)->delimiter(',')->capture_default_str()->group(autoencoder);
  app.add_option("--ae-res-blocks", f.ae_res_blocks)
      ->check(positive)
      ->capture_default_str()
      ->group(autoencoder);
  app.add_option("--embed-dim", f.embed_dim, "latent channels (= z_channels)")
      ->check(positive)
      ->capture_default_str()
      ->group(autoencoder);
  const char* unet = "Latent UNet (ldm UNetModel arguments; fixed when stage 2 has started)";
  app.add_option("--model-channels", f.model_channels)->check(positive)->capture_default_str()->group(unet);
  app.add_option("--num-res-blocks", f.num_res_blocks)->check(positive)->capture_default_str()->group(unet);
  app.add_option("--channel-mult", f.channel_mult)->delimiter(',')->capture_default_str()->group(unet);
  app.add_option("--attention-resolutions", f.attention_ds, "downsample factors, as in ldm's configs")
      ->delimiter(',')
      ->capture_default_str()
      ->group(unet);
  app.add_option("--num-head-channels", f.num_head_channels)
      ->check(positive)
      ->capture_default_str()
      ->group(unet);
  ex::parse_command_line(app, argc, argv);
  return f;
}

diffpost::LdmAutoencoderOptions autoencoder_options(const Flags& f) {
  auto options = diffpost::LdmAutoencoderOptions{}
                     .kind(diffpost::LdmAutoencoderKind::kl)
                     .double_z(true)
                     .embed_dim(f.embed_dim)
                     .z_channels(f.embed_dim)
                     .resolution(28)
                     .in_channels(1)
                     .out_ch(1)
                     .ch(f.ae_ch)
                     .ch_mult(f.ae_ch_mult)
                     .num_res_blocks(f.ae_res_blocks)
                     .attn_resolutions({});
  options.validate();
  return options;
}

int64_t latent_size(const Flags& f) {
  return 28 / autoencoder_options(f).downsampling_factor();
}

diffpost::AdmUNetOptions unet_options(const Flags& f) {
  const int64_t size = latent_size(f);
  std::vector<int64_t> resolutions;
  for (int64_t ds : f.attention_ds) {
    TORCH_CHECK(ds > 0 && size % ds == 0, "train_latent_prior: --attention-resolutions entry ", ds,
                " does not divide the latent size ", size);
    resolutions.push_back(size / ds);
  }
  auto options = diffpost::AdmUNetOptions(size, f.model_channels, f.num_res_blocks)
                     .in_channels(f.embed_dim)
                     .explicit_out_channels(f.embed_dim)
                     .channel_mult(f.channel_mult)
                     .attention_resolutions(resolutions)
                     .num_head_channels(f.num_head_channels)
                     .learn_sigma(false)
                     .use_scale_shift_norm(false)
                     .resblock_updown(false);
  options.validate();
  return options;
}

/// ldm's linear schedule of the LDM configs.
diffpost::DiffusionSchedule latent_schedule() {
  return diffpost::DiffusionSchedule(
      diffpost::detail::ldm_betas("linear", kTimesteps, kLinearStart, kLinearEnd, "train_latent_prior"));
}

torch::Tensor fashion_mnist(const std::string& split) {
  return ex::read_fashion_mnist(diffpost::debian_fashion_mnist_dir(), split).images;
}

/// The shared loop of both stages: batches of a random permutation of `data`, `step(batch)` returning the
/// loss to minimise, Adam with gradient clipping, `after_step()` (the EMA), states every checkpoint_every
/// steps and at the end, stopping at --max-steps, --max-minutes or a signal.
void train_loop(const Flags& flags, const torch::Tensor& data, const std::string& label,
                torch::optim::Adam& optimizer, const std::vector<torch::Tensor>& parameters,
                ex::TrainingState& state, const std::function<torch::Tensor(const torch::Tensor&)>& step,
                const std::function<void()>& after_step, const std::function<void()>& save) {
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed) * 1000003ULL +
                                            static_cast<uint64_t>(state.step));
  const int64_t n = data.size(0);
  auto order = torch::randperm(n, generator, torch::kLong).to(data.device());
  int64_t cursor = 0;
  const auto start = std::chrono::steady_clock::now();
  const double seconds_before = state.trained_seconds;
  const int64_t planned =
      flags.run.max_steps > 0 ? std::max<int64_t>(flags.run.max_steps - state.step, 0) : 0;
  diffpost::ProgressBar bar(planned, label);
  bar.log_interval(30.0);
  double recent = 0.0;
  int64_t recent_count = 0, steps_this_run = 0;
  while (!ex::stop_requested.load()) {
    if (flags.run.max_steps > 0 && state.step >= flags.run.max_steps) break;
    if (flags.run.max_minutes > 0 && ex::minutes_since(start) >= flags.run.max_minutes) break;
    if (cursor + flags.batch_size > n) {
      order = torch::randperm(n, generator, torch::kLong).to(data.device());
      cursor = 0;
    }
    const auto batch = data.index_select(0, order.narrow(0, cursor, flags.batch_size));
    cursor += flags.batch_size;
    auto loss = step(batch);
    optimizer.zero_grad();
    loss.backward();
    if (flags.grad_clip > 0) torch::nn::utils::clip_grad_norm_(parameters, flags.grad_clip);
    optimizer.step();
    after_step();
    ++state.step;
    ++steps_this_run;
    const float value = loss.item<float>();
    state.losses.push_back(value);
    recent += value;
    ++recent_count;
    state.trained_seconds = seconds_before + ex::minutes_since(start) * 60.0;
    bar.update(planned > 0 ? steps_this_run : state.step,
               fmt::format("step {} loss {:.5f}", state.step, recent / static_cast<double>(recent_count)));
    if (state.step % 100 == 0) recent = 0.0, recent_count = 0;
    if (state.step % flags.run.checkpoint_every == 0) save();
  }
  bar.finish();
  if (steps_this_run > 0) save();
  fmt::print(stderr, "{}: stopped at step {} after {:.1f} min in this run ({:.1f} min in total)\n", label,
             state.step, ex::minutes_since(start), state.trained_seconds / 60.0);
}

/// Mean of the last `count` losses (the figure reported as the curve's end value).
double final_loss(const std::vector<float>& losses, size_t count = 200) {
  if (losses.empty()) return std::nan("");
  const size_t from = losses.size() > count ? losses.size() - count : 0;
  double total = 0.0;
  for (size_t i = from; i < losses.size(); ++i) total += losses[i];
  return total / static_cast<double>(losses.size() - from);
}

/// Stage 1: the KL autoencoder. Loss per image (ldm's LPIPSWithDiscriminator without its perceptual and GAN
/// terms, logvar 0): sum |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)), z a posterior sample; the curve
/// records it divided by the pixel count (the mean absolute error, plus the tiny KL share).
int train_autoencoder(const Flags& flags, const torch::Device& device) {
  const auto state_path = flags.out_dir / "autoencoder_state.pt";
  diffpost::LdmAutoencoder autoencoder(autoencoder_options(flags));
  autoencoder->to(device);
  std::ostringstream description;
  description << autoencoder_options(flags);
  fmt::print(stderr, "autoencoder: {} ({} parameters)\n", description.str(),
             ex::count_parameters(*autoencoder));
  torch::optim::Adam optimizer(autoencoder->parameters(),
                               torch::optim::AdamOptions(flags.lr > 0 ? flags.lr : 1e-3));
  ex::TrainingState state;
  const ex::NamedModules modules{{"autoencoder", autoencoder.ptr().get()}};
  if (fs::exists(state_path)) {
    ex::load_training_state(state_path, modules, &optimizer, state, device);
    fmt::print(stderr, "resumed stage 1 at step {}\n", state.step);
  }
  const auto images = fashion_mnist("train").to(device);
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed) + 17ULL * state.step + 1);
  const double pixels = 28.0 * 28.0;
  autoencoder->train();
  train_loop(
      flags, images, "autoencoder", optimizer, autoencoder->parameters(), state,
      [&](const torch::Tensor& x) {
        const auto posterior = autoencoder->posterior(x);
        const auto reconstruction = autoencoder->decode(posterior.sample(generator));
        const auto l1 = (x - reconstruction).abs().sum({1, 2, 3});
        // KL(N(mu, sigma^2) || N(0, 1)) summed over the latent (ldm's DiagonalGaussianDistribution.kl()).
        const auto kl =
            0.5 * (posterior.mean.square() + posterior.logvar.exp() - 1.0 - posterior.logvar).sum({1, 2, 3});
        return (l1 + flags.kl_weight * kl).mean() / pixels;
      },
      [] {},
      [&] {
        ex::save_training_state(state_path, "train_latent_prior", modules, optimizer, state);
        ex::write_loss_curve(state.losses, flags.out_dir / "autoencoder_loss.png");
      });
  fmt::print(stderr, "autoencoder loss (mean |x - D(z)| per pixel + KL share), last 200 steps: {:.5f}\n",
             final_loss(state.losses));
  return 0;
}

/// Reads stage 1's autoencoder (eval mode, on `device`).
diffpost::LdmAutoencoder trained_autoencoder(const Flags& flags, const torch::Device& device) {
  const auto path = flags.out_dir / "autoencoder_state.pt";
  TORCH_CHECK(fs::exists(path), "train_latent_prior: no stage-1 state at ", path.string(),
              "; run --stage autoencoder first");
  diffpost::LdmAutoencoder autoencoder(autoencoder_options(flags));
  autoencoder->to(device);
  ex::TrainingState state;
  ex::load_training_state(path, {{"autoencoder", autoencoder.ptr().get()}}, nullptr, state, device);
  autoencoder->eval();
  return autoencoder;
}

/// Posterior means of `images`, in batches without gradients.
torch::Tensor encode_all(diffpost::LdmAutoencoder& autoencoder, const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> latents;
  for (int64_t start = 0; start < images.size(0); start += 500)
    latents.push_back(
        autoencoder->encode(images.narrow(0, start, std::min<int64_t>(500, images.size(0) - start))));
  return torch::cat(latents);
}

/// Stage 2: the latent UNet on scale_factor * E(x) over the training set.
int train_unet(const Flags& flags, const torch::Device& device) {
  const auto state_path = flags.out_dir / "unet_state.pt";
  auto autoencoder = trained_autoencoder(flags, device);
  const auto options = unet_options(flags);
  diffpost::AdmUNet model(options), ema(options);
  model->to(device);
  ema->to(device);
  {
    torch::NoGradGuard no_grad;
    auto source = model->named_parameters(true);
    for (auto& item : ema->named_parameters(true)) item.value().copy_(source[item.key()]);
  }
  ema->eval();
  fmt::print(stderr, "latent UNet: {} ({} parameters)\n", fmt::format("{}", options),
             ex::count_parameters(*model));
  torch::optim::Adam optimizer(model->parameters(),
                               torch::optim::AdamOptions(flags.lr > 0 ? flags.lr : 2e-4));
  ex::TrainingState state;
  const ex::NamedModules modules{{"model", model.ptr().get()}, {"ema", ema.ptr().get()}};
  if (fs::exists(state_path)) {
    ex::load_training_state(state_path, modules, &optimizer, state, device);
    fmt::print(stderr, "resumed stage 2 at step {} (scale_factor {:.6f})\n", state.step,
               state.values.at("scale_factor"));
  }
  const auto start = std::chrono::steady_clock::now();
  auto images = fashion_mnist("train");
  if (flags.latent_images > 0) images = images.narrow(0, 0, std::min(flags.latent_images, images.size(0)));
  const auto latents = encode_all(autoencoder, images.to(device));
  if (!state.values.contains("scale_factor")) {
    // ldm's scale_by_std: 1 / std of the (unscaled) latents, here over the whole training set.
    state.values["scale_factor"] = 1.0 / latents.std().item<double>();
  }
  const double scale_factor = state.values.at("scale_factor");
  const auto scaled = latents * scale_factor;
  fmt::print(stderr, "encoded {} images to latents {} in {:.1f} s; scale_factor {:.6f} (latent std {:.4f})\n",
             latents.size(0), fmt::format("{}", latents.sizes().vec()), ex::minutes_since(start) * 60.0,
             scale_factor, latents.std().item<double>());
  const auto schedule = latent_schedule();
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed) * 7919ULL + state.step + 3);
  model->train();
  train_loop(
      flags, scaled, "latent unet", optimizer, model->parameters(), state,
      [&](const torch::Tensor& z0) {
        auto t = at::randint(0, schedule.num_steps(), {z0.size(0)}, generator, torch::kLong).to(device);
        auto noise = diffpost::detail::randn_like(z0, generator);
        auto z_t = q_sample(schedule, z0, t, noise);
        return diffpost::diffusion_loss(schedule, model(z_t, t), z0, z_t, t, noise).loss.mean();
      },
      [&] { diffpost::ema_update(*ema, *model, diffpost::ema_decay_at(state.step, flags.ema_decay)); },
      [&] {
        ex::save_training_state(state_path, "train_latent_prior", modules, optimizer, state);
        ex::write_loss_curve(state.losses, flags.out_dir / "unet_loss.png");
      });
  fmt::print(stderr, "latent UNet loss (mean (eps - eps_hat)^2), last 200 steps: {:.5f}\n",
             final_loss(state.losses));
  return 0;
}

/// The CompVis config of the exported prior (ffhq-ldm-vq-4.yaml's layout, AutoencoderKL as first stage).
std::string ldm_config_yaml(const Flags& flags, double scale_factor, int64_t unet_steps, int64_t ae_steps) {
  const auto list = [](const std::vector<int64_t>& values) {
    return fmt::format("[{}]", fmt::join(values, ", "));
  };
  const auto ae = autoencoder_options(flags);
  const auto unet = unet_options(flags);
  std::string yaml = fmt::format(
      "# Latent diffusion prior for Fashion-MNIST 28x28, trained by diffpost's train_latent_prior\n"
      "# (autoencoder {} steps, latent UNet {} steps; EMA weights in model.diffusion_model).\n"
      "model:\n"
      "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
      "  params:\n"
      "    linear_start: {}\n"
      "    linear_end: {}\n"
      "    timesteps: {}\n"
      "    beta_schedule: linear\n"
      "    parameterization: eps\n"
      "    first_stage_key: image\n"
      "    image_size: {}\n"
      "    channels: {}\n"
      "    cond_stage_trainable: false\n"
      "    concat_mode: false\n"
      "    scale_by_std: true\n"
      "    scale_factor: {:.9g}\n"
      "    use_ema: false\n"
      "    monitor: val/loss\n"
      "    unet_config:\n"
      "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
      "      params:\n"
      "        image_size: {}\n"
      "        in_channels: {}\n"
      "        out_channels: {}\n"
      "        model_channels: {}\n"
      "        attention_resolutions: {}\n"
      "        num_res_blocks: {}\n"
      "        channel_mult: {}\n"
      "        num_head_channels: {}\n"
      "    first_stage_config:\n"
      "      target: ldm.models.autoencoder.AutoencoderKL\n"
      "      params:\n"
      "        embed_dim: {}\n"
      "        ddconfig:\n"
      "          double_z: true\n"
      "          z_channels: {}\n"
      "          resolution: {}\n"
      "          in_channels: {}\n"
      "          out_ch: {}\n"
      "          ch: {}\n"
      "          ch_mult: {}\n"
      "          num_res_blocks: {}\n"
      "          attn_resolutions: []\n"
      "          dropout: 0.0\n"
      "        lossconfig:\n"
      "          target: torch.nn.Identity\n"
      "    cond_stage_config: __is_unconditional__\n",
      ae_steps, unet_steps, kLinearStart, kLinearEnd, kTimesteps, unet.image_size(), flags.embed_dim,
      scale_factor, unet.image_size(), flags.embed_dim, flags.embed_dim, flags.model_channels,
      list(flags.attention_ds), flags.num_res_blocks, list(flags.channel_mult), flags.num_head_channels,
      ae.embed_dim(), ae.z_channels(), ae.resolution(), ae.in_channels(), ae.out_ch(), ae.ch(),
      list(ae.ch_mult()), ae.num_res_blocks());
  return yaml;
}

/// ldm's register_schedule buffers (float32, as its to_torch makes them), in its order.
void add_schedule_buffers(diffpost::StateDict& state) {
  const auto betas = torch::tensor(
      diffpost::detail::ldm_betas("linear", kTimesteps, kLinearStart, kLinearEnd, "train_latent_prior"),
      torch::kFloat64);
  const auto alphas = 1.0 - betas;
  const auto alphas_cumprod = torch::cumprod(alphas, 0);
  const auto alphas_cumprod_prev =
      torch::cat({torch::ones({1}, torch::kFloat64), alphas_cumprod.narrow(0, 0, kTimesteps - 1)});
  const auto posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod);
  const std::vector<std::pair<std::string, torch::Tensor>> buffers{
      {"betas", betas},
      {"alphas_cumprod", alphas_cumprod},
      {"alphas_cumprod_prev", alphas_cumprod_prev},
      {"sqrt_alphas_cumprod", alphas_cumprod.sqrt()},
      {"sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt()},
      {"log_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).log()},
      {"sqrt_recip_alphas_cumprod", (1.0 / alphas_cumprod).sqrt()},
      {"sqrt_recipm1_alphas_cumprod", (1.0 / alphas_cumprod - 1.0).sqrt()},
      {"posterior_variance", posterior_variance},
      {"posterior_log_variance_clipped", posterior_variance.clamp_min(1e-20).log()},
      {"posterior_mean_coef1", betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)},
      {"posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)},
  };
  for (const auto& [name, value] : buffers) state.insert(name, value.to(torch::kFloat32));
}

/// Export: NAME.ckpt ({"state_dict": LatentDiffusion's state dict}) and NAME.yaml, then reads both back as a
/// user would (strict loads by prefix, the YAML through parse_ldm_model_config), reports the reconstruction
/// PSNR over the first test images and optionally writes a grid of decoded DDIM samples.
int export_prior(const Flags& flags, const torch::Device& device) {
  auto autoencoder = trained_autoencoder(flags, device);
  const auto options = unet_options(flags);
  diffpost::AdmUNet model(options), ema(options);
  ex::TrainingState unet_state, ae_state;
  const auto unet_path = flags.out_dir / "unet_state.pt";
  TORCH_CHECK(fs::exists(unet_path), "train_latent_prior: no stage-2 state at ", unet_path.string(),
              "; run --stage unet first");
  ex::load_training_state(unet_path, {{"model", model.ptr().get()}, {"ema", ema.ptr().get()}}, nullptr,
                          unet_state, torch::kCPU);
  {
    diffpost::LdmAutoencoder scratch(autoencoder_options(flags));
    ex::load_training_state(flags.out_dir / "autoencoder_state.pt", {{"autoencoder", scratch.ptr().get()}},
                            nullptr, ae_state, torch::kCPU);
  }
  const double scale_factor = unet_state.values.at("scale_factor");

  // LatentDiffusion.state_dict() order: its own buffers (schedule, scale_factor), then model,
  // first_stage_model.
  diffpost::StateDict state;
  add_schedule_buffers(state);
  state.insert("scale_factor", torch::tensor(static_cast<float>(scale_factor)));
  for (const auto& [name, tensor] : diffpost::state_dict(*ema))
    state.insert("model.diffusion_model." + name, tensor);
  autoencoder->to(torch::kCPU);
  for (const auto& [name, tensor] : diffpost::state_dict(*autoencoder))
    state.insert("first_stage_model." + name, tensor);
  if (flags.export_dtype == "float16") {
    diffpost::StateDict half;
    for (const auto& [name, tensor] : state) {  // the weights only: ldm's buffers stay float32
      const bool weight = name.starts_with("model.") || name.starts_with("first_stage_model.");
      half.insert(name, weight ? tensor.to(torch::kFloat16) : tensor);
    }
    state = std::move(half);
  }
  const auto ckpt = flags.out_dir / (flags.export_name + ".ckpt");
  const auto yaml = flags.out_dir / (flags.export_name + ".yaml");
  diffpost::save_state_dict(state, ckpt, diffpost::SaveOptions{}.overwrite(true).key("state_dict"));
  diffpost::detail::write_file_atomically(yaml, true, "train_latent_prior", "", [&](std::ostream& out) {
    out << ldm_config_yaml(flags, scale_factor, unet_state.step, ae_state.step);
  });
  fmt::print(stderr, "exported {} ({} bytes) and {} ({} bytes)\n", ckpt.string(), fs::file_size(ckpt),
             yaml.string(), fs::file_size(yaml));
  fmt::print(stderr,
             "loss ends (mean of the last 200 steps): autoencoder {:.5f} after {} steps ({:.1f} min), "
             "latent UNet {:.5f} after {} steps ({:.1f} min)\n",
             final_loss(ae_state.losses), ae_state.step, ae_state.trained_seconds / 60.0,
             final_loss(unet_state.losses), unet_state.step, unet_state.trained_seconds / 60.0);

  // Read back as the LDM loader does: the YAML, then strict loads of each prefix.
  const auto config = diffpost::read_ldm_model_config(yaml);
  diffpost::AdmUNet unet(config.unet);
  diffpost::load_state_dict(
      unet, diffpost::read_state_dict(ckpt, diffpost::ReadOptions{}.prefix("model.diffusion_model.")));
  diffpost::LdmAutoencoder first_stage(autoencoder_options(flags));
  diffpost::load_state_dict(
      first_stage, diffpost::read_state_dict(ckpt, diffpost::ReadOptions{}.prefix("first_stage_model.")));
  const auto stored = diffpost::read_state_dict(ckpt);
  const auto schedule = diffpost::schedule_from_state_dict(stored).value();
  fmt::print(stderr,
             "read back: YAML scale_factor {:.6f}, {} schedule steps, UNet and autoencoder loaded strictly\n",
             config.scale_factor, schedule.num_steps());
  unet->eval();
  first_stage->eval();

  torch::NoGradGuard no_grad;
  const auto test = fashion_mnist("t10k").narrow(0, 0, flags.eval_images);
  const auto reconstruction = first_stage->decode(first_stage->encode(test)).clamp(-1.0, 1.0);
  const auto psnr = diffpost::psnr(reconstruction, test);
  fmt::print("reconstruction PSNR over the first {} test images: mean {:.2f} dB (min {:.2f}, max {:.2f})\n",
             flags.eval_images, psnr.mean().item<double>(), psnr.min().item<double>(),
             psnr.max().item<double>());
  if (!flags.run.sample_grid.empty()) {
    unet->to(device);
    first_stage->to(device);
    const diffpost::DDIMSampler sampler(schedule.respaced(flags.run.sample_steps),
                                        diffpost::DDIMOptions{}.eta(flags.eta).clip_denoised(false));
    auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.run.seed));
    const int64_t size = config.unet.image_size();
    auto z = diffpost::sample_unconditional(unet, sampler, {flags.run.samples, flags.embed_dim, size, size},
                                            generator, torch::TensorOptions().device(device));
    auto images = first_stage->decode(z / config.scale_factor).clamp(-1.0, 1.0);
    ex::save_sample_grid(images, flags.run.grid_scale, flags.run.sample_grid);
    fmt::print(stderr, "{} samples ({} DDIM steps, eta {}, seed {}; latent std {:.3f}) -> {}\n",
               flags.run.samples, sampler.schedule().num_steps(), flags.eta, flags.run.seed,
               z.std().item<double>(), flags.run.sample_grid.string());
  }
  return 0;
}

int run(const Flags& flags) {
  ex::stop_on_signals();
  const auto device = diffpost::usable_device(flags.run.device, "--device");
  diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(flags.run.threads);
  torch::manual_seed(static_cast<uint64_t>(flags.run.seed));  // parameter initialisation
  fs::create_directories(flags.out_dir);
  if (flags.stage == "autoencoder") return train_autoencoder(flags, device);
  if (flags.stage == "unet") return train_unet(flags, device);
  return export_prior(flags, device);
}

}  // namespace

int main(int argc, char** argv) {
  return ex::run_reporting_errors("train_latent_prior", [&] { return run(parse_flags(argc, argv)); });
}
