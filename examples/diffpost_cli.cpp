// diffpost: restore degraded images with a diffusion prior from the command line.
//
//   diffpost restore --task box-inpaint,sr --test-set 16 --out results/
//   diffpost degrade --task motion-deblur photo.png --out measured/
//   diffpost sample --num-images 16 --out samples/
//   diffpost denoise --sigma 0.2 --test-set 8 --add-noise --out denoised/
//   diffpost score truth/ restored/ --lpips vgg --fid --kid
//
// Every subcommand has --help. The model is the bundled Fashion-MNIST prior unless --model / --config name
// another ADM UNet checkpoint and its configuration, or --model a diffusers folder (diffpost describe
// PATH prints what a model is). Errors are one line on stderr and a non-zero exit; no
// output file is ever half-written or silently replaced (--force replaces).
#include <diffpost/dps.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "cli/files.hpp"
#include "cli/methods.hpp"
#include "cli/model.hpp"
#include "cli/options.hpp"
#include "cli/tasks.hpp"

namespace fs = std::filesystem;
using namespace diffpost;
using namespace diffpost::cli;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// degrade
// ---------------------------------------------------------------------------------------------------------------

/// The options of `diffpost degrade`.
struct DegradeOptions {
  TaskOptions task;
  NoiseOptions noise;
  InputOptions input;
  uint64_t seed = 0;
  OutputOptions output;
};

void declare_degrade(CLI::App& app, DegradeOptions& o) {
  add_task_options(app, o.task, false);
  add_noise_options(app, o.noise);
  add_input_options(app, o.input);
  add_value_option(app, "--seed", o.seed, "random seed (masks, kernels, noise)", "N", "Input");
  add_output_options(app, o.output);
}

int run_degrade(int argc, char** argv) {
  const auto parsed = parse_command<DegradeOptions>(
      "diffpost degrade",
      "Makes measurements from clean images: applies the task's operator and the noise, and writes\n"
      "<name>_measurement.png, <name>_naive.png (the naive inverse, when the task has one), the mask\n"
      "(<name>_mask.png) or blur kernel (<name>_kernel.png, scaled to its maximum) used, and grid.png\n"
      "(rows = images; columns = clean, naive inverse). No model is needed.",
      declare_degrade, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto& app = *parsed->app;
  const auto task = required_tasks(options.task, app.get_name()).front();
  const auto noise = noise_model(options.noise);
  const auto seed = options.seed;
  const bool force = options.output.force;
  const auto out = output_folder(options.output, app.get_name());
  const auto inputs = gather_inputs(options.input.paths, options.input.test_set, 0, 0);

  std::vector<fs::path> planned{out / "grid.png"};
  for (const auto& input : inputs)
    for (const char* suffix : {"_measurement.png", "_naive.png", "_mask.png", "_kernel.png"})
      planned.push_back(out / (input.name + suffix));
  // The inputs may differ in size: each image's operator is checked against its own shape, before anything is
  // written; one plan per shape, so that a task's files (masks, a blur network) are read once per shape.
  std::map<Shape, TaskPlan> plans;
  std::vector<AnyOperator> operators;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& image = inputs[i].image;
    const Shape shape{image.size(1), image.size(2), image.size(3)};
    auto plan = plans.find(shape);
    if (plan == plans.end())
      plan = plans.emplace(shape, TaskPlan(task, options.task.parameters, shape, seed)).first;
    operators.push_back(plan->second.batch(static_cast<int64_t>(i), 1, 1));
  }
  prepare_output_folder(out);
  check_no_overwrite(planned, force);
  std::vector<std::vector<torch::Tensor>> rows;
  bool shows_naive = false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& input = inputs[i];
    const auto& op = operators[i];
    const auto y = measure(op, noise, input.image, seed, static_cast<int64_t>(i));
    save_image(measurement_to_save(op, y), (out / (input.name + "_measurement.png")).string(), force);
    const auto naive = naive_inverse(op, y);
    shows_naive = naive.defined();  // the measurement picture is the naive inverse where there is one
    if (naive.defined())
      save_image(naive.clamp(-1.0, 1.0), (out / (input.name + "_naive.png")).string(), force);
    if (const auto picture = operator_picture(op, 0); picture.image.defined())
      save_image(picture.image, (out / fmt::format("{}_{}.png", input.name, picture.kind)).string(), force);
    rows.push_back({input.image, measurement_picture(op, y)});
  }
  save_grid(rows, (out / "grid.png").string(),
            GridOptions{}.overwrite(force).column_labels({"truth", shows_naive ? "naive" : "measurement"}));
  fmt::print("{}: {} measurement(s) with noise {} written to {}\n", task, inputs.size(),
             noise_description(options.noise), out.string());
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// sample
// ---------------------------------------------------------------------------------------------------------------

/// The options of `diffpost sample`.
struct SampleOptions {
  int64_t num_images = 16;
  SamplingOptions sampling{"250", "ddpm", 0.0, 0, 16};
  ModelOptions model;
  OutputOptions output;
};

void declare_sample(CLI::App& app, SampleOptions& o) {
  app.add_option("--num-images", o.num_images, "number of samples")
      ->type_name("N")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  add_sampling_options(app, o.sampling);
  add_model_options(app, o.model);
  add_output_options(app, o.output);
}

int run_sample(int argc, char** argv) {
  const auto parsed = parse_command<SampleOptions>(
      "diffpost sample",
      "Draws unconditional samples from the prior and writes sample_<k>.png and grid.png (8 per row). A\n"
      "latent diffusion model samples latents and decodes them.",
      declare_sample, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto& app = *parsed->app;
  const auto total = options.num_images;
  const auto seed = options.sampling.seed;
  const auto batch_size = options.sampling.batch;
  const bool force = options.output.force;
  const auto out = output_folder(options.output, app.get_name());
  set_threads(options.model);
  const auto files = resolve_prior(options.model);
  const auto sampler = make_sampler(options.model, options.sampling, files);
  const auto steps = std::visit([](const auto& s) { return s.schedule().num_steps(); }, sampler);
  const auto runtime = resolve_runtime(options.model.device, options.model.precision);
  auto prior = load_prior(files, runtime);
  const auto shape = prior.network_shape();
  std::vector<fs::path> planned{out / "grid.png"};
  for (int64_t k = 0; k < total; ++k) planned.push_back(out / fmt::format("sample_{:04}.png", k));
  prepare_output_folder(out);
  check_no_overwrite(planned, force);

  auto generator = make_generator(seed, runtime.device);
  const int64_t batches = (total + batch_size - 1) / batch_size;
  ProgressBar progress(batches * steps, "sample");
  std::vector<torch::Tensor> samples;
  for (int64_t first = 0; first < total; first += batch_size) {
    const int64_t n = std::min(batch_size, total - first);
    const int64_t done_before = (first / batch_size) * steps;
    const StepCallback callback = [&](const StepInfo& info) { progress.update(done_before + info.step); };
    auto batch = std::visit(
        [&](const auto& s) {
          return sample_unconditional(prior.model, s, {n, shape[0], shape[1], shape[2]}, generator,
                                      torch::TensorOptions().dtype(torch::kFloat32).device(runtime.device),
                                      callback);
        },
        sampler);
    if (prior.first_stage) {
      torch::NoGradGuard no_grad;
      batch = prior.first_stage->decode(batch);
    }
    batch = batch.to(torch::kCPU).clamp(-1.0, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      save_image(batch.narrow(0, i, 1), (out / fmt::format("sample_{:04}.png", first + i)).string(), force);
      samples.push_back(batch.narrow(0, i, 1));
    }
  }
  progress.finish();
  std::vector<std::vector<torch::Tensor>> rows;
  for (size_t k = 0; k < samples.size(); k += 8)
    rows.emplace_back(samples.begin() + static_cast<std::ptrdiff_t>(k),
                      samples.begin() + static_cast<std::ptrdiff_t>(std::min(k + 8, samples.size())));
  save_grid(rows, (out / "grid.png").string(), GridOptions{}.overwrite(force));
  fmt::print("{} samples ({} steps) written to {}\n", total, steps, out.string());
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// denoise
// ---------------------------------------------------------------------------------------------------------------

/// The options of `diffpost denoise`.
struct DenoiseOptions {
  double sigma = 0.2;
  bool add_noise = false;
  uint64_t seed = 0;
  int64_t batch = 64;
  InputOptions input;
  ModelOptions model;
  OutputOptions output;
};

void declare_denoise(CLI::App& app, DenoiseOptions& o) {
  app.add_option("--sigma", o.sigma, "noise standard deviation on the [-1, 1] scale")
      ->type_name("X")
      ->check(finite_in(0.0, 100.0))
      ->capture_default_str();
  app.add_flag("--add-noise", o.add_noise,
               "the inputs are clean: add the noise first (implied by --test-set)");
  app.add_option("--seed", o.seed, "random seed of the added noise")->type_name("N")->capture_default_str();
  app.add_option("--batch", o.batch, "images per batch")
      ->type_name("N")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  add_input_options(app, o.input);
  add_model_options(app, o.model);
  add_output_options(app, o.output);
}

int run_denoise(int argc, char** argv) {
  const auto parsed = parse_command<DenoiseOptions>(
      "diffpost denoise",
      "One-step Tweedie denoising: treats a noisy image y = x + sigma n as the diffusion state at the\n"
      "step whose noise-to-signal ratio is sigma (x_t = sqrt(abar_t) y) and returns E[x_0 | x_t] from one\n"
      "model evaluation. Writes <name>_denoised.png, <name>_noisy.png (with --add-noise), grid.png and,\n"
      "when the clean image is known (--add-noise), metrics.csv for the noisy and the denoised image.",
      declare_denoise, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto& app = *parsed->app;
  const auto sigma = options.sigma;
  const bool add_noise = options.add_noise || options.input.test_set > 0;
  const auto seed = options.seed;
  const auto batch_size = options.batch;
  const bool force = options.output.force;
  const auto out = output_folder(options.output, app.get_name());
  set_threads(options.model);
  const auto files = resolve_prior(options.model);
  if (files.latent)
    throw UsageError(fmt::format(
        "denoise takes one network step on the image, but '{}' is a latent diffusion model, whose network "
        "denoises latents; use `diffpost restore --task denoise --method latent-daps` (or psld, resample)",
        files.checkpoint.string()));
  const auto schedule = base_schedule(options.model, files);
  const auto runtime = resolve_runtime(options.model.device, options.model.precision);
  auto prior = load_prior(files, runtime);
  const auto shape = prior.image_shape();
  const auto inputs =
      gather_inputs(options.input.paths, options.input.test_set, static_cast<int>(shape[0]), shape[1]);
  std::vector<fs::path> planned{out / "grid.png", out / "metrics.csv"};
  for (const auto& input : inputs) {
    planned.push_back(out / (input.name + "_denoised.png"));
    planned.push_back(out / (input.name + "_noisy.png"));
  }
  prepare_output_folder(out);
  check_no_overwrite(planned, force);

  const auto index = schedule.nearest_step(sigma);
  const double signal = schedule.sqrt_alphas_cumprod()[index];
  fmt::print("sigma {} -> diffusion step t = {} (noise-to-signal {:.4f})\n", sigma,
             schedule.model_timestep(index), schedule.sqrt_recipm1_alphas_cumprod()[index]);
  const auto count = static_cast<int64_t>(inputs.size());
  ProgressBar progress(count, "denoise");
  Scores noisy_scores, denoised_scores;
  std::string csv = "image,method,psnr,ssim\n";
  std::vector<std::vector<torch::Tensor>> rows;
  std::vector<std::vector<std::string>> captions;  // PSNR against the clean image, when there is one
  const GaussianLikelihood noise(sigma);
  for (int64_t first = 0; first < count; first += batch_size) {
    const int64_t n = std::min(batch_size, count - first);
    std::vector<torch::Tensor> images;
    for (int64_t i = first; i < first + n; ++i) images.push_back(inputs[i].image);
    const auto clean = torch::cat(images, 0);
    auto noisy = clean;
    if (add_noise) {
      std::vector<torch::Tensor> parts;
      for (int64_t i = 0; i < n; ++i) {
        auto generator = make_generator(image_seed(seed, first + i, SeedStream::measurement_noise));
        parts.push_back(noise.sample(clean.narrow(0, i, 1), generator));
      }
      noisy = torch::cat(parts, 0);
    }
    const auto denoised = tweedie_denoise(prior.model, schedule, (signal * noisy).to(runtime.device), index)
                              .to(torch::kCPU)
                              .clamp(-1.0, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      const auto& name = inputs[first + i].name;
      const auto noisy_i = noisy.narrow(0, i, 1).clamp(-1.0, 1.0), denoised_i = denoised.narrow(0, i, 1);
      save_image(denoised_i, (out / (name + "_denoised.png")).string(), force);
      if (add_noise) {
        save_image(noisy_i, (out / (name + "_noisy.png")).string(), force);
        const auto clean_i = clean.narrow(0, i, 1);
        Scores a, b;
        a.add(noisy_i, clean_i);
        b.add(denoised_i, clean_i);
        noisy_scores.add(noisy_i, clean_i);
        denoised_scores.add(denoised_i, clean_i);
        csv += fmt::format("{},noisy,{},{}\n{},tweedie,{},{}\n", name, csv_number(a.psnr[0]),
                           csv_number(a.ssim[0]), name, csv_number(b.psnr[0]), csv_number(b.ssim[0]));
        rows.push_back({clean_i, noisy_i, denoised_i});
        captions.push_back({kPsnrCaptionTitle, psnr_caption(a.psnr[0]), psnr_caption(b.psnr[0])});
      } else {
        rows.push_back({noisy_i, denoised_i});
      }
    }
    progress.update(first + n);
  }
  progress.finish();
  auto grid_options = GridOptions{}.overwrite(force).cell_captions(captions);
  if (add_noise)
    grid_options.column_labels({"clean", "noisy", "denoised"});
  else
    grid_options.column_labels({"noisy", "denoised"});
  save_grid(rows, (out / "grid.png").string(), grid_options);
  if (add_noise) {
    for (const auto& [method, scores] :
         {std::pair{"noisy", &noisy_scores}, std::pair{"tweedie", &denoised_scores}}) {
      const auto [pm, ps] = mean_std(scores->psnr);
      const auto [sm, ss] = mean_std(scores->ssim);
      csv += fmt::format("mean,{},{},{}\nstd,{},{},{}\n", method, csv_number(pm), csv_number(sm), method,
                         csv_number(ps), csv_number(ss));
    }
    write_text(out / "metrics.csv", csv, force);
    fmt::print("noisy: {}\ntweedie: {}\n", noisy_scores.summary(), denoised_scores.summary());
  }
  fmt::print("{} image(s) denoised into {}\n", count, out.string());
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------------------------------------------

/// The options of `diffpost init`.
struct InitOptions {
  std::string config;
  std::string out;
  uint64_t seed = 0;
  bool force = false;
  bool verbose = false;
};

void declare_init(CLI::App& app, InitOptions& o) {
  app.add_option("--config", o.config, "model configuration YAML")->type_name("FILE")->required();
  app.add_option("--out", o.out, "checkpoint to write")->type_name("FILE")->required();
  app.add_option("--seed", o.seed, "random seed of the initialisation")
      ->type_name("N")
      ->capture_default_str();
  app.add_flag("--force", o.force, "overwrite an existing checkpoint");
  app.add_flag("--verbose", o.verbose, "print full error messages");
}

int run_init(int argc, char** argv) {
  const auto parsed = parse_command<InitOptions>(
      "diffpost init",
      "Writes a randomly initialised checkpoint for a model configuration (the reference ADM\n"
      "initialisation, seeded), for testing a pipeline end to end before a trained model exists.",
      declare_init, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto model_options = read_adm_model_config(options.config).options;
  const fs::path out(options.out);
  check_no_overwrite({out}, options.force);
  torch::manual_seed(options.seed);
  AdmUNet model(model_options);
  save_checkpoint(*model, out, SaveOptions{}.overwrite(options.force));
  fmt::print("wrote {} ({} parameters)\n", out.string(), state_dict(*model).numel());
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// describe
// ---------------------------------------------------------------------------------------------------------------

/// The options of `diffpost describe`.
struct DescribeOptions {
  std::string model;
  std::string config;
  std::string autoencoder;
  std::string autoencoder_config;
  bool verbose = false;
};

void declare_describe(CLI::App& app, DescribeOptions& o) {
  app.add_option("model", o.model,
                 "ADM UNet checkpoint, a diffusers folder or a latent diffusion checkpoint; default: the "
                 "bundled Fashion-MNIST prior")
      ->type_name("PATH");
  app.add_option("--config", o.config,
                 "the checkpoint's configuration YAML, ADM or CompVis LDM (default: its .yaml twin)")
      ->type_name("FILE");
  app.add_option("--autoencoder", o.autoencoder, "a latent diffusion model's autoencoder checkpoint")
      ->type_name("FILE");
  app.add_option("--autoencoder-config", o.autoencoder_config, "the --autoencoder checkpoint's config")
      ->type_name("FILE");
  app.add_flag("--verbose", o.verbose, "print full error messages");
}

/// The number of scalars in `module`'s parameters.
int64_t parameter_count(torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& parameter : module.parameters()) count += parameter.numel();
  return count;
}

int run_describe(int argc, char** argv) {
  const auto parsed = parse_command<DescribeOptions>(
      "diffpost describe",
      "Loads a model as restore, eval, sample and denoise would (--model PATH) and prints its\n"
      "configuration: the image shape it works on, the network's options, its parameter count and, for\n"
      "a diffusers folder, the scheduler read from the folder; for a latent diffusion model, the UNet,\n"
      "the autoencoder, the latent shape and the schedule.",
      declare_describe, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto files =
      resolve_prior(options.model, options.config, options.autoencoder, options.autoencoder_config);
  if (files.latent) {
    const auto shape = prior_image_shape(files);
    try {
      const auto ldm = load_latent_diffusion(files.checkpoint, latent_model_config(files),
                                             LatentDiffusionOptions{}
                                                 .autoencoder(files.autoencoder)
                                                 .autoencoder_config(files.autoencoder_config));
      const auto latent = ldm.first_stage().latent_shape({1, shape[0], shape[1], shape[2]});
      auto unet = ldm.unet();
      auto autoencoder = ldm.autoencoder();
      fmt::print(
          "{}\n  images {}x{}x{}, latents {}x{}x{} (channels x height x width)\n  {} UNet parameters, {} "
          "autoencoder parameters\n",
          ldm.describe(), shape[0], shape[1], shape[2], latent[1], latent[2], latent[3],
          parameter_count(*unet), parameter_count(*autoencoder));
    } catch (const c10::Error& e) {
      throw UsageError(first_line_of(e));
    }
    return 0;
  }
  auto prior = load_prior(files);
  const auto shape = prior.image_shape();
  if (files.diffusers) {
    const auto pipeline = load_diffusers_pipeline(files.checkpoint);
    fmt::print("diffusers folder {}\n  images {}x{}x{} (channels x height x width)\n  {}\n  {} parameters\n",
               files.checkpoint.string(), shape[0], shape[1], shape[2], pipeline.describe(),
               parameter_count(prior.model.module()));
  } else {
    fmt::print(
        "ADM UNet checkpoint {} with config {}\n  images {}x{}x{} (channels x height x width)\n  {}\n"
        "  {} parameters; noise schedule from --beta-schedule (linear or cosine, 1000 steps)\n",
        files.checkpoint.string(), files.config.string(), shape[0], shape[1], shape[2],
        read_adm_model_config(files.config).options, parameter_count(prior.model.module()));
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// merge
// ---------------------------------------------------------------------------------------------------------------

int run_merge(int argc, char** argv) {
  auto app = make_app(
      "diffpost merge",
      "Combines the shards of a sharded restore or eval run (--shard) in DIR into the files a single\n"
      "run writes (summary.md, metrics.csv and grids; or results.csv, per_image.csv, results.md and\n"
      "grids), from the shards' records and the run's stored settings. Refuses missing or overlapping\n"
      "shards, naming them.");
  std::string dir;
  bool verbose = false;
  app->add_option("dir", dir, "the --out folder of the shards")->type_name("DIR")->required();
  app->add_flag("--verbose", verbose, "print full error messages");
  if (!parse(*app, argc, argv)) return 0;
  const auto folder = RunFolder::existing(dir);
  const auto& command = folder.settings().command;
  if (command == "restore") return merge_restore(folder);
  if (command == "eval") return merge_eval(folder);
  throw UsageError(fmt::format("'{}' holds a run of '{}', which has no shards", dir, command));
}

// ---------------------------------------------------------------------------------------------------------------

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
};

const std::vector<Command>& commands() {
  static const std::vector<Command> list{
      {"restore", "degrade images and restore them (DPS or --method); PSNR/SSIM against the naive inverse",
       run_restore},
      {"degrade", "make measurements (operator + noise) from clean images", run_degrade},
      {"sample", "unconditional samples from the prior", run_sample},
      {"denoise", "one-step Tweedie denoising of noisy images", run_denoise},
      {"eval", "rank restoration methods on tasks x noise: PSNR, SSIM, Frechet distance; sweeps", run_eval},
      {"score", "PSNR, SSIM, LPIPS, FID and KID between two folders of images, paired by file name",
       run_score_command},
      {"init", "write a randomly initialised checkpoint for a config (for testing)", run_init},
      {"describe", "print a model's configuration (ADM checkpoint or diffusers folder)", run_describe},
      {"merge", "combine the shards of a sharded restore or eval run into its summary files", run_merge},
  };
  return list;
}

void print_overview(std::FILE* stream) {
  std::fputs(
      "Usage: diffpost COMMAND [options]   (diffpost COMMAND --help for its options)\n\n"
      "Solves noisy inverse problems in imaging with Diffusion Posterior Sampling and a diffusion prior\n"
      "(by default the bundled Fashion-MNIST 28x28 prior).\n\nCommands:\n",
      stream);
  for (const auto& c : commands()) std::fprintf(stream, "  %-9s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  diffpost::install_caching_cpu_allocator();  // reuse freed tensor memory instead of faulting in fresh pages
  if (argc < 2) {
    print_overview(stderr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview(stdout);
    return 0;
  }
  const Command* command = nullptr;
  for (const auto& c : commands())
    if (name == c.name) command = &c;
  if (!command) {
    std::fprintf(stderr,
                 "diffpost: error: unknown command '%s' (commands: restore, degrade, sample, denoise, eval, "
                 "score, init, describe, merge)\n",
                 name.c_str());
    return 2;
  }
  bool verbose = false;
  for (int i = 2; i < argc; ++i) verbose = verbose || std::string(argv[i]) == "--verbose";
  // Errors are one line: the first line of the message (the rest with --verbose), never a backtrace.
  const auto fail = [&](std::string message) {
    if (!verbose) message = message.substr(0, message.find('\n'));
    std::fprintf(stderr, "diffpost %s: error: %s\n", command->name, message.c_str());
    return 1;
  };
  try {
    return command->run(argc, argv);
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "diffpost %s: %s\n", command->name, e.what());
    return 130;
  } catch (const UsageError& e) {
    return fail(e.what());
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
