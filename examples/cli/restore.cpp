// diffpost restore: degrades images and restores them with one method. The work is done batch by batch; each
// finished batch leaves its images and a record (run_folder.hpp), and the summary files are made from the
// records, so that a run can be sharded over processes, resumed after an interruption and merged.
#include <diffpost/dps.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/metrics.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

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

/// The options of `diffpost restore`.
struct RestoreOptions {
  TaskOptions task;
  NoiseOptions noise;
  std::string method = "dps";
  MethodSettings methods;
  int64_t num_samples = 1;
  SamplingOptions sampling = restoration_sampling_defaults();
  InputOptions input;
  ModelOptions model;
  OutputOptions output;
  PaperMetricOptions metrics;
};

void declare_restore(CLI::App& app, RestoreOptions& o) {
  add_task_options(app, o.task, true);
  add_noise_options(app, o.noise);
  add_value_option(app, "--method", o.method, methods_help("restoration method:"), "NAME", "Method")
      ->check(CLI::IsMember(method_names()));
  add_value_option(app, "--num-samples", o.num_samples, "posterior samples per image", "N", "Method")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  add_method_options(app, o.methods);
  add_restoration_options(app, o);
  PaperMetricOptions::add_options(app, o.metrics);
}

constexpr const char* kRestoreName = "diffpost restore";
constexpr const char* kRestoreDescription =
    "Restores images with a diffusion prior, by default with Diffusion Posterior Sampling (Chung et al.,\n"
    "ICLR 2023; --method chooses another). Each input image is degraded (operator + noise) to make the\n"
    "measurement, then restored. Writes, per task folder: <name>_truth.png, <name>_measurement.png,\n"
    "<name>_naive.png (the naive inverse), <name>_<method>.png (or _<method>_<k>.png per posterior\n"
    "sample), grid.png (rows = images; labelled columns = truth, naive inverse, method; the PSNR under\n"
    "each restoration) and metrics.csv (PSNR/SSIM of the method and of the naive inverse); and summary.md\n"
    "with mean ± std per task (and grid.png across tasks when several are run). Runs can be split over\n"
    "processes (--shard), resumed (--resume) and merged (diffpost merge).";

/// What the summary files are made from besides the records.
struct RestorePlan {
  const RestoreOptions& options;
  std::vector<std::string> tasks;
  std::vector<TaskPlan> task_plans;  ///< per task, its parameters checked against the images
  std::vector<InputImage> inputs;
  Shape shape;
  PriorFiles prior_files;
  RunSchedules schedules;
  int64_t batches = 0;
  std::string command;  ///< the command line, without the flags that do not change the outputs

  [[nodiscard]] int64_t count() const { return static_cast<int64_t>(inputs.size()); }
  [[nodiscard]] int64_t first(int64_t batch) const { return batch * options.sampling.batch; }
  [[nodiscard]] int64_t size(int64_t batch) const {
    return std::min(options.sampling.batch, count() - first(batch));
  }
  /// The output files of image `i` of task `t`, relative to the run folder, in the order of the grid row.
  [[nodiscard]] std::vector<std::string> image_files(size_t t, int64_t i) const {
    const auto& task = tasks[t];
    const auto& name = inputs[static_cast<size_t>(i)].name;
    const auto& method = options.method;
    std::vector<std::string> files{task + "/" + name + "_truth.png", task + "/" + name + "_measurement.png"};
    if (task_plans[t].has_naive_inverse()) files.push_back(task + "/" + name + "_naive.png");
    if (options.num_samples == 1) {
      files.push_back(fmt::format("{}/{}_{}.png", task, name, method));
    } else {
      for (int64_t k = 0; k < options.num_samples; ++k)
        files.push_back(fmt::format("{}/{}_{}_{}.png", task, name, method, k));
    }
    return files;
  }
};

/// Everything a run needs besides the model, checked before the first file is written: the inputs, and each
/// task's parameters against the model's image shape.
RestorePlan plan_restore(const RestoreOptions& options, const std::string& command_name,
                         std::string command) {
  const auto prior_files = resolve_prior(options.model);
  const auto shape = prior_image_shape(prior_files);
  RestorePlan plan{
      options,
      required_tasks(options.task, command_name),
      {},
      gather_inputs(options.input.paths, options.input.test_set, static_cast<int>(shape[0]), shape[1]),
      shape,
      prior_files,
      run_schedules(options.model, options.sampling, prior_files),
      0,
      std::move(command)};
  for (const auto& task : plan.tasks)
    plan.task_plans.emplace_back(task, options.task.parameters, plan.shape, options.sampling.seed);
  plan.batches = (plan.count() + options.sampling.batch - 1) / options.sampling.batch;
  return plan;
}

/// The column labels of a task's grid, one per cell of a row as finalize_restore lays it out: the truth, the
/// naive inverse (phase retrieval: the measurement), then the method ("dps", or "dps #1", "dps #2", ... for
/// several posterior samples).
std::vector<std::string> grid_labels(const RestorePlan& plan, bool has_naive) {
  const auto& options = plan.options;
  std::vector<std::string> labels{"truth", has_naive ? "naive" : "measurement"};
  for (int64_t k = 0; k < options.num_samples; ++k)
    labels.push_back(options.num_samples == 1 ? options.method
                                              : fmt::format("{} #{}", options.method, k + 1));
  return labels;
}

/// Restores batch `batch` of task `t` and writes its images and its record. The measurements are made on
/// the CPU (the same on every device); the method runs where the network is.
void restore_batch(const RestorePlan& plan, size_t t, int64_t batch, Prior& prior,
                   const torch::Device& device, const PaperMetrics& metrics, const RunFolder& folder,
                   TaskProgress& progress) {
  const auto& options = plan.options;
  const auto& task = plan.tasks[t];
  const auto seed = options.sampling.seed;
  const auto num_samples = options.num_samples;
  const int64_t first = plan.first(batch), n = plan.size(batch);
  const auto start = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> batch_images;
  for (int64_t i = first; i < first + n; ++i)
    batch_images.push_back(plan.inputs[static_cast<size_t>(i)].image);
  const auto truth = torch::cat(batch_images, 0);
  const auto noise = noise_model(options.noise);
  const auto op = plan.task_plans[t].batch(first, n, 1);
  const auto y = measure(op, noise, truth, seed, first);
  const auto repeated = std::visit([&](const auto& o) { return AnyOperator(o.repeated(num_samples)); }, op);
  auto generator = make_generator(image_seed(seed, first, SeedStream::sampling), device);
  const auto y_on_device = y.to(device);
  const MethodRun run{task, plan.task_plans[t].default_scale(), plan.schedules, options.noise.sigma};
  const auto method =
      prepare_for_prior(prior, options.method, options.methods, run, num_samples, repeated, noise);
  progress.start(method.num_steps);
  const int64_t done_before = progress.done * progress.steps;
  auto& bar = *progress.bar;
  const StepCallback callback = [&](const StepInfo& info) {
    InterruptGuard::check();
    // The residual needs a device sync: only when the bar redraws.
    if (!bar.due()) return bar.update(done_before + info.step);
    bar.update(done_before + info.step, info.residual.defined()
                                            ? fmt::format("batch {}/{} residual {:.3f}", batch + 1,
                                                          plan.batches, info.residual.mean().item<double>())
                                            : fmt::format("batch {}/{}", batch + 1, plan.batches));
  };
  const auto samples = method.sample(prior.model, y_on_device, plan.shape, generator, callback);
  const auto restored = samples.detach().to(torch::kCPU).clamp(-1.0, 1.0);
  const auto naive = naive_inverse(op, y);
  const auto dir = folder.dir();
  Scores naive_scores, method_scores;
  std::vector<std::string> files;
  for (int64_t i = 0; i < n; ++i) {
    const auto image_files = plan.image_files(t, first + i);
    size_t next = 0;
    const auto write = [&](const torch::Tensor& image) {
      save_image(image, (dir / image_files[next]).string(), true);
      files.push_back(image_files[next++]);
    };
    const auto truth_i = truth.narrow(0, i, 1);
    write(truth_i);
    write(measurement_to_save(op, y.narrow(0, i, 1)));
    if (naive.defined()) {
      const auto naive_i = naive.narrow(0, i, 1).clamp(-1.0, 1.0);
      write(naive_i);
      naive_scores.add(naive_i, truth_i);
    }
    for (int64_t k = 0; k < num_samples; ++k) {
      const auto sample = restored.narrow(0, i * num_samples + k, 1);
      write(sample);
      method_scores.add(sample, truth_i);
    }
  }
  StateDict record;
  const auto values = [](const std::vector<double>& v) { return torch::tensor(v, torch::kFloat64); };
  record.insert("psnr", values(method_scores.psnr));
  record.insert("ssim", values(method_scores.ssim));
  record.insert("unexplained", unexplained_fraction(repeated, y, truth, restored));
  if (naive.defined()) {
    record.insert("naive_psnr", values(naive_scores.psnr));
    record.insert("naive_ssim", values(naive_scores.ssim));
  }
  // The paper metrics: LPIPS per image; pool3 features, from which the summary computes FID and KID.
  if (metrics.has_lpips()) {
    record.insert("lpips", metrics.lpips(restored, truth.repeat_interleave(num_samples, 0)));
    if (naive.defined()) record.insert("naive_lpips", metrics.lpips(naive.clamp(-1.0, 1.0), truth));
  }
  if (metrics.has_fid()) {
    record.insert("truth_pool3", metrics.features(truth));
    record.insert("pool3", metrics.features(restored));
    if (naive.defined()) record.insert("naive_pool3", metrics.features(naive.clamp(-1.0, 1.0)));
  }
  record.insert("seconds",
                torch::tensor(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                              torch::kFloat64));
  folder.finish(task, batch, std::move(record), files);
}

/// A restoration that leaves this fraction of its measurement unexplained (see unexplained_fraction) is
/// unusable; docs/cli.md gives the values of good restorations.
constexpr double kUnusable = 0.5;

/// A task with unusable restorations: a warning, or an error (exit status 1) when half or more are.
struct Unusable {
  bool fails_run;
  std::string text;
};

/// Makes metrics.csv and grid.png of every task, the grid across tasks and summary.md from the records and
/// images in `folder` (what a single run does at its end, and `diffpost merge` after sharded runs).
/// Returns one line per task whose restorations leave kUnusable or more of their measurement unexplained.
std::vector<Unusable> finalize_restore(const RestorePlan& plan, const RunFolder& folder) {
  const auto& options = plan.options;
  const auto& method = options.method;
  const auto title = method_title(method);
  const auto dir = folder.dir();
  const auto channels = static_cast<int>(plan.shape[0]);
  struct TaskSummary {
    std::string task;
    Scores restored;
    Scores naive;
    std::vector<double> lpips, naive_lpips;  // with LPIPS
    SetScores set, naive_set;                // with FID
    bool with_lpips = false, with_fid = false;
    double seconds = 0.0;
    int64_t unusable = 0;  // restorations that leave kUnusable or more of the measurement unexplained
  };
  std::vector<TaskSummary> summaries;
  // The grid across tasks: the truth, then each task's naive inverse (or measurement) and first sample.
  std::vector<std::vector<torch::Tensor>> across(static_cast<size_t>(plan.count()));
  std::vector<std::vector<std::string>> across_captions(static_cast<size_t>(plan.count()));
  std::vector<std::string> across_labels{"truth"};
  for (size_t t = 0; t < plan.tasks.size(); ++t) {
    const auto& task = plan.tasks[t];
    TaskSummary summary;
    summary.task = task;
    const bool has_naive = plan.task_plans[t].has_naive_inverse();
    std::vector<StateDict> records;
    for (int64_t batch = 0; batch < plan.batches; ++batch) {
      auto record = folder.finished(task, batch);
      TORCH_CHECK(record.has_value(), "the record of ", task, " batch ", batch, " vanished");
      records.push_back(std::move(*record));
    }
    // A paper metric is reported when every batch has it (a resumed run may mix runs with and without).
    const auto every_batch_has = [&](const char* key) {
      return std::all_of(records.begin(), records.end(), [&](const StateDict& r) { return r.contains(key); });
    };
    const bool with_lpips = every_batch_has("lpips"), with_fid = every_batch_has("pool3");
    summary.with_lpips = with_lpips;
    summary.with_fid = with_fid;
    const auto gather = [&](const char* key) {
      std::vector<torch::Tensor> parts;
      for (const auto& r : records) parts.push_back(r.at(key));
      return torch::cat(parts, 0);
    };
    std::string csv = fmt::format("image,method,sample,psnr,ssim{}{}\n", with_lpips ? ",lpips" : "",
                                  with_fid ? ",fid,kid" : "");
    // The per-image rows' LPIPS (and their empty FID and KID cells).
    const auto extra_cells = [&](const std::vector<double>& lpips) {
      return (with_lpips ? "," + csv_number(lpips.back()) : std::string()) + (with_fid ? ",," : "");
    };
    std::vector<std::vector<torch::Tensor>> grid_rows;
    std::vector<std::vector<std::string>> grid_captions;  // the PSNR under each restoration
    const auto labels = grid_labels(plan, has_naive);
    across_labels.push_back(task + "\n" + labels[1]);
    across_labels.push_back(task + "\n" + labels[2]);
    for (int64_t batch = 0; batch < plan.batches; ++batch) {
      const auto* record = &records[static_cast<size_t>(batch)];
      summary.seconds += record->at("seconds").item<double>();
      const auto psnr = record->at("psnr"), ssim = record->at("ssim");
      summary.unusable += record->at("unexplained").ge(kUnusable).sum().item<int64_t>();
      for (int64_t i = 0; i < plan.size(batch); ++i) {
        const auto image = plan.first(batch) + i;
        const auto& name = plan.inputs[static_cast<size_t>(image)].name;
        std::vector<torch::Tensor> row;
        for (const auto& file : plan.image_files(t, image))
          row.push_back(load_image((dir / file).string(), channels));
        // The grid shows the measurement as the naive inverse where there is one (column 3 of the files).
        if (has_naive) row.erase(row.begin() + 1);
        // Column 1 is the naive inverse, scored below, or the measurement, which is not.
        std::vector<std::string> captions{kPsnrCaptionTitle, ""};
        if (has_naive) {
          summary.naive.psnr.push_back(record->at("naive_psnr")[i].item<double>());
          summary.naive.ssim.push_back(record->at("naive_ssim")[i].item<double>());
          if (with_lpips) summary.naive_lpips.push_back(record->at("naive_lpips")[i].item<double>());
          csv += fmt::format("{},naive,,{},{}{}\n", name, csv_number(summary.naive.psnr.back()),
                             csv_number(summary.naive.ssim.back()), extra_cells(summary.naive_lpips));
          captions[1] = psnr_caption(summary.naive.psnr.back());
        }
        for (int64_t k = 0; k < options.num_samples; ++k) {
          summary.restored.psnr.push_back(psnr[i * options.num_samples + k].item<double>());
          summary.restored.ssim.push_back(ssim[i * options.num_samples + k].item<double>());
          if (with_lpips)
            summary.lpips.push_back(record->at("lpips")[i * options.num_samples + k].item<double>());
          csv += fmt::format("{},{},{},{},{}{}\n", name, method, k, csv_number(summary.restored.psnr.back()),
                             csv_number(summary.restored.ssim.back()), extra_cells(summary.lpips));
          captions.push_back(psnr_caption(summary.restored.psnr.back()));
        }
        auto& across_row = across[static_cast<size_t>(image)];
        auto& across_row_captions = across_captions[static_cast<size_t>(image)];
        if (across_row.empty()) {
          across_row.push_back(row[0]);
          across_row_captions.push_back(captions[0]);
        }
        for (size_t column : {1, 2}) {
          across_row.push_back(row[column]);
          across_row_captions.push_back(captions[column]);
        }
        grid_rows.push_back(std::move(row));
        grid_captions.push_back(std::move(captions));
      }
    }
    if (with_fid) {
      const auto truth_features = gather("truth_pool3");
      summary.set = SetScores::of(truth_features, gather("pool3"));
      if (has_naive) summary.naive_set = SetScores::of(truth_features, gather("naive_pool3"));
    }
    // The mean and std rows; with FID, the set's FID and KID mean on the mean row, the KID std on the std
    // row.
    for (const auto& [name, scores, lpips, set] :
         {std::tuple{method, &summary.restored, &summary.lpips, &summary.set},
          std::tuple{std::string("naive"), &summary.naive, &summary.naive_lpips, &summary.naive_set}}) {
      if (scores->psnr.empty()) continue;
      const auto [pm, ps] = mean_std(scores->psnr);
      const auto [sm, ss] = mean_std(scores->ssim);
      const auto [lm, ls] = mean_std(*lpips);
      const auto number = [](const auto& value, auto get) {
        return value ? fmt::format("{:.6f}", get(*value)) : std::string();
      };
      const auto mean_extra =
          (with_lpips ? "," + csv_number(lm) : std::string()) +
          (with_fid ? fmt::format(",{},{}", number(set->fid, [](double v) { return v; }),
                                  number(set->kid, [](const KidResult& k) { return k.mean; }))
                    : std::string());
      const auto std_extra =
          (with_lpips ? "," + csv_number(ls) : std::string()) +
          (with_fid ? fmt::format(",,{}", number(set->kid, [](const KidResult& k) { return k.std; }))
                    : std::string());
      csv += fmt::format("mean,{},,{},{}{}\nstd,{},,{},{}{}\n", name, csv_number(pm), csv_number(sm),
                         mean_extra, name, csv_number(ps), csv_number(ss), std_extra);
    }
    save_grid(grid_rows, (dir / task / "grid.png").string(),
              GridOptions{}.overwrite(true).column_labels(labels).cell_captions(std::move(grid_captions)));
    write_text(dir / task / "metrics.csv", csv, true);
    summaries.push_back(std::move(summary));
  }
  if (plan.tasks.size() > 1)
    save_grid(across, (dir / "grid.png").string(),
              GridOptions{}.overwrite(true).column_labels(across_labels).cell_captions(across_captions));

  std::string text = fmt::format(
      "# diffpost restore summary\n\n`{}`\n\n{} images, {} steps ({} sampler), noise {}, seed {}, model "
      "`{}`.\n"
      "Mean ± sample standard deviation over the images; the naive inverse is zero-filling (inpainting), "
      "bicubic\nupsampling (sr), the blurred image (deblurring), the gray image (colorize) or the noisy "
      "image "
      "(denoise).\n\n",
      plan.command, plan.count(), plan.schedules.steps, options.sampling.sampler,
      noise_description(options.noise), options.sampling.seed,
      plan.prior_files.checkpoint.filename().string());
  // LPIPS, FID and KID columns when a task has them (their weights were given or found).
  const bool any_lpips =
      std::any_of(summaries.begin(), summaries.end(), [](const auto& s) { return s.with_lpips; });
  const bool any_fid =
      std::any_of(summaries.begin(), summaries.end(), [](const auto& s) { return s.with_fid; });
  const auto paper_header = (any_lpips ? fmt::format(" {} LPIPS |", title) : std::string()) +
                            (any_fid ? fmt::format(" {0} FID | {0} KID |", title) : std::string());
  const auto paper_rule = std::string(any_lpips ? "---|" : "") + (any_fid ? "---|---|" : "");
  text += fmt::format(
      "| task | scale | {0} PSNR (dB) | {0} SSIM |{1} naive PSNR (dB) | naive SSIM | time (s) |\n"
      "|---|---|---|---|{2}---|---|---|\n",
      title, paper_header, paper_rule);
  for (const auto& s : summaries) {
    const auto cell = [](const std::vector<double>& v, int digits) {
      if (v.empty()) return std::string("-");
      const auto [m, sd] = mean_std(v);
      return fmt::format("{:.{}f} ± {:.{}f}", m, digits, sd, digits);
    };
    const auto step_size = task_step_size(method, options.methods, s.task);
    const auto scale = step_size ? default_text(*step_size) : std::string("-");
    const auto paper_cells =
        (any_lpips ? fmt::format(" {} |", cell(s.lpips, 4)) : std::string()) +
        (any_fid ? fmt::format(" {} | {} |", s.set.fid_text(), s.set.kid_text()) : std::string());
    text += fmt::format("| {} | {} | {} | {} |{} {} | {} | {:.1f} |\n", s.task, scale,
                        cell(s.restored.psnr, 2), cell(s.restored.ssim, 3), paper_cells,
                        cell(s.naive.psnr, 2), cell(s.naive.ssim, 3), s.seconds);
    fmt::print("{}: {} {}", s.task, title, s.restored.summary());
    if (s.with_lpips)
      fmt::print(", LPIPS ({}) {}", options.metrics.lpips == "alex" ? "alex" : "vgg", cell(s.lpips, 4));
    if (s.with_fid) fmt::print(", FID {}, KID {}", s.set.fid_text(), s.set.kid_text());
    if (!s.naive.psnr.empty()) fmt::print(" | naive inverse {}", s.naive.summary());
    fmt::print(" | {:.1f} s\n", s.seconds);
  }
  std::vector<Unusable> unusable;
  for (const auto& s : summaries) {
    if (s.unusable == 0) continue;
    const auto total = static_cast<int64_t>(s.restored.psnr.size());
    unusable.push_back(
        {2 * s.unusable >= total,
         fmt::format("{} of {} {} restorations explain less than half of the measurement: {}", s.unusable,
                     total, s.task, unusable_hint(method, options.methods, s.task))});
  }
  for (const auto& u : unusable) text += "\n**Unusable results:** " + u.text + ".\n";
  write_text(dir / "summary.md", text, true);
  fmt::print("\n{}\nwrote {}\n", text.substr(text.find("| task")), (folder.out() / "summary.md").string());
  return unusable;
}

/// Prints each line of `unusable`; exit status 1 when half or more of a task's restorations are unusable
/// (the outputs stay in `out` for inspection).
int report_unusable(const std::vector<Unusable>& unusable, const fs::path& out) {
  bool failed = false;
  for (const auto& u : unusable) {
    fmt::print(stderr, "diffpost restore: {}: {} (the images are in '{}')\n",
               u.fails_run ? "error" : "warning", u.text, out.string());
    failed = failed || u.fails_run;
  }
  return failed ? 1 : 0;
}

}  // namespace

int run_restore(int argc, char** argv) {
  const auto parsed =
      parse_command<RestoreOptions>(kRestoreName, kRestoreDescription, declare_restore, argc, argv);
  if (!parsed) return 0;
  const auto& options = parsed->options;
  const auto& app = *parsed->app;

  // Everything is checked before the first file is written.
  const auto plan = plan_restore(options, app.get_name(), canonical_command(app, "restore", argc, argv));
  const auto noise = noise_model(options.noise);
  const auto out = output_folder(options.output, app.get_name());
  const auto shard = options.output.shard.empty() ? Shard{} : parse_shard(options.output.shard);
  set_threads(options.model);
  check_method_space(options.method, plan.prior_files.latent, plan.prior_files.checkpoint.string());
  for (const auto& task_plan : plan.task_plans) {
    const auto reason = missing_capability(options.method, task_plan, noise);
    if (!reason.empty()) throw cannot_run(options.method, task_plan.task(), reason);
  }
  if (!options.output.force && !options.output.resume) {
    std::vector<fs::path> planned;
    if (shard.count == 1) planned = {out / "summary.md", out / "grid.png"};
    for (size_t t = 0; t < plan.tasks.size(); ++t)
      for (int64_t batch = 0; batch < plan.batches; ++batch)
        for (int64_t i = 0; shard.owns(batch) && i < plan.size(batch); ++i)
          for (const auto& file : plan.image_files(t, plan.first(batch) + i)) planned.push_back(out / file);
    check_no_overwrite(planned, false, true);
  }
  const auto runtime = resolve_runtime(options.model.device, options.model.precision, shard.local_rank);
  auto prior = load_prior(plan.prior_files, runtime);
  const auto metrics = PaperMetrics::load(options.metrics, plan.shape, runtime.device);
  RunFolder folder(out, run_settings(app, "restore", argc, argv, plan.batches, plan.tasks), shard,
                   options.output.force, options.output.resume);
  for (const auto& task : plan.tasks) fs::create_directories(folder.dir() / task);

  fmt::print("model {}, {} images, {} steps ({} sampler), noise {}, {} threads, on {}{}\n",
             plan.prior_files.description(), plan.count(), plan.schedules.steps, options.sampling.sampler,
             noise_description(options.noise), torch::get_num_threads(), runtime_description(runtime),
             shard.count > 1 ? fmt::format(", shard {} ({})", shard.text(), shard.origin) : std::string());
  for (const auto& note : metrics.notes()) fmt::print("{}\n", note);
  std::fflush(stdout);
  return run_batches(
      folder, options.output.force,
      [&] {
        int64_t skipped = 0;
        for (size_t t = 0; t < plan.tasks.size(); ++t) {
          const auto& task = plan.tasks[t];
          int64_t mine = 0;
          for (int64_t batch = 0; batch < plan.batches; ++batch) mine += shard.owns(batch) ? 1 : 0;
          TaskProgress progress{
              mine, fmt::format("{} ({})", task, progress_note(options.method, options.methods, task))};
          for (int64_t batch = 0; batch < plan.batches; ++batch) {
            if (!shard.owns(batch)) continue;
            InterruptGuard::check();
            if (folder.resuming() && folder.finished(task, batch)) {
              ++skipped;
            } else {
              restore_batch(plan, t, batch, prior, runtime.device, metrics, folder, progress);
            }
            progress.finish_batch();
          }
          if (progress.bar) progress.bar->finish();
        }
        return skipped;
      },
      [&] { return report_unusable(finalize_restore(plan, folder), out); });
}

int merge_restore(const RunFolder& folder) {
  const auto& settings = folder.settings();
  const auto stored =
      load_command<RestoreOptions>(kRestoreName, kRestoreDescription, declare_restore, settings.settings);
  const auto plan = plan_restore(stored->options, kRestoreName, settings.command_line);
  folder.check_complete();
  return report_unusable(finalize_restore(plan, folder), folder.out());
}

}  // namespace diffpost::cli
