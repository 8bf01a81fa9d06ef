// LPIPS, FID and KID in `diffpost restore` and `diffpost eval`: the numbers papers print, beside PSNR and
// SSIM. Their weights are found where Python tools put them ($TORCH_HOME/hub/checkpoints, the lpips package)
// or given by flag; by default (auto) a metric whose weights are not found is left out and the run says so.
// Each batch records LPIPS per image and the Inception pool3 features; the summaries compute FID and KID over
// the whole set, so sharded runs merge them exactly. The images are scored as the 8-bit files the run writes,
// so the values are those `diffpost score` (and lpips, pytorch-fid) give on the written folders.
// docs/metrics.md.
#pragma once

#include <diffpost/io/metric_weights.hpp>
#include <diffpost/metrics/fid_inception.hpp>
#include <diffpost/metrics/frechet.hpp>
#include <diffpost/metrics/kid.hpp>
#include <diffpost/metrics/lpips.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common.hpp"
#include "options.hpp"

namespace diffpost::cli {

/// --lpips-backbone, --lpips-linear and --fid-inception (in `group`): the metrics' weight files, by default
/// found where torchvision, lpips and pytorch-fid put them.
inline void add_metric_weight_options(CLI::App& app, std::string& lpips_backbone, std::string& lpips_linear,
                                      std::string& fid_inception, const std::string& group) {
  add_value_option(app, "--lpips-backbone", lpips_backbone,
                   "torchvision's alexnet-owt-7be5be79.pth / vgg16-397923af.pth (default: $TORCH_HOME/hub/"
                   "checkpoints)",
                   "FILE", group);
  add_value_option(app, "--lpips-linear", lpips_linear,
                   "lpips's weights/v0.1/alex.pth / vgg.pth (default: the pip-installed lpips package)",
                   "FILE", group);
  add_value_option(
      app, "--fid-inception", fid_inception,
      "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: $TORCH_HOME/hub/checkpoints)", "FILE",
      group);
}

/// --lpips, --lpips-backbone, --lpips-linear, --fid, --fid-inception.
struct PaperMetricOptions {
  std::string lpips = "auto";  ///< auto (VGG when its weights are found), alex, vgg or off
  std::string lpips_backbone;
  std::string lpips_linear;
  std::string fid = "auto";  ///< auto (when the Inception weights are found), on or off
  std::string fid_inception;

  static void add_options(CLI::App& app, PaperMetricOptions& o) {
    add_value_option(
        app, "--lpips", o.lpips,
        "LPIPS v0.1 per image: alex, vgg (DPS reports VGG), off, or auto: vgg when torchvision's "
        "and lpips's weights are found",
        "NET", "Metrics")
        ->check(CLI::IsMember({"auto", "alex", "vgg", "off"}));
    add_value_option(app, "--fid", o.fid,
                     "FID and KID of the restored set against the truths (pytorch-fid's pool3 features): on, "
                     "off, or auto: on when the Inception weights are found",
                     "MODE", "Metrics")
        ->check(CLI::IsMember({"auto", "on", "off"}));
    add_metric_weight_options(app, o.lpips_backbone, o.lpips_linear, o.fid_inception, "Metrics");
  }
};

/// A c10::Error of a weight file as one UsageError line, naming the flag that gives another file.
template <class Load>
auto with_weights_context(const std::string& flag, Load&& load) {
  try {
    return load();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    throw UsageError(fmt::format("{} (see {})", message.substr(0, message.find('\n')), flag));
  }
}

/// The images as the 8-bit files a run writes them: [-1, 1] -> round((x + 1) * 127.5) / 127.5 - 1.
inline torch::Tensor as_written(const torch::Tensor& images) {
  return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0;
}

/// The networks of the paper metrics a run computes, loaded once, and what it says about them.
class PaperMetrics {
 public:
  PaperMetrics() = default;

  /// Resolves the options for images of `shape` ([C, H, W]) on `device`: an explicit choice whose weights are
  /// missing or wrong is a UsageError naming the file and the flag; auto leaves out what it does not find.
  static PaperMetrics load(const PaperMetricOptions& o, const Shape& shape, const torch::Device& device) {
    PaperMetrics metrics;
    const bool lpips_files_given = !o.lpips_backbone.empty() || !o.lpips_linear.empty();
    if (o.lpips == "off" && lpips_files_given)
      throw UsageError("--lpips off excludes --lpips-backbone and --lpips-linear");
    if (o.fid == "off" && !o.fid_inception.empty()) throw UsageError("--fid off excludes --fid-inception");
    const bool lpips_auto = o.lpips == "auto" && !lpips_files_given;
    if (o.lpips != "off") {
      const auto network = o.lpips == "alex" ? LpipsNetwork::alex : LpipsNetwork::vgg;
      const auto name = std::string(lpips_network_name(network));
      const auto minimum = lpips_minimum_image_size(network);
      if (shape[1] < minimum || shape[2] < minimum) {
        if (!lpips_auto)
          throw UsageError(
              fmt::format("--lpips {}: its backbone needs images of at least {}x{}, the model's are "
                          "{}x{} (pass --lpips vgg or off)",
                          name, minimum, minimum, shape[1], shape[2]));
        metrics.notes_.push_back(fmt::format("LPIPS off: {}x{} images are below VGG's {}x{}", shape[1],
                                             shape[2], minimum, minimum));
      } else {
        const auto backbone = weights_path(o.lpips_backbone, lpips_auto, "--lpips-backbone", [&] {
          return find_lpips_backbone_weights(network, "pass --lpips-backbone FILE");
        });
        const auto heads = weights_path(o.lpips_linear, lpips_auto, "--lpips-linear", [&] {
          return find_lpips_heads_weights(network, "pass --lpips-linear FILE");
        });
        if (backbone && heads) {
          auto lpips = with_weights_context(
              o.lpips_backbone.empty() ? "--lpips-linear" : "--lpips-backbone",
              [&] { return load_lpips(network, LpipsWeightPaths{}.backbone(*backbone).heads(*heads)); });
          lpips->to(device);
          metrics.lpips_ = std::move(lpips);
          metrics.lpips_network_ = name;
          metrics.notes_.push_back(
              fmt::format("LPIPS ({}) from {} and {}", name, backbone->string(), heads->string()));
        } else {
          metrics.notes_.push_back(
              "LPIPS off: torchvision's VGG16 or lpips's heads were not found (--lpips-backbone, "
              "--lpips-linear)");
        }
      }
    }
    if (o.fid != "off") {
      const bool fid_auto = o.fid == "auto" && o.fid_inception.empty();
      const auto path = weights_path(o.fid_inception, fid_auto, "--fid-inception",
                                     [] { return find_fid_inception_weights("pass --fid-inception FILE"); });
      if (path) {
        auto inception = with_weights_context("--fid-inception", [&] { return load_fid_inception(*path); });
        inception->to(device);
        metrics.inception_ = std::move(inception);
        metrics.notes_.push_back(fmt::format("FID and KID from {}", path->string()));
      } else {
        metrics.notes_.push_back(fmt::format("FID and KID off: {} is not in {} (--fid-inception)",
                                             kFidInceptionWeightsFile,
                                             torch_hub_checkpoints_folder().string()));
      }
    }
    metrics.device_ = device;
    return metrics;
  }

  [[nodiscard]] bool has_lpips() const { return lpips_.has_value(); }
  [[nodiscard]] bool has_fid() const { return inception_.has_value(); }
  /// "vgg" or "alex" (empty without LPIPS).
  [[nodiscard]] const std::string& lpips_network() const { return lpips_network_; }
  /// One line per metric: the files it reads, or why it is off.
  [[nodiscard]] const std::vector<std::string>& notes() const { return notes_; }

  /// LPIPS of each restored image [N, C, H, W] against its truth [N or 1, C, H, W], as written: [N] float64.
  [[nodiscard]] torch::Tensor lpips(const torch::Tensor& restored, const torch::Tensor& truth) const {
    torch::NoGradGuard no_grad;
    const auto reference = truth.size(0) == restored.size(0) ? truth : truth.expand_as(restored);
    auto network = *lpips_;  // a holder sharing the module, callable
    return network(as_written(restored).to(device_), as_written(reference).to(device_))
        .to(torch::kCPU, torch::kFloat64);
  }

  /// The Inception pool3 features of images [N, C, H, W], as written: [N, 2048] float64.
  [[nodiscard]] torch::Tensor features(const torch::Tensor& images) const {
    torch::NoGradGuard no_grad;
    auto network = *inception_;  // a holder sharing the module, callable
    return network(as_written(images).to(device_)).to(torch::kCPU, torch::kFloat64);
  }

 private:
  /// The file of a flag, or the one found where Python tools put it; std::nullopt when `optional` and not
  /// found; otherwise the finder's one-line error as a UsageError.
  template <class Find>
  static std::optional<std::filesystem::path> weights_path(const std::string& given, bool optional,
                                                           const char* flag, Find&& find) {
    if (!given.empty()) {
      std::error_code error;
      if (!std::filesystem::is_regular_file(given, error))
        throw UsageError(fmt::format("{} '{}': no such file", flag, given));
      return std::filesystem::path(given);
    }
    try {
      return find();
    } catch (const c10::Error& e) {
      if (optional) return std::nullopt;
      const std::string message = e.what_without_backtrace();
      throw UsageError(message.substr(0, message.find('\n')));
    }
  }

  std::optional<Lpips> lpips_;
  std::string lpips_network_;
  std::optional<FidInceptionV3> inception_;
  torch::Device device_{torch::kCPU};
  std::vector<std::string> notes_;
};

/// FID and KID of a restored set against its truths, from their pool3 features; each empty when the sets are
/// too small (FID needs 2 images for a covariance, KID 2 per subset).
struct SetScores {
  std::optional<double> fid;
  std::optional<KidResult> kid;

  static SetScores of(const torch::Tensor& truth_features, const torch::Tensor& restored_features) {
    SetScores scores;
    if (truth_features.size(0) < 2 || restored_features.size(0) < 2) return scores;
    scores.fid =
        frechet_distance(GaussianStatistics::of(truth_features), GaussianStatistics::of(restored_features));
    scores.kid = kernel_inception_distance(truth_features, restored_features);
    return scores;
  }
  [[nodiscard]] std::string fid_text() const { return fid ? fmt::format("{:.2f}", *fid) : "-"; }
  [[nodiscard]] std::string kid_text() const {
    return kid ? fmt::format("{:.4f} ± {:.4f}", kid->mean, kid->std) : "-";
  }
};

}  // namespace diffpost::cli
