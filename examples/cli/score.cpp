// diffpost score: the metrics the papers report (PSNR, SSIM, LPIPS, FID, KID) between two folders of images,
// paired by file name, with the weights Python users already have (io/metric_weights.hpp). Any two folders
// can be scored, not only diffpost's outputs; docs/metrics.md says how the figures relate to the Python
// packages' and how to reproduce a paper's table.
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/io/npz.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/metrics.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "common.hpp"
#include "files.hpp"
#include "model.hpp"
#include "options.hpp"
#include "paper_metrics.hpp"

namespace diffpost::cli {
namespace {

/// The options of `diffpost score`.
struct ScoreOptions {
  std::string truth;
  std::string restored;
  std::string lpips;  ///< "", "alex" or "vgg"
  std::string lpips_backbone;
  std::string lpips_linear;
  bool fid = false;
  std::string fid_inception;
  bool kid = false;
  std::string csv;
  std::string save_stats;
  int64_t batch = 50;
  int64_t threads = static_cast<int64_t>(std::max(1U, std::thread::hardware_concurrency()));
  std::string device = "cpu";
  bool force = false;
  bool verbose = false;
};

void declare_score(CLI::App& app, ScoreOptions& o) {
  app.add_option("truth", o.truth, "folder of reference images (or, for FID only, a pytorch-fid .npz)")
      ->type_name("TRUTH_DIR")
      ->required();
  app.add_option("restored", o.restored, "folder of images to score, with the same file names")
      ->type_name("RESTORED_DIR")
      ->required();
  add_value_option(app, "--lpips", o.lpips, "also LPIPS v0.1 with this backbone: alex or vgg (DPS: vgg)",
                   "NET", "Metrics")
      ->check(CLI::IsMember({"alex", "vgg"}));
  app.add_flag("--fid", o.fid,
               "also FID (pytorch-fid's pool3 features; implied by --fid-inception, --kid and "
               "--save-stats)")
      ->group("Metrics");
  app.add_flag("--kid", o.kid, "also KID (100 subsets of min(1000, N), mean ± std)")->group("Metrics");
  add_metric_weight_options(app, o.lpips_backbone, o.lpips_linear, o.fid_inception, "Weights");
  add_value_option(app, "--csv", o.csv, "write per-image image,psnr,ssim[,lpips] rows here", "FILE",
                   "Output");
  add_value_option(app, "--save-stats", o.save_stats,
                   "write the restored images' FID statistics (mu, sigma) here, as pytorch-fid --save-stats",
                   "FILE.npz", "Output");
  app.add_flag("--force", o.force, "replace an existing --csv or --save-stats file")->group("Output");
  add_value_option(app, "--batch", o.batch, "images per batch", "N", "Run")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  add_value_option(app, "--threads", o.threads, "CPU threads", "N", "Run")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  add_value_option(app, "--device", o.device, "where the networks run: cpu, cuda or cuda:N", "DEVICE", "Run")
      ->check(checked_by([](const std::string& text) { parse_device(text, "--device"); }, ""));
  app.add_flag("--verbose", o.verbose, "print full error messages");
}

/// The image files of `folder` by file name; refuses a folder that is missing or holds no images.
std::map<std::string, fs::path> image_files(const std::string& folder, const char* role) {
  std::error_code error;
  if (!fs::is_directory(folder, error))
    throw UsageError(fmt::format("{} '{}' is not a folder", role, folder));
  std::map<std::string, fs::path> files;
  for (const auto& entry : fs::directory_iterator(folder, error))
    if (entry.is_regular_file() && is_image_file(entry.path()))
      files[entry.path().filename().string()] = entry.path();
  if (files.empty()) throw UsageError(fmt::format("{} '{}' holds no image files", role, folder));
  return files;
}

/// The file names both folders hold; refuses a name found in one folder only, naming it.
std::vector<std::string> paired_names(const std::map<std::string, fs::path>& truth,
                                      const std::map<std::string, fs::path>& restored,
                                      const ScoreOptions& o) {
  const auto unpaired = [](const auto& in, const auto& other) -> std::optional<std::string> {
    for (const auto& [name, path] : in)
      if (!other.contains(name)) return name;
    return std::nullopt;
  };
  const auto count_missing = [](const auto& in, const auto& other) {
    return std::count_if(in.begin(), in.end(), [&](const auto& item) { return !other.contains(item.first); });
  };
  if (const auto name = unpaired(truth, restored))
    throw UsageError(
        fmt::format("'{}' is in {} but not in {} ({} unpaired file(s)); images are paired by file "
                    "name",
                    *name, o.truth, o.restored, count_missing(truth, restored)));
  if (const auto name = unpaired(restored, truth))
    throw UsageError(
        fmt::format("'{}' is in {} but not in {} ({} unpaired file(s)); images are paired by file "
                    "name",
                    *name, o.restored, o.truth, count_missing(restored, truth)));
  std::vector<std::string> names;
  for (const auto& [name, path] : truth) names.push_back(name);
  return names;
}

/// Refuses a pair whose images differ in size, naming it; reads only the headers, so the refusal comes before
/// any image is decoded or any progress is printed.
void check_paired_sizes(const std::vector<std::string>& names, const ScoreOptions& o) {
  for (const auto& name : names) {
    const auto truth = read_image_size((fs::path(o.truth) / name).string());
    const auto restored = read_image_size((fs::path(o.restored) / name).string());
    if (truth != restored)
      throw UsageError(fmt::format("'{}' is {}x{} in {} but {}x{} in {}; paired images must have one size",
                                   name, truth[1], truth[0], o.truth, restored[1], restored[0], o.restored));
  }
}

/// Pool3 features of images that may differ in size: consecutive images of one size are batched.
class FeatureBatches {
 public:
  FeatureBatches(FidInceptionV3 inception, torch::Device device, int64_t batch)
      : inception_(std::move(inception)), device_(device), batch_(batch) {}
  void add(const torch::Tensor& image) {
    if (!pending_.empty() &&
        (pending_.front().sizes() != image.sizes() || static_cast<int64_t>(pending_.size()) >= batch_))
      flush();
    pending_.push_back(image);
  }
  torch::Tensor features() {
    flush();
    return torch::cat(features_).to(torch::kFloat64);
  }

 private:
  void flush() {
    if (pending_.empty()) return;
    features_.push_back(inception_(torch::cat(pending_).to(device_)).to(torch::kCPU));
    pending_.clear();
  }
  FidInceptionV3 inception_;
  torch::Device device_;
  int64_t batch_;
  std::vector<torch::Tensor> pending_;
  std::vector<torch::Tensor> features_;
};

int run_score(int argc, char** argv) {
  const auto parsed = parse_command<ScoreOptions>(
      "diffpost score",
      "Scores RESTORED_DIR against TRUTH_DIR, images paired by file name: PSNR and SSIM per image and their\n"
      "mean, LPIPS v0.1 with --lpips (as the lpips package), FID with --fid (as python -m pytorch_fid) and\n"
      "KID with --kid. The weights are read where torchvision, pytorch-fid and pip put them\n"
      "($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints; lpips's site-packages), or\n"
      "from the flags; nothing is downloaded. docs/metrics.md.",
      declare_score, argc, argv);
  if (!parsed) return 0;
  const auto& o = parsed->options;
  torch::set_num_threads(static_cast<int>(o.threads));
  const bool fid = o.fid || o.kid || !o.fid_inception.empty() || !o.save_stats.empty();
  const bool truth_statistics = fs::path(o.truth).extension() == ".npz";
  if (truth_statistics && (!fid || o.kid || !o.lpips.empty()))
    throw UsageError(
        fmt::format("'{}' holds FID statistics: it scores FID only (pass --fid; not --lpips or "
                    "--kid, which need the images)",
                    o.truth));

  // Everything the inputs can be refused for is checked before a network is loaded.
  const auto restored_files = image_files(o.restored, "RESTORED_DIR");
  std::optional<FidStatisticsArrays> reference;
  std::vector<std::string> names;
  if (truth_statistics) {
    reference = read_fid_statistics(o.truth);
    for (const auto& [name, path] : restored_files) names.push_back(name);
  } else {
    names = paired_names(image_files(o.truth, "TRUTH_DIR"), restored_files, o);
    check_paired_sizes(names, o);
  }
  const auto count = static_cast<int64_t>(names.size());
  if (fid && count < 2)
    throw UsageError(
        fmt::format("FID needs at least 2 images per folder (a covariance), got {} in {}; "
                    "published FIDs use thousands",
                    count, o.restored));
  for (const auto& file : {o.csv, o.save_stats})
    if (!file.empty()) check_no_overwrite({fs::path(file)}, o.force);

  const auto device = resolve_runtime(o.device, "fp32").device;
  std::optional<Lpips> lpips;
  if (!o.lpips.empty()) {
    const auto network = o.lpips == "alex" ? LpipsNetwork::alex : LpipsNetwork::vgg;
    const auto backbone =
        o.lpips_backbone.empty()
            ? with_weights_context(
                  "--lpips-backbone",
                  [&] { return find_lpips_backbone_weights(network, "pass --lpips-backbone FILE"); })
            : fs::path(o.lpips_backbone);
    const auto heads =
        o.lpips_linear.empty()
            ? with_weights_context(
                  "--lpips-linear",
                  [&] { return find_lpips_heads_weights(network, "pass --lpips-linear FILE"); })
            : fs::path(o.lpips_linear);
    lpips = with_weights_context(o.lpips_backbone.empty() ? "--lpips-linear" : "--lpips-backbone", [&] {
      return load_lpips(network, LpipsWeightPaths{}.backbone(backbone).heads(heads));
    });
    (*lpips)->to(device);
  }
  std::optional<FeatureBatches> truth_features, restored_features;
  if (fid) {
    const auto path =
        o.fid_inception.empty()
            ? with_weights_context("--fid-inception",
                                   [&] { return find_fid_inception_weights("pass --fid-inception FILE"); })
            : fs::path(o.fid_inception);
    const auto load = [&] {
      return with_weights_context("--fid-inception", [&] { return load_fid_inception(path); });
    };
    auto inception = load();
    inception->to(device);
    restored_features.emplace(inception, device, o.batch);
    if (!truth_statistics) truth_features.emplace(inception, device, o.batch);
  }

  torch::NoGradGuard no_grad;
  std::vector<double> psnrs, ssims, lpips_values;
  std::string csv = lpips ? "image,psnr,ssim,lpips\n" : "image,psnr,ssim\n";
  ProgressBar progress(count, "score");
  for (int64_t i = 0; i < count; ++i) {
    const auto& name = names[static_cast<size_t>(i)];
    const auto restored = load_image(restored_files.at(name).string(), 3);
    if (restored_features) restored_features->add(restored);
    if (truth_statistics) {
      progress.update(i + 1);
      continue;
    }
    const auto truth = load_image((fs::path(o.truth) / name).string(), 3);
    if (truth_features) truth_features->add(truth);
    psnrs.push_back(psnr(restored, truth).item<double>());
    ssims.push_back(ssim(restored, truth).item<double>());
    std::string line = fmt::format("{}: PSNR {:.2f} dB, SSIM {:.4f}", name, psnrs.back(), ssims.back());
    std::string row = fmt::format("{},{},{}", name, csv_number(psnrs.back()), csv_number(ssims.back()));
    if (lpips) {
      lpips_values.push_back((*lpips)(restored.to(device), truth.to(device)).item<double>());
      line += fmt::format(", LPIPS {:.4f}", lpips_values.back());
      row += fmt::format(",{:.6f}", lpips_values.back());
    }
    progress.update(i + 1);
    fmt::print("{}\n", line);
    csv += row + "\n";
  }
  progress.finish();

  if (!truth_statistics) {
    const auto [pm, ps] = mean_std(psnrs);
    const auto [sm, ss] = mean_std(ssims);
    std::string mean =
        fmt::format("mean of {}: PSNR {:.2f} ± {:.2f} dB, SSIM {:.4f} ± {:.4f}", count, pm, ps, sm, ss);
    if (lpips) {
      const auto [lm, ls] = mean_std(lpips_values);
      mean += fmt::format(", LPIPS ({}) {:.4f} ± {:.4f}", o.lpips, lm, ls);
    }
    fmt::print("{}\n", mean);
  }
  if (fid) {
    const auto restored_set = restored_features->features();
    const auto restored_statistics = GaussianStatistics::of(restored_set);
    const auto truth_set = truth_features ? truth_features->features() : torch::Tensor();
    const auto truth_statistics_values =
        reference ? GaussianStatistics::from_tensors(reference->mu, reference->sigma)
                  : GaussianStatistics::of(truth_set);
    fmt::print("FID: {:.4f}\n", frechet_distance(truth_statistics_values, restored_statistics));
    if (o.kid) {
      const auto kid = kernel_inception_distance(truth_set, restored_set);
      fmt::print("KID: {:.6f} ± {:.6f}\n", kid.mean, kid.std);
    }
    if (!o.save_stats.empty()) {
      write_fid_statistics(o.save_stats, restored_statistics.mean_tensor(),
                           restored_statistics.covariance_tensor(), SaveOptions{}.overwrite(o.force));
      fmt::print("FID statistics of {} written to {}\n", o.restored, o.save_stats);
    }
  }
  if (!o.csv.empty()) {
    write_text(o.csv, csv, o.force);
    fmt::print("per-image scores written to {}\n", o.csv);
  }
  return 0;
}

}  // namespace

int run_score_command(int argc, char** argv) {
  return run_score(argc, argv);
}

}  // namespace diffpost::cli
