// Times FID's Inception features (metrics/fid_inception.hpp) on a folder of images, end to end as a scorer
// computes them - decode every file, batch, resize to 299, pool3 - for docs/performance.md, where the same
// folder's time under pytorch-fid is set next to it. Without --images it times random images of --size pixels
// made in memory (no decoding). The weights are random unless --weights names pytorch-fid's file: the time
// does not depend on their values.
//
//   fid_benchmark [--images DIR | --count 1000 --size 256] [--batch 50] [--threads 2] [--repeats 1]
//                 [--weights pt_inception-2015-12-05-6726825d.pth] [--cpu-allocator caching|default]
#include <diffpost/io/image.hpp>
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/metrics/fid_inception.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace {

struct Settings {
  std::string images;
  int64_t count = 1000;
  int64_t size = 256;
  int64_t batch = 50;
  int threads = 2;
  int repeats = 1;
  std::string weights;
  std::string cpu_allocator = "caching";
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app("Times FID Inception pool3 features of a folder of images (docs/performance.md).",
               "fid_benchmark");
  app.add_option("--images", s.images, "folder of images (PNG, JPEG, ...); default: random images in memory")
      ->check(CLI::ExistingDirectory);
  app.add_option("--count", s.count, "random images, without --images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--size", s.size, "side of the random images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", s.batch, "images per forward pass (pytorch-fid's default is 50)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--repeats", s.repeats, "timed runs (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--weights", s.weights, "pytorch-fid's weight file (default: random weights)")
      ->check(CLI::ExistingFile);
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const auto s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  diffpost::FidInceptionV3 inception;
  if (!s.weights.empty()) diffpost::load_fid_inception_weights(inception, std::filesystem::path(s.weights));
  torch::NoGradGuard no_grad;

  std::vector<std::filesystem::path> files;
  if (!s.images.empty()) {
    for (const auto& entry : std::filesystem::directory_iterator(s.images))
      if (entry.is_regular_file()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
  }
  const auto count = files.empty() ? s.count : static_cast<int64_t>(files.size());
  fmt::print("FID Inception features of {} {} on {} thread(s), batch {}, {} CPU allocator\n", count,
             files.empty() ? fmt::format("random {}x{} images", s.size, s.size) : "files of " + s.images,
             s.threads, s.batch, s.cpu_allocator);

  std::vector<double> totals, decodes;
  for (int repeat = 0; repeat < s.repeats; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    double decode = 0.0;
    std::vector<torch::Tensor> features;
    for (int64_t first = 0; first < count; first += s.batch) {
      const int64_t n = std::min(s.batch, count - first);
      torch::Tensor batch;
      if (files.empty()) {
        batch = torch::rand({n, 3, s.size, s.size}) * 2 - 1;
      } else {
        const auto decode_start = std::chrono::steady_clock::now();
        std::vector<torch::Tensor> images;
        for (int64_t i = first; i < first + n; ++i)
          images.push_back(diffpost::load_image(files[static_cast<size_t>(i)].string(), 3));
        batch = torch::cat(images);
        decode += seconds_since(decode_start);
      }
      features.push_back(inception(batch));
    }
    const auto all = torch::cat(features);
    totals.push_back(seconds_since(start));
    decodes.push_back(decode);
    fmt::print("run {}: {:.2f} s ({:.2f} s decoding), {} x {} features, {:.2f} images/s\n", repeat + 1,
               totals.back(), decode, all.size(0), all.size(1), static_cast<double>(count) / totals.back());
  }
  fmt::print("median: {:.2f} s for {} images ({:.2f} s decoding), {:.2f} images/s\n",
             benchmarks::median(totals), count, benchmarks::median(decodes),
             static_cast<double>(count) / benchmarks::median(totals));
  return 0;
}
