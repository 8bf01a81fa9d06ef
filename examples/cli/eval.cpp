// diffpost eval: ranks restoration methods on the same measurements. Every method sees the same images,
// masks, kernels and noise (all drawn from per-image seeds), and is scored by PSNR, SSIM and the Frechet
// distance between classifier features of its restorations and of the ground truth.
#include <diffpost/dps.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/methods.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/models/classifier.hpp>

#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.hpp"
#include "common.hpp"
#include "files.hpp"
#include "methods.hpp"
#include "model.hpp"
#include "options.hpp"
#include "tasks.hpp"

namespace diffpost::cli {
namespace {

/// The flags a sweep may vary, one at a time.
const std::vector<std::string>& sweepable_flags() {
  static const std::vector<std::string> flags{"scale",          "scale-schedule",
                                              "sigma",          "noise",
                                              "poisson-rate",   "steps",
                                              "sampler",        "eta",
                                              "t-star",         "ald-scale",
                                              "ald-gamma",      "box-size",
                                              "drop-fraction",  "factor",
                                              "diffpir-lambda", "diffpir-zeta",
                                              "ddnm-eta",       "pigdm-eta",
                                              "ddrm-eta",       "ddrm-eta-b",
                                              "daps-ode-steps", "daps-langevin-steps",
                                              "daps-step-size", "daps-tau"};
  return flags;
}

/// --sweep FLAG=V1,V2,...: the flag and its values, as given.
struct SweepSpec {
  std::string flag;
  std::vector<std::string> values;

  static SweepSpec parse(const std::string& spec) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw UsageError(fmt::format("--sweep expects FLAG=V1,V2,..., got '{}'", spec));
    SweepSpec sweep{spec.substr(0, eq), split_list(spec.substr(eq + 1))};
    const auto& flags = sweepable_flags();
    if (std::find(flags.begin(), flags.end(), sweep.flag) == flags.end())
      throw UsageError(
          fmt::format("--sweep: '{}' cannot be swept; sweepable: {}", sweep.flag, fmt::join(flags, ", ")));
    if (sweep.values.empty()) throw UsageError("--sweep has no values");
    return sweep;
  }
};

/// The options of `diffpost eval`.
struct EvalOptions {
  TaskOptions task;
  NoiseOptions noise;
  std::vector<std::string> methods{"dps", "mcg", "score-sde", "score-ald", "sdedit"};
  MethodSettings settings;
  std::optional<SweepSpec> sweep;
  std::string classifier;
  SamplingOptions sampling = restoration_sampling_defaults();
  InputOptions input;
  ModelOptions model;
  OutputOptions output;
};

std::vector<FlagGroup<EvalOptions>> eval_flags() {
  using O = EvalOptions;
  auto groups = task_groups<O>([](O& o) -> TaskOptions& { return o.task; },
                               [](O& o) -> NoiseOptions& { return o.noise; }, true);
  std::string method_help = "comma-separated methods:";
  for (const auto& method : all_methods())
    method_help += "\n" + std::string(32, ' ') + method.name + ": " + method.description;
  auto settings = [](O& o) -> MethodSettings& { return o.settings; };
  std::vector<Flag<O>> flags{{"methods", "NAME[,NAME...]", method_help,
                              fmt::format("{}", fmt::join(O{}.methods, ",")), [](O& o, const std::string& v) {
                                auto methods = unique_list(v, "--methods");
                                for (const auto& method : methods) find_method(method);
                                o.methods = std::move(methods);
                              }}};
  for (auto& flag : step_size_flags<O>(settings, "DPS and MCG step size: one number, or task=value,..."))
    flags.push_back(std::move(flag));
  for (auto& flag : method_option_flags<O>(settings)) flags.push_back(std::move(flag));
  flags.push_back({"sweep", "FLAG=V1,V2,...",
                   fmt::format("repeat the comparison for each value of one flag ({})",
                               fmt::join(sweepable_flags(), ", ")),
                   "", [](O& o, const std::string& v) { o.sweep = SweepSpec::parse(v); }});
  flags.push_back(
      {"classifier", "FILE|none",
       "classifier checkpoint for the Frechet distance; default: the bundled Fashion-MNIST classifier "
       "for 1x28x28 models, none otherwise",
       "", [](O& o, const std::string& v) { o.classifier = v; }});
  groups.push_back({"Methods", std::move(flags)});
  const auto rest = restoration_groups<O>();
  groups.insert(groups.end(), rest.begin(), rest.end());
  return groups;
}

/// One sweep point: the options with the swept flag set to one value (`value` empty when there is no sweep).
struct SweepPoint {
  std::string value;
  EvalOptions options;
};

/// The sweep points: a copy of the options per value, the swept flag set by its own setter, which checks the
/// value as the command line does.
std::vector<SweepPoint> sweep_points(const EvalOptions& options) {
  if (!options.sweep) return {{"", options}};
  const auto flags = all_flags(eval_flags());
  const auto flag =
      std::find_if(flags.begin(), flags.end(), [&](const auto& f) { return f.name == options.sweep->flag; });
  std::vector<SweepPoint> points;
  for (const auto& value : options.sweep->values) {
    points.push_back({value, options});
    flag->set(points.back().options, value);
  }
  return points;
}

/// Scores of one method on one task at one sweep point.
struct Row {
  std::string value;  // sweep value
  std::string task;
  std::string method;
  Scores scores;
  double frechet = NAN;
  double seconds = 0.0;
  NetworkCost cost;  ///< network forwards and backwards per image (none for the naive inverse)
};

/// Features for the Frechet distance: a classifier's penultimate layer, or none.
struct FeatureExtractor {
  std::optional<ImageClassifier> classifier;
  fs::path path;

  [[nodiscard]] torch::Tensor features(const std::vector<torch::Tensor>& images) const {
    torch::NoGradGuard no_grad;
    auto network = *classifier;  // a holder: shares the module
    std::vector<torch::Tensor> parts;
    for (size_t first = 0; first < images.size(); first += 256) {
      const auto last = std::min(images.size(), first + 256);
      const std::vector<torch::Tensor> chunk(images.begin() + static_cast<std::ptrdiff_t>(first),
                                             images.begin() + static_cast<std::ptrdiff_t>(last));
      parts.push_back(network->features(torch::cat(chunk, 0)));
    }
    return torch::cat(parts, 0);
  }
};

/// The classifier for the Frechet distance: --classifier FILE, "none", or by default the bundled
/// Fashion-MNIST classifier when the model works on 1 x 28 x 28 images (otherwise none).
FeatureExtractor load_feature_extractor(const std::string& flag, const Shape& shape) {
  FeatureExtractor extractor;
  if (flag == "none") return extractor;
  const auto options = ImageClassifierOptions{}.in_channels(shape[0]).image_size(shape[1]);
  std::error_code error;
  if (flag.empty()) {
    if (shape != Shape{1, 28, 28}) return extractor;
    for (const auto& directory : prior_search_directories()) {
      const auto candidate = directory / kBundledClassifier;
      if (fs::is_regular_file(candidate, error)) {
        extractor.path = candidate;
        break;
      }
    }
    if (extractor.path.empty())
      throw UsageError(fmt::format("the bundled classifier {} was not found; pass --classifier FILE or none",
                                   kBundledClassifier));
  } else {
    extractor.path = flag;
    if (!fs::is_regular_file(extractor.path, error))
      throw UsageError(fmt::format("cannot read classifier '{}': no such file", flag));
  }
  ImageClassifier classifier(options);
  try {
    load_checkpoint(classifier, extractor.path);
  } catch (const c10::Error& e) {
    std::string message = e.what_without_backtrace();
    throw UsageError(fmt::format("classifier '{}' does not fit {}x{}x{} images: {}", extractor.path.string(),
                                 shape[0], shape[1], shape[2], message.substr(0, message.find('\n'))));
  }
  classifier->eval();
  extractor.classifier = classifier;
  return extractor;
}

std::string cell(const std::vector<double>& values, int digits) {
  const auto [mean, std] = mean_std(values);
  if (!std::isfinite(mean)) return "-";
  return fmt::format("{:.{}f} ± {:.{}f}", mean, digits, std, digits);
}

/// The Markdown table: one row per sweep value x task x method; the best mean of each metric within a task
/// (and sweep value) in bold.
std::string markdown_table(const std::vector<Row>& rows, const std::string& swept) {
  std::string text =
      swept.empty() ? "| task | method | PSNR (dB) | SSIM | FD | network fwd / bwd | time (s) "
                      "|\n|---|---|---|---|---|---|---|\n"
                    : fmt::format(
                          "| {} | task | method | PSNR (dB) | SSIM | FD | network fwd / bwd | time (s) |\n"
                          "|---|---|---|---|---|---|---|---|\n",
                          swept);
  for (size_t i = 0; i < rows.size();) {
    size_t end = i;
    while (end < rows.size() && rows[end].task == rows[i].task && rows[end].value == rows[i].value) ++end;
    double best_psnr = -INFINITY, best_ssim = -INFINITY, best_fd = INFINITY;
    for (size_t j = i; j < end; ++j) {
      best_psnr = std::max(best_psnr, mean_std(rows[j].scores.psnr).first);
      best_ssim = std::max(best_ssim, mean_std(rows[j].scores.ssim).first);
      if (std::isfinite(rows[j].frechet)) best_fd = std::min(best_fd, rows[j].frechet);
    }
    for (size_t j = i; j < end; ++j) {
      const auto& r = rows[j];
      const auto bold = [](bool best, const std::string& s) { return best ? "**" + s + "**" : s; };
      const auto psnr = bold(mean_std(r.scores.psnr).first == best_psnr, cell(r.scores.psnr, 2));
      const auto ssim = bold(mean_std(r.scores.ssim).first == best_ssim, cell(r.scores.ssim, 3));
      const auto fd = std::isfinite(r.frechet) ? bold(r.frechet == best_fd, fmt::format("{:.2f}", r.frechet))
                                               : std::string("-");
      if (!swept.empty()) text += fmt::format("| {} ", r.value);
      const auto cost =
          r.method == "naive" ? std::string("-") : fmt::format("{} / {}", r.cost.forwards, r.cost.backwards);
      text += fmt::format("| {} | {} | {} | {} | {} | {} | {:.1f} |\n", r.task, r.method, psnr, ssim, fd,
                          cost, r.seconds);
    }
    i = end;
  }
  return text;
}

}  // namespace

int run_eval(int argc, char** argv) {
  auto app = make_app(
      "diffpost eval",
      "Compares restoration methods on the same measurements: every method restores the same degraded\n"
      "images (same masks, kernels and noise), and is scored against the ground truth by PSNR, SSIM and the\n"
      "Frechet distance (FD) between features of a classifier (by default the bundled Fashion-MNIST one),\n"
      "like FID with Inception features. The naive inverse of each task is scored as a row too. With\n"
      "--sweep FLAG=V1,V2,... the whole comparison is repeated for each value of one flag.\n"
      "Writes results.csv (mean/std per sweep value x task x method), per_image.csv, results.md (Markdown\n"
      "table, best per task in bold) and one grid PNG per task and sweep value (first 8 images; columns:\n"
      "truth, measurement, naive inverse, then the methods in order).");
  EvalOptions options;
  declare(*app, options, eval_flags());
  declare_inputs(*app, options.input);
  if (!parse(*app, argc, argv)) return 0;

  // Everything is checked before the first file is written.
  const auto& tasks = required_tasks(options.task, app->get_name());
  const auto& methods = options.methods;
  const auto swept = options.sweep ? options.sweep->flag : std::string{};
  if (!swept.empty() && given(*app, swept))
    throw UsageError(fmt::format("--{} is given and also swept; drop one of them", swept));
  const auto points = sweep_points(options);
  const auto seed = options.sampling.seed;
  const auto batch_size = options.sampling.batch;
  const bool force = options.output.force;
  const auto out = output_folder(options.output, app->get_name());
  set_threads(options.model);

  auto prior = load_prior(resolve_prior(options.model.model, options.model.config));

  const auto shape = prior.image_shape();
  const auto extractor = load_feature_extractor(options.classifier, shape);
  const auto inputs =
      gather_inputs(options.input.paths, options.input.test_set, static_cast<int>(shape[0]), shape[1]);
  const auto count = static_cast<int64_t>(inputs.size());
  if (extractor.classifier && count < 2)
    throw UsageError("the Frechet distance needs at least 2 images; add images or pass --classifier none");
  for (const auto& point : points) {
    const auto noise = noise_model(point.options.noise);
    for (const auto& task : tasks) {
      const auto op = make_operator(task, point.options.task.parameters, shape, seed, 0, 1, 1);
      for (const auto& method : methods) {
        const auto reason = missing_capability(method, op, noise);
        if (!reason.empty()) throw cannot_run(method, task, reason);
      }
    }
  }

  const auto suffix = [&](const SweepPoint& point) {
    return swept.empty() ? std::string{} : fmt::format("_{}={}", swept, point.value);
  };
  std::vector<fs::path> planned{out / "results.csv", out / "per_image.csv", out / "results.md"};
  for (const auto& point : points)
    for (const auto& task : tasks) planned.push_back(out / fmt::format("{}{}_grid.png", task, suffix(point)));
  prepare_output_folder(out);
  check_no_overwrite(planned, force);

  fmt::print("model {}, {} images, methods {}, tasks {}, {} threads{}\n", prior.files.checkpoint.string(),
             count, fmt::join(methods, ","), fmt::join(tasks, ","), torch::get_num_threads(),
             extractor.classifier ? ", FD features from " + extractor.path.string() : ", no FD");
  std::fflush(stdout);

  std::vector<torch::Tensor> truth_images;
  for (const auto& input : inputs) truth_images.push_back(input.image);
  // The ground truth's feature statistics, fitted once for every row's Frechet distance.
  const auto truth_statistics =
      extractor.classifier ? GaussianStatistics::of(extractor.features(truth_images)) : GaussianStatistics{};

  std::vector<Row> rows;
  std::string per_image = "sweep,value,task,method,image,psnr,ssim\n";
  for (const auto& point : points) {
    const auto& parameters = point.options.task.parameters;
    const auto noise = noise_model(point.options.noise);
    const RunSchedules schedules(point.options.model, point.options.sampling);
    for (const auto& task : tasks) {
      // The measurements, shared by all methods.
      struct Batch {
        int64_t first;
        AnyOperator op;
        torch::Tensor y;
      };
      std::vector<Batch> batches;
      for (int64_t first = 0; first < count; first += batch_size) {
        const int64_t n = std::min(batch_size, count - first);
        const auto truth = torch::cat(
            std::vector<torch::Tensor>(truth_images.begin() + first, truth_images.begin() + first + n), 0);
        auto op = make_operator(task, parameters, shape, seed, first, n, 1);
        auto y = measure(op, noise, truth, seed, first);
        batches.push_back({first, std::move(op), std::move(y)});
      }
      std::vector<std::vector<torch::Tensor>> grid(static_cast<size_t>(std::min<int64_t>(count, 8)));
      const auto add_row = [&](Row row, const std::vector<torch::Tensor>& outputs) {
        for (int64_t i = 0; i < count; ++i) {
          row.scores.add(outputs[static_cast<size_t>(i)], truth_images[static_cast<size_t>(i)]);
          per_image += fmt::format("{},{},{},{},{},{},{}\n", swept, point.value, task, row.method,
                                   inputs[static_cast<size_t>(i)].name, csv_number(row.scores.psnr.back()),
                                   csv_number(row.scores.ssim.back()));
          if (i < static_cast<int64_t>(grid.size())) grid[static_cast<size_t>(i)].push_back(outputs[i]);
        }
        if (extractor.classifier)
          row.frechet =
              frechet_distance(GaussianStatistics::of(extractor.features(outputs)), truth_statistics);
        fmt::print("{}{} {}: {} | FD {:.2f} | {:.1f} s\n", task, suffix(point), row.method,
                   row.scores.summary(), row.frechet, row.seconds);
        std::fflush(stdout);
        rows.push_back(std::move(row));
      };

      std::vector<torch::Tensor> naive_outputs;
      bool has_naive = true;
      for (const auto& batch : batches) {
        const auto grid_end =
            std::min<int64_t>(batch.first + batch.y.size(0), static_cast<int64_t>(grid.size()));
        if (batch.first < grid_end) {
          const auto picture = measurement_picture(batch.op, batch.y);
          for (int64_t i = batch.first; i < grid_end; ++i) {
            grid[static_cast<size_t>(i)].push_back(truth_images[static_cast<size_t>(i)]);
            grid[static_cast<size_t>(i)].push_back(picture.narrow(0, i - batch.first, 1));
          }
        }
        const auto naive = naive_inverse(batch.op, batch.y);
        has_naive = has_naive && naive.defined();
        if (has_naive)
          for (int64_t i = 0; i < naive.size(0); ++i)
            naive_outputs.push_back(naive.narrow(0, i, 1).clamp(-1.0, 1.0));
      }
      if (has_naive) add_row({point.value, task, "naive"}, naive_outputs);

      for (const auto& method : methods) {
        Row row{point.value, task, method};
        const MethodRun run{method, task, point.options.settings, schedules, point.options.noise.sigma};
        const auto steps =
            with_method(run, batches.front().op, noise, [](const auto& m) { return reported_steps(m); });
        std::vector<torch::Tensor> outputs;
        ProgressBar progress(static_cast<int64_t>(batches.size()) * steps,
                             fmt::format("{}{} {}", task, suffix(point), method));
        const auto start = std::chrono::steady_clock::now();
        for (size_t b = 0; b < batches.size(); ++b) {
          const auto& batch = batches[b];
          auto generator = make_generator(image_seed(seed, batch.first, SeedStream::sampling));
          const StepCallback callback = [&](const StepInfo& info) {
            progress.update(static_cast<int64_t>(b) * steps + info.step,
                            fmt::format("batch {}/{}", b + 1, batches.size()));
          };
          const auto restored =
              with_method(run, batch.op, noise,
                          [&](const auto& m) {
                            row.cost = m.network_cost();
                            return m.sample(prior.model, batch.y, shape, generator, callback);
                          })
                  .detach()
                  .clamp(-1.0, 1.0);
          for (int64_t i = 0; i < restored.size(0); ++i) outputs.push_back(restored.narrow(0, i, 1));
        }
        progress.finish();
        row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        add_row(std::move(row), outputs);
      }
      save_grid(grid, (out / fmt::format("{}{}_grid.png", task, suffix(point))).string(),
                GridOptions{}.overwrite(force));
    }
  }

  std::string csv =
      "sweep,value,task,method,images,psnr_mean,psnr_std,ssim_mean,ssim_std,frechet,forwards,backwards,"
      "seconds\n";
  for (const auto& r : rows) {
    const auto [pm, ps] = mean_std(r.scores.psnr);
    const auto [sm, ss] = mean_std(r.scores.ssim);
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{:.1f}\n", swept, r.value, r.task, r.method,
                       count, csv_number(pm), csv_number(ps), csv_number(sm), csv_number(ss),
                       std::isfinite(r.frechet) ? fmt::format("{:.4f}", r.frechet) : "", r.cost.forwards,
                       r.cost.backwards, r.seconds);
  }
  const auto table = markdown_table(rows, swept);
  const auto markdown = fmt::format(
      "# diffpost eval\n\n`{}`\n\n{} images, seed {}, model `{}`; mean ± sample standard deviation over the "
      "images; FD = Frechet distance of classifier features to the ground truth ({}); network fwd / bwd = "
      "network evaluations and backpropagations per image; best per task in bold.\n\n{}",
      command_line(argc, argv), count, seed, prior.files.checkpoint.filename().string(),
      extractor.classifier ? extractor.path.filename().string() : "not computed", table);
  write_text(out / "results.csv", csv, force);
  write_text(out / "per_image.csv", per_image, force);
  write_text(out / "results.md", markdown, force);
  fmt::print("\n{}\nwrote {}, {}, {}\n", table, (out / "results.md").string(), (out / "results.csv").string(),
             (out / "per_image.csv").string());
  return 0;
}

}  // namespace diffpost::cli
