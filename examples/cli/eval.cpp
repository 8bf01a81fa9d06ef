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
#include <set>
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
#include "paper_metrics.hpp"
#include "prepared_method.hpp"
#include "run_folder.hpp"
#include "tasks.hpp"

namespace diffpost::cli {
namespace {

/// The groups of flags a sweep may vary, one flag at a time: what configures the restoration, not what is
/// restored (tasks, methods, images, seed, model) or where it goes.
bool sweepable(const CLI::Option& option) {
  static const std::set<std::string> groups{"Task parameters", "Noise", "Method options", "Sampling"};
  return groups.contains(option.get_group());
}

/// --sweep FLAG=V1,V2,...: the flag and its values, as given.
struct SweepSpec {
  std::string flag;
  std::vector<std::string> values;
};

/// The options of `diffpost eval`.
struct EvalOptions {
  TaskOptions task;
  NoiseOptions noise;
  std::vector<std::string> methods{"dps", "mcg", "score-sde", "score-ald", "sdedit"};
  MethodSettings method_settings;
  std::string sweep;  ///< FLAG=V1,V2,... as given; read by parse_sweep
  std::string classifier;
  SamplingOptions sampling = restoration_sampling_defaults();
  InputOptions input;
  ModelOptions model;
  OutputOptions output;
  PaperMetricOptions metrics;
};

/// The names of the flags a sweep may vary, from a parser of `diffpost eval`.
std::vector<std::string> sweepable_flags(const CLI::App& app) {
  std::vector<std::string> names;
  for (const auto* option : app.get_options([](const CLI::Option* o) { return sweepable(*o); }))
    names.push_back(option->get_name().substr(2));
  return names;
}

void declare_eval(CLI::App& app, EvalOptions& o) {
  add_task_options(app, o.task, true);
  add_noise_options(app, o.noise);
  app.add_option("--methods", o.methods, methods_help("comma-separated methods:"))
      ->type_name("NAME[,NAME...]")
      ->delimiter(',')
      ->allow_extra_args(false)
      ->check(CLI::IsMember(method_names()))
      ->default_str(fmt::format("{}", fmt::join(o.methods, ",")))
      ->group("Methods");
  add_method_options(app, o.method_settings);
  add_restoration_options(app, o);
  app.add_option("--sweep", o.sweep,
                 fmt::format("repeat the comparison for each value of one flag ({})",
                             fmt::join(sweepable_flags(app), ", ")))
      ->type_name("FLAG=V1,V2,...")
      ->group("Methods");
  app.add_option(
         "--classifier", o.classifier,
         "classifier checkpoint for the Frechet distance; default: the bundled Fashion-MNIST classifier for "
         "1x28x28 models, none otherwise")
      ->type_name("FILE|none")
      ->group("Methods");
  PaperMetricOptions::add_options(app, o.metrics);
}

/// The sweep of --sweep: a flag a sweep may vary, and its values.
std::optional<SweepSpec> parse_sweep(const CLI::App& app, const std::string& text) {
  if (text.empty()) return std::nullopt;
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw UsageError(fmt::format("--sweep expects FLAG=V1,V2,..., got '{}'", text));
  SweepSpec sweep{text.substr(0, eq), split_list(text.substr(eq + 1))};
  const auto flags = sweepable_flags(app);
  if (std::find(flags.begin(), flags.end(), sweep.flag) == flags.end())
    throw UsageError(
        fmt::format("--sweep: '{}' cannot be swept; sweepable: {}", sweep.flag, fmt::join(flags, ", ")));
  if (sweep.values.empty()) throw UsageError("--sweep has no values");
  if (given(app, sweep.flag))
    throw UsageError(fmt::format("--{} is given and also swept; drop one of them", sweep.flag));
  return sweep;
}

constexpr const char* kEvalName = "diffpost eval";
constexpr const char* kEvalDescription =
    "Compares restoration methods on the same measurements: every method restores the same degraded\n"
    "images (same masks, kernels and noise), and is scored against the ground truth by PSNR, SSIM and the\n"
    "Frechet distance (FD) between features of a classifier (by default the bundled Fashion-MNIST one),\n"
    "like FID with Inception features, next to its network evaluations per image. The naive inverse of\n"
    "each task is scored as a row too. With --sweep FLAG=V1,V2,... the whole comparison is repeated for\n"
    "each value of one flag. Writes results.csv (mean/std per sweep value x task x method), per_image.csv,\n"
    "results.md (Markdown table, best per task in bold) and one grid PNG per task and sweep value (first 8\n"
    "images; labelled columns: truth, naive inverse (phase retrieval: the measurement), then the methods\n"
    "in order; the PSNR under each restoration). Runs can be split over processes (--shard), resumed\n"
    "(--resume) and merged (diffpost merge).";

/// One sweep point: the options with the swept flag set to one value (`value` empty when there is no sweep).
struct SweepPoint {
  std::string value;
  EvalOptions options;
};

/// The sweep points: a copy of the options per value, the swept flag set by CLI11 as from the command line
/// (with its checks).
std::vector<SweepPoint> sweep_points(const EvalOptions& options, const std::optional<SweepSpec>& sweep) {
  if (!sweep) return {{"", options}};
  std::vector<SweepPoint> points;
  for (const auto& value : sweep->values) {
    points.push_back({value, options});
    auto app = make_app(kEvalName, kEvalDescription);
    declare_eval(*app, points.back().options);
    std::vector<std::string> arguments{value, "--" + sweep->flag};  // CLI11 takes them in reverse order
    try {
      app->parse(arguments);
    } catch (const CLI::ParseError& e) {
      throw UsageError(fmt::format("--sweep {}={}: {}", sweep->flag, value, e.what()));
    }
  }
  return points;
}

/// Scores of one method on one task at one sweep point.
struct Row {
  std::string value;  // sweep value
  std::string task;
  std::string method;
  Scores scores;
  std::vector<double> lpips;  ///< per image, with LPIPS
  SetScores set;              ///< FID and KID, with FID
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
  // LPIPS, FID and KID columns when a row has them.
  const bool with_lpips =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return !r.lpips.empty(); });
  const bool with_fid =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.set.fid.has_value(); });
  const auto paper_header = std::string(with_lpips ? " LPIPS |" : "") + (with_fid ? " FID | KID |" : "");
  const auto paper_rule = std::string(with_lpips ? "---|" : "") + (with_fid ? "---|---|" : "");
  std::string text =
      swept.empty() ? fmt::format(
                          "| task | method | PSNR (dB) | SSIM |{} FD | network fwd / bwd | time (s) "
                          "|\n|---|---|---|---|{}---|---|---|\n",
                          paper_header, paper_rule)
                    : fmt::format(
                          "| {} | task | method | PSNR (dB) | SSIM |{} FD | network fwd / bwd | time (s) |\n"
                          "|---|---|---|---|---|{}---|---|---|\n",
                          swept, paper_header, paper_rule);
  const auto kid_mean = [](const Row& r) { return r.set.kid ? r.set.kid->mean : INFINITY; };
  for (size_t i = 0; i < rows.size();) {
    size_t end = i;
    while (end < rows.size() && rows[end].task == rows[i].task && rows[end].value == rows[i].value) ++end;
    double best_psnr = -INFINITY, best_ssim = -INFINITY, best_fd = INFINITY, best_lpips = INFINITY,
           best_fid = INFINITY, best_kid = INFINITY;
    for (size_t j = i; j < end; ++j) {
      best_psnr = std::max(best_psnr, mean_std(rows[j].scores.psnr).first);
      best_ssim = std::max(best_ssim, mean_std(rows[j].scores.ssim).first);
      if (std::isfinite(rows[j].frechet)) best_fd = std::min(best_fd, rows[j].frechet);
      if (!rows[j].lpips.empty()) best_lpips = std::min(best_lpips, mean_std(rows[j].lpips).first);
      if (rows[j].set.fid) best_fid = std::min(best_fid, *rows[j].set.fid);
      best_kid = std::min(best_kid, kid_mean(rows[j]));
    }
    for (size_t j = i; j < end; ++j) {
      const auto& r = rows[j];
      const auto bold = [](bool best, const std::string& s) { return best ? "**" + s + "**" : s; };
      const auto psnr = bold(mean_std(r.scores.psnr).first == best_psnr, cell(r.scores.psnr, 2));
      const auto ssim = bold(mean_std(r.scores.ssim).first == best_ssim, cell(r.scores.ssim, 3));
      const auto fd = std::isfinite(r.frechet) ? bold(r.frechet == best_fd, fmt::format("{:.2f}", r.frechet))
                                               : std::string("-");
      std::string paper;
      if (with_lpips)
        paper += r.lpips.empty()
                     ? " - |"
                     : fmt::format(" {} |", bold(mean_std(r.lpips).first == best_lpips, cell(r.lpips, 4)));
      if (with_fid)
        paper += r.set.fid ? fmt::format(" {} | {} |", bold(*r.set.fid == best_fid, r.set.fid_text()),
                                         bold(kid_mean(r) == best_kid, r.set.kid_text()))
                           : " - | - |";
      if (!swept.empty()) text += fmt::format("| {} ", r.value);
      const auto cost =
          r.method == "naive" ? std::string("-") : fmt::format("{} / {}", r.cost.forwards, r.cost.backwards);
      text += fmt::format("| {} | {} | {} | {} |{} {} | {} | {:.1f} |\n", r.task, r.method, psnr, ssim, paper,
                          fd, cost, r.seconds);
    }
    i = end;
  }
  return text;
}

/// Images shown per task in the grids.
constexpr int64_t kGridImages = 8;

/// What eval's outputs are made from besides the records.
struct EvalPlan {
  /// One sweep point's options and what follows from them: its schedules, and its tasks' plans (parameters
  /// checked against the images).
  struct Point {
    std::string value;  ///< the swept flag's value; empty without a sweep
    EvalOptions options;
    RunSchedules schedules;
    std::vector<TaskPlan> task_plans;
  };

  EvalPlan(const EvalOptions& eval_options, std::vector<std::string> eval_tasks)
      : options(eval_options), tasks(std::move(eval_tasks)) {}

  const EvalOptions& options;
  std::vector<std::string> tasks;
  std::vector<Point> points;
  std::string swept;
  std::vector<InputImage> inputs;
  Shape shape;
  PriorFiles prior_files;
  std::string classifier_name;  ///< the FD classifier's file name, or empty without FD
  int64_t batches = 0;
  std::string command;

  [[nodiscard]] int64_t count() const { return static_cast<int64_t>(inputs.size()); }
  [[nodiscard]] int64_t first(int64_t batch) const { return batch * options.sampling.batch; }
  [[nodiscard]] int64_t size(int64_t batch) const {
    return std::min(options.sampling.batch, count() - first(batch));
  }
  [[nodiscard]] std::string suffix(const Point& point) const {
    return swept.empty() ? std::string{} : fmt::format("_{}={}", swept, point.value);
  }
  /// The record folder of one task at one sweep point.
  [[nodiscard]] std::string unit(const Point& point, size_t t) const { return tasks[t] + suffix(point); }
  [[nodiscard]] std::vector<std::string> units() const {
    std::vector<std::string> names;
    for (const auto& point : points)
      for (size_t t = 0; t < tasks.size(); ++t) names.push_back(unit(point, t));
    return names;
  }
};

/// Everything a run needs besides the model, checked before the first file is written: the sweep, the
/// inputs, and at each sweep point the tasks' parameters against the model's image shape.
EvalPlan plan_eval(const EvalOptions& options, const CLI::App& app, std::string command) {
  EvalPlan plan{options, required_tasks(options.task, app.get_name())};
  check_unique(options.methods, "--methods");
  const auto sweep = parse_sweep(app, options.sweep);
  plan.swept = sweep ? sweep->flag : std::string{};
  plan.prior_files = resolve_prior(options.model);
  for (const auto& method : options.methods)
    check_method_space(method, plan.prior_files.latent, plan.prior_files.checkpoint.string());
  plan.shape = prior_image_shape(plan.prior_files);
  plan.inputs = gather_inputs(options.input.paths, options.input.test_set, static_cast<int>(plan.shape[0]),
                              plan.shape[1]);
  for (auto& point : sweep_points(options, sweep)) {
    std::vector<TaskPlan> task_plans;
    for (const auto& task : plan.tasks)
      task_plans.emplace_back(task, point.options.task.parameters, plan.shape, options.sampling.seed);
    auto schedules = run_schedules(point.options.model, point.options.sampling, plan.prior_files);
    plan.points.push_back(
        {point.value, std::move(point.options), std::move(schedules), std::move(task_plans)});
  }
  plan.batches = (plan.count() + options.sampling.batch - 1) / options.sampling.batch;
  plan.command = std::move(command);
  return plan;
}

/// The row names of a task: the naive inverse (when the task has one), then the methods.
std::vector<std::string> row_methods(const EvalPlan& plan, const TaskPlan& task) {
  std::vector<std::string> names;
  if (task.has_naive_inverse()) names.emplace_back("naive");
  names.insert(names.end(), plan.options.methods.begin(), plan.options.methods.end());
  return names;
}

/// Runs every method on batch `batch` of task `t` at `point` and writes the batch's record: per method the
/// scores, features, seconds and network cost; the truth's features; the grid cells of its first images.
void evaluate_batch(const EvalPlan& plan, const EvalPlan::Point& point, size_t t, int64_t batch, Prior& prior,
                    const torch::Device& device, const FeatureExtractor& extractor,
                    const PaperMetrics& metrics, const RunFolder& folder, TaskProgress& progress) {
  const auto& options = point.options;
  const auto& task = plan.tasks[t];
  const auto seed = options.sampling.seed;
  const int64_t first = plan.first(batch), n = plan.size(batch);
  std::vector<torch::Tensor> images;
  for (int64_t i = first; i < first + n; ++i) images.push_back(plan.inputs[static_cast<size_t>(i)].image);
  const auto truth = torch::cat(images, 0);
  const auto noise = noise_model(options.noise);
  const auto op = point.task_plans[t].batch(first, n, 1);
  const auto y = measure(op, noise, truth, seed, first);
  const MethodRun run{task, point.task_plans[t].default_scale(), point.schedules, options.noise.sigma};
  // Each method made once for the batch; the bar counts the steps of every method on every batch.
  std::vector<PreparedMethod<PriorNetwork>> prepared;
  int64_t batch_steps = 0;
  for (const auto& method : plan.options.methods) {
    prepared.push_back(prepare_for_prior(prior, method, options.method_settings, run, 1, op, noise));
    batch_steps += prepared.back().num_steps;
  }
  progress.start(batch_steps);
  StateDict record;
  const auto values = [](const std::vector<double>& v) { return torch::tensor(v, torch::kFloat64); };
  if (extractor.classifier) record.insert("truth/features", extractor.features({truth}));
  if (metrics.has_fid()) record.insert("truth/pool3", metrics.features(truth));
  const int64_t shown = std::max<int64_t>(0, std::min(first + n, kGridImages) - first);
  std::vector<std::vector<torch::Tensor>> cells(static_cast<size_t>(shown));
  const auto picture = measurement_picture(op, y);
  for (int64_t i = 0; i < shown; ++i)
    cells[static_cast<size_t>(i)] = {truth.narrow(0, i, 1), picture.narrow(0, i, 1)};
  const auto add = [&](const std::string& method, const torch::Tensor& outputs, double seconds,
                       const NetworkCost& cost) {
    Scores scores;
    scores.add(outputs, truth);
    record.insert(method + "/psnr", values(scores.psnr));
    record.insert(method + "/ssim", values(scores.ssim));
    if (extractor.classifier) record.insert(method + "/features", extractor.features({outputs}));
    if (metrics.has_lpips()) record.insert(method + "/lpips", metrics.lpips(outputs, truth));
    if (metrics.has_fid()) record.insert(method + "/pool3", metrics.features(outputs));
    record.insert(method + "/seconds", torch::tensor(seconds, torch::kFloat64));
    record.insert(method + "/cost", torch::tensor({cost.forwards, cost.backwards}, torch::kLong));
    for (int64_t i = 0; i < shown; ++i) cells[static_cast<size_t>(i)].push_back(outputs.narrow(0, i, 1));
  };
  if (const auto naive = naive_inverse(op, y); naive.defined()) add("naive", naive.clamp(-1.0, 1.0), 0.0, {});
  const auto y_on_device = y.to(device);  // measurements are made on the CPU, the same on every device
  int64_t done = progress.done * progress.steps;
  for (size_t m = 0; m < prepared.size(); ++m) {
    const auto& method = plan.options.methods[m];
    auto generator = make_generator(image_seed(seed, first, SeedStream::sampling), device);
    const StepCallback callback = [&, before = done](const StepInfo& info) {
      InterruptGuard::check();
      progress.bar->update(before + info.step,
                           fmt::format("{} batch {}/{}", method, batch + 1, plan.batches));
    };
    const auto start = std::chrono::steady_clock::now();
    done += prepared[m].num_steps;
    const auto restored = prepared[m].sample(prior.model, y_on_device, plan.shape, generator, callback);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    add(method, restored.detach().to(torch::kCPU).clamp(-1.0, 1.0), seconds, prepared[m].network_cost);
  }
  for (int64_t i = 0; i < shown; ++i)
    for (size_t c = 0; c < cells[static_cast<size_t>(i)].size(); ++c)
      record.insert(fmt::format("grid/{}/{}", first + i, c), cells[static_cast<size_t>(i)][c]);
  folder.finish(plan.unit(point, t), batch, std::move(record), {});
}

/// Makes results.csv, per_image.csv, results.md and the grids from the records in `folder`.
void finalize_eval(const EvalPlan& plan, const RunFolder& folder) {
  const auto dir = folder.dir();
  std::vector<Row> rows;
  // per_image.csv's rows without their LPIPS cell, and that cell: the column is there when a row has LPIPS.
  std::vector<std::pair<std::string, std::optional<double>>> per_image_rows;
  for (const auto& point : plan.points) {
    for (size_t t = 0; t < plan.tasks.size(); ++t) {
      const auto& task = plan.tasks[t];
      std::vector<StateDict> records;
      for (int64_t batch = 0; batch < plan.batches; ++batch) {
        auto record = folder.finished(plan.unit(point, t), batch);
        TORCH_CHECK(record.has_value(), "the record of ", plan.unit(point, t), " batch ", batch, " vanished");
        records.push_back(std::move(*record));
      }
      const auto gather = [&](const std::string& key) {
        std::vector<torch::Tensor> parts;
        for (const auto& record : records) parts.push_back(record.at(key));
        return torch::cat(parts, 0);
      };
      const bool with_fd = records.front().contains("truth/features");
      // A paper metric is reported when every batch has it (a resumed run may mix runs with and without).
      const auto every_batch_has = [&](const std::string& key) {
        return std::all_of(records.begin(), records.end(),
                           [&](const StateDict& r) { return r.contains(key); });
      };
      const bool with_fid = every_batch_has("truth/pool3");
      const auto truth_pool3 = with_fid ? gather("truth/pool3") : torch::Tensor();
      const auto truth_statistics =
          with_fd ? GaussianStatistics::of(gather("truth/features")) : GaussianStatistics{};
      const auto methods = row_methods(plan, point.task_plans[t]);
      std::vector<std::vector<double>> method_psnr;  // per method, per image: the grid's captions
      for (const auto& method : methods) {
        Row row;
        row.value = point.value;
        row.task = task;
        row.method = method;
        const auto psnr = gather(method + "/psnr"), ssim = gather(method + "/ssim");
        const bool with_lpips = every_batch_has(method + "/lpips");
        const auto lpips = with_lpips ? gather(method + "/lpips") : torch::Tensor();
        for (int64_t i = 0; i < plan.count(); ++i) {
          row.scores.psnr.push_back(psnr[i].item<double>());
          row.scores.ssim.push_back(ssim[i].item<double>());
          if (with_lpips) row.lpips.push_back(lpips[i].item<double>());
          per_image_rows.emplace_back(
              fmt::format("{},{},{},{},{},{},{}", plan.swept, point.value, task, method,
                          plan.inputs[static_cast<size_t>(i)].name, csv_number(row.scores.psnr.back()),
                          csv_number(row.scores.ssim.back())),
              with_lpips ? std::optional(row.lpips.back()) : std::nullopt);
        }
        if (with_fid && every_batch_has(method + "/pool3"))
          row.set = SetScores::of(truth_pool3, gather(method + "/pool3"));
        if (with_fd)
          row.frechet =
              frechet_distance(GaussianStatistics::of(gather(method + "/features")), truth_statistics);
        for (const auto& record : records) row.seconds += record.at(method + "/seconds").item<double>();
        const auto cost = records.front().at(method + "/cost");
        row.cost = {cost[0].item<int64_t>(), cost[1].item<int64_t>()};
        fmt::print("{}{} {}: {}{}{} | FD {:.2f} | {:.1f} s\n", task, plan.suffix(point), method,
                   row.scores.summary(), row.lpips.empty() ? "" : ", LPIPS " + cell(row.lpips, 4),
                   row.set.fid ? fmt::format(", FID {}, KID {}", row.set.fid_text(), row.set.kid_text()) : "",
                   row.frechet, row.seconds);
        method_psnr.push_back(row.scores.psnr);
        rows.push_back(std::move(row));
      }
      // The cells are the truth, the measurement picture, then the rows' outputs (evaluate_batch). Where the
      // task has a naive inverse the measurement picture is that naive inverse (measurement_picture), so the
      // grid shows it once, in the naive inverse's column.
      const bool has_naive = point.task_plans[t].has_naive_inverse();
      std::vector<std::string> labels{"truth"};
      if (!has_naive) labels.emplace_back("measurement");
      labels.insert(labels.end(), methods.begin(), methods.end());
      std::vector<std::vector<torch::Tensor>> grid;
      std::vector<std::vector<std::string>> captions;
      for (int64_t i = 0; i < std::min(plan.count(), kGridImages); ++i) {
        const auto& record = records[static_cast<size_t>(i / plan.options.sampling.batch)];
        std::vector<torch::Tensor> row;
        for (size_t c = 0; record.contains(fmt::format("grid/{}/{}", i, c)); ++c)
          row.push_back(record.at(fmt::format("grid/{}/{}", i, c)));
        if (has_naive) row.erase(row.begin() + 1);
        std::vector<std::string> row_captions{kPsnrCaptionTitle};
        if (!has_naive) row_captions.emplace_back();
        for (const auto& psnr : method_psnr)
          row_captions.push_back(psnr_caption(psnr[static_cast<size_t>(i)]));
        grid.push_back(std::move(row));
        captions.push_back(std::move(row_captions));
      }
      save_grid(grid, (dir / fmt::format("{}{}_grid.png", task, plan.suffix(point))).string(),
                GridOptions{}.overwrite(true).column_labels(labels).cell_captions(std::move(captions)));
    }
  }
  // LPIPS, FID and KID columns when a row has them (their weights were given or found).
  const bool rows_lpips =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return !r.lpips.empty(); });
  const bool rows_fid =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.set.fid.has_value(); });
  std::string csv = fmt::format(
      "sweep,value,task,method,images,psnr_mean,psnr_std,ssim_mean,ssim_std,{}{}frechet,forwards,backwards,"
      "seconds\n",
      rows_lpips ? "lpips_mean,lpips_std," : "", rows_fid ? "fid,kid_mean,kid_std," : "");
  for (const auto& r : rows) {
    const auto [pm, ps] = mean_std(r.scores.psnr);
    const auto [sm, ss] = mean_std(r.scores.ssim);
    std::string paper;
    if (rows_lpips) {
      const auto [lm, ls] = mean_std(r.lpips);
      paper += r.lpips.empty() ? ",," : fmt::format("{},{},", csv_number(lm), csv_number(ls));
    }
    if (rows_fid)
      paper += r.set.fid ? fmt::format("{:.4f},{:.6f},{:.6f},", *r.set.fid, r.set.kid->mean, r.set.kid->std)
                         : ",,,";
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{}{},{},{},{:.1f}\n", plan.swept, r.value, r.task,
                       r.method, plan.count(), csv_number(pm), csv_number(ps), csv_number(sm), csv_number(ss),
                       paper, std::isfinite(r.frechet) ? fmt::format("{:.4f}", r.frechet) : "",
                       r.cost.forwards, r.cost.backwards, r.seconds);
  }
  const auto table = markdown_table(rows, plan.swept);
  const auto markdown = fmt::format(
      "# diffpost eval\n\n`{}`\n\n{} images, seed {}, model `{}`; mean ± sample standard deviation over the "
      "images; FD = Frechet distance of classifier features to the ground truth ({}); network fwd / bwd = "
      "network evaluations and backpropagations per image; {}best per task in bold.\n\n{}",
      plan.command, plan.count(), plan.options.sampling.seed, plan.prior_files.name(),
      plan.classifier_name.empty() ? "not computed" : plan.classifier_name,
      rows_lpips || rows_fid
          ? "LPIPS v0.1 per image (as the lpips package), FID and KID of each method's outputs "
            "against the truths (pytorch-fid's Inception pool3 features), all on the images as "
            "8-bit files; "
          : "",
      table);
  write_text(dir / "results.csv", csv, true);
  const bool any_lpips = std::any_of(per_image_rows.begin(), per_image_rows.end(),
                                     [](const auto& r) { return r.second.has_value(); });
  std::string per_image = any_lpips ? "sweep,value,task,method,image,psnr,ssim,lpips\n"
                                    : "sweep,value,task,method,image,psnr,ssim\n";
  for (const auto& [cells, lpips] : per_image_rows)
    per_image +=
        cells + (any_lpips ? "," + (lpips ? csv_number(*lpips) : std::string()) : std::string()) + "\n";
  write_text(dir / "per_image.csv", per_image, true);
  write_text(dir / "results.md", markdown, true);
  fmt::print("\n{}\nwrote {}, {}, {}\n", table, (folder.out() / "results.md").string(),
             (folder.out() / "results.csv").string(), (folder.out() / "per_image.csv").string());
}

}  // namespace

int run_eval(int argc, char** argv) {
  const auto parsed = parse_command<EvalOptions>(kEvalName, kEvalDescription, declare_eval, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto& app = *parsed->app;

  // Everything is checked before the first file is written.
  auto plan = plan_eval(options, app, canonical_command(app, "eval", argc, argv));
  const auto out = output_folder(options.output, app.get_name());
  const auto shard = options.output.shard.empty() ? Shard{} : parse_shard(options.output.shard);
  set_threads(options.model);
  const auto extractor = load_feature_extractor(options.classifier, plan.shape);
  if (extractor.classifier) plan.classifier_name = extractor.path.filename().string();
  if (extractor.classifier && plan.count() < 2)
    throw UsageError("the Frechet distance needs at least 2 images; add images or pass --classifier none");
  for (const auto& point : plan.points) {
    const auto noise = noise_model(point.options.noise);
    for (const auto& task_plan : point.task_plans) {
      for (const auto& method : options.methods) {
        const auto reason = missing_capability(method, task_plan, noise);
        if (!reason.empty()) throw cannot_run(method, task_plan.task(), reason);
      }
    }
  }
  if (!options.output.force && !options.output.resume && shard.count == 1) {
    std::vector<fs::path> planned{out / "results.csv", out / "per_image.csv", out / "results.md"};
    for (const auto& point : plan.points)
      for (const auto& task : plan.tasks)
        planned.push_back(out / fmt::format("{}{}_grid.png", task, plan.suffix(point)));
    check_no_overwrite(planned, false, true);
  }
  const auto runtime = resolve_runtime(options.model.device, options.model.precision, shard.local_rank);
  auto prior = load_prior(plan.prior_files, runtime);
  const auto metrics = PaperMetrics::load(options.metrics, plan.shape, runtime.device);
  RunFolder folder(out, run_settings(app, "eval", argc, argv, plan.batches, plan.units()), shard,
                   options.output.force, options.output.resume);

  fmt::print("model {}, {} images, methods {}, tasks {}, {} threads, on {}{}{}\n",
             plan.prior_files.description(), plan.count(), fmt::join(options.methods, ","),
             fmt::join(plan.tasks, ","), torch::get_num_threads(), runtime_description(runtime),
             extractor.classifier ? ", FD features from " + extractor.path.string() : ", no FD",
             shard.count > 1 ? fmt::format(", shard {} ({})", shard.text(), shard.origin) : std::string());
  for (const auto& note : metrics.notes()) fmt::print("{}\n", note);
  std::fflush(stdout);
  return run_batches(
      folder, options.output.force,
      [&] {
        int64_t skipped = 0;
        for (const auto& point : plan.points) {
          for (size_t t = 0; t < plan.tasks.size(); ++t) {
            int64_t mine = 0;
            for (int64_t batch = 0; batch < plan.batches; ++batch) mine += shard.owns(batch) ? 1 : 0;
            TaskProgress progress{mine, fmt::format("{}{}", plan.tasks[t], plan.suffix(point))};
            for (int64_t batch = 0; batch < plan.batches; ++batch) {
              if (!shard.owns(batch)) continue;
              InterruptGuard::check();
              if (folder.resuming() && folder.finished(plan.unit(point, t), batch)) {
                ++skipped;
              } else {
                evaluate_batch(plan, point, t, batch, prior, runtime.device, extractor, metrics, folder,
                               progress);
              }
              progress.finish_batch();
            }
            if (progress.bar) progress.bar->finish();
          }
        }
        return skipped;
      },
      [&] {
        finalize_eval(plan, folder);
        return 0;
      });
}

int merge_eval(const RunFolder& folder) {
  const auto& settings = folder.settings();
  const auto stored = load_command<EvalOptions>(kEvalName, kEvalDescription, declare_eval, settings.settings);
  auto plan = plan_eval(stored->options, *stored->app, settings.command_line);
  if (stored->options.classifier != "none") {
    const auto extractor = load_feature_extractor(stored->options.classifier, plan.shape);
    if (extractor.classifier) plan.classifier_name = extractor.path.filename().string();
  }
  folder.check_complete();
  finalize_eval(plan, folder);
  return 0;
}

}  // namespace diffpost::cli
