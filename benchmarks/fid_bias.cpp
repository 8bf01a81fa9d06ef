// Measures how the Frechet distance and KID depend on the number of images (docs/metrics.md, "FID's bias
// with N"): both compare two disjoint parts of Fashion-MNIST (same distribution, true distance 0) and a part
// against noisy or blurred copies of another, in the 64-d features of the bundled classifier, for growing N.
// Needs Debian's dataset-fashion-mnist.
//
//   fid_bias [--sizes 100,500,1000,5000] [--threads 2]
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/metrics/frechet.hpp>
#include <diffpost/metrics/kid.hpp>
#include <diffpost/models/classifier.hpp>
#include <diffpost/random.hpp>

#include "common.hpp"

#include <fmt/core.h>
#include <torch/torch.h>

#include <string>
#include <vector>

namespace {

struct Settings {
  std::vector<int64_t> sizes{100, 500, 1000, 5000};
  int threads = 2;
  std::string cpu_allocator = "caching";
};

Settings parse(int argc, char** argv) {
  Settings s;
  CLI::App app("FID and KID against the number of images, on the bundled classifier's features.", "fid_bias");
  app.add_option("--sizes", s.sizes, "numbers of images N (each at most 5000: test[0:N] vs test[N:2N])")
      ->delimiter(',')
      ->check(CLI::Range(2, 5000))
      ->capture_default_str();
  benchmarks::add_process_flags(app, s.threads, s.cpu_allocator);
  benchmarks::parse_command_line(app, argc, argv);
  return s;
}

torch::Tensor features_of(diffpost::ImageClassifier& classifier, const torch::Tensor& images) {
  std::vector<torch::Tensor> parts;
  for (int64_t first = 0; first < images.size(0); first += 500)
    parts.push_back(
        classifier->features(images.narrow(0, first, std::min<int64_t>(500, images.size(0) - first))));
  return torch::cat(parts);
}

}  // namespace

int main(int argc, char** argv) {
  const auto s = parse(argc, argv);
  benchmarks::apply_process_settings(s.cpu_allocator, s.threads);
  torch::NoGradGuard no_grad;
  diffpost::ImageClassifier classifier;
  diffpost::load_checkpoint(classifier,
                            std::string(DIFFPOST_SOURCE_DIR) + "/examples/prior/fashion_mnist_classifier.pt");
  classifier->eval();
  const auto& data = diffpost::debian_fashion_mnist_dir();
  const auto test = diffpost::read_idx_images(data / "t10k-images-idx3-ubyte.gz");
  const auto train = diffpost::read_idx_images(data / "train-images-idx3-ubyte.gz", 5000);
  // The first 5000 test images with Gaussian noise of sigma 0.1 ([-1, 1] scale, clamped, CPU generator seed
  // 0), and with a 3x3 box blur: two real degradations to set the bias against.
  auto generator = diffpost::make_generator(0);
  const auto first = test.narrow(0, 0, 5000);
  const auto noisy = (first + 0.1 * at::randn(first.sizes(), generator)).clamp(-1, 1);
  const auto blurred = torch::avg_pool2d(torch::replication_pad2d(first, {1, 1, 1, 1}), 3, 1);

  const auto test_features = features_of(classifier, test);
  const auto train_features = features_of(classifier, train);
  const auto noisy_features = features_of(classifier, noisy);
  const auto blurred_features = features_of(classifier, blurred);

  fmt::print("Fashion-MNIST, 64-d features of examples/prior/fashion_mnist_classifier.pt; A = test[0:N]\n");
  fmt::print("KID: 100 subsets of min(1000, N), seed 2020, mean +- std over subsets\n\n");
  fmt::print("{:>5} | {:>24} | {:>24} | {:>24} | {:>24}\n", "N", "A vs test[N:2N]", "A vs train[0:N]",
             "noisy A vs test[N:2N]", "blurred A vs test[N:2N]");
  for (const auto n : s.sizes) {
    const auto a = test_features.narrow(0, 0, n);
    const auto other = test_features.narrow(0, n, n);
    std::string row = fmt::format("{:>5}", n);
    for (const auto& [x, y] :
         std::vector<std::pair<torch::Tensor, torch::Tensor>>{{a, other},
                                                              {a, train_features.narrow(0, 0, n)},
                                                              {noisy_features.narrow(0, 0, n), other},
                                                              {blurred_features.narrow(0, 0, n), other}}) {
      const double fd = diffpost::frechet_distance(x, y);
      const auto kid = diffpost::kernel_inception_distance(x, y);
      row += fmt::format(" | FD {:6.1f} KID {:6.1f}+-{:4.1f}", fd, kid.mean, kid.std);
    }
    fmt::print("{}\n", row);
  }
  return 0;
}
