// train_classifier: trains the small Fashion-MNIST classifier (diffpost::ImageClassifier) whose penultimate
// layer gives the features of diffpost's Frechet distance (the FID idea with a 28x28 feature network), then
// reports its accuracy on the 10k test images and writes the weights in the torch.save state-dict format.
//
//   train_classifier --threads 1 --out examples/prior/fashion_mnist_classifier.pt
//   train_classifier --device cuda --out classifier.pt
//
// Recipe: Adam with a cosine-decayed learning rate, cross-entropy, random horizontal flips (clothes are
// roughly mirror-symmetric). The training split alone is used for training; the test split only for the
// final accuracy. Run with --help for every flag.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/models/classifier.hpp>
#include <diffpost/random.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include "training_common.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>

#include <fmt/core.h>

namespace fs = std::filesystem;

namespace {

struct Flags {
  fs::path data = diffpost::debian_fashion_mnist_dir();
  int64_t epochs = 4;
  int64_t batch = 128;
  double lr = 2e-3;
  int64_t seed = 0;
  int threads = 1;
  std::string device = "cpu";
  fs::path out = "fashion_mnist_classifier.pt";
  bool force = false;
  bool flip = true;
};

Flags parse_flags(int argc, char** argv) {
  Flags f;
  CLI::App app("train the Fashion-MNIST feature classifier of diffpost's Frechet distance",
               "train_classifier");
  app.add_option("--data", f.data,
                 "folder with the four Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)")
      ->capture_default_str();
  app.add_option("--epochs", f.epochs, "passes over the 60k training images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", f.batch, "images per Adam step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lr", f.lr, "initial Adam learning rate, decayed to 0 on a cosine")
      ->check(diffpost::examples::positive_number())
      ->capture_default_str();
  app.add_option("--seed", f.seed, "initialisation, shuffling and augmentation seed")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--threads", f.threads, "intra-op threads")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag_callback(
      "--no-flip", [&f] { f.flip = false; }, "no random horizontal flips");
  diffpost::examples::add_device_option(app, f.device);
  app.add_option("--out", f.out, "where to write the weights")->capture_default_str();
  app.add_flag("--force", f.force, "replace the --out file if it exists (never overwritten otherwise)");
  diffpost::examples::parse_command_line(app, argc, argv);
  return f;
}

/// Fraction of `images` whose arg-max logit is their label, evaluated in batches without gradients.
double accuracy(diffpost::ImageClassifier& model, const torch::Tensor& images, const torch::Tensor& labels) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  for (int64_t start = 0; start < images.size(0); start += 1000) {
    const int64_t count = std::min<int64_t>(1000, images.size(0) - start);
    const auto predicted = model(images.narrow(0, start, count)).argmax(1);
    correct += predicted.eq(labels.narrow(0, start, count)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(images.size(0));
}

int run(const Flags& flags) {
  // Refuse before spending minutes on training.
  std::error_code error;
  if (!flags.force && fs::exists(flags.out, error))
    throw std::invalid_argument("'" + flags.out.string() + "' exists; pass --force to replace it");
  const auto parent = flags.out.parent_path().empty() ? fs::path(".") : flags.out.parent_path();
  if (!fs::is_directory(parent, error))
    throw std::invalid_argument("output folder '" + parent.string() + "' does not exist");

  const auto device = diffpost::usable_device(flags.device, "--device");
  diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(flags.threads);
  torch::manual_seed(static_cast<uint64_t>(flags.seed));  // parameter initialisation
  // The data is moved to the device once; batches are gathered there.
  const auto [train_images, train_labels] =
      diffpost::examples::read_fashion_mnist(flags.data, "train").to(device);
  const auto [test_images, test_labels] =
      diffpost::examples::read_fashion_mnist(flags.data, "t10k").to(device);
  fmt::print(stderr, "data: {} training and {} test images of {}x{} from {}\n", train_images.size(0),
             test_images.size(0), train_images.size(2), train_images.size(3), flags.data.string());

  const auto options = diffpost::ImageClassifierOptions{}
                           .in_channels(train_images.size(1))
                           .image_size(train_images.size(2))
                           .num_classes(train_labels.max().item<int64_t>() + 1);
  diffpost::ImageClassifier model(options);
  model->to(device);  // before the optimizer takes the parameters
  const int64_t parameters = diffpost::examples::count_parameters(*model);
  fmt::print(
      stderr,
      "model: ImageClassifier, {} parameters; {} epochs of batch {}, Adam lr {} (cosine), {} thread(s), "
      "on {}\n",
      parameters, flags.epochs, flags.batch, flags.lr, flags.threads, device.str());

  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(flags.lr));
  auto generator = diffpost::make_generator(static_cast<uint64_t>(flags.seed));
  const int64_t n = train_images.size(0);
  const int64_t steps_per_epoch = n / flags.batch;  // the last partial batch of each epoch is dropped
  const int64_t total_steps = steps_per_epoch * flags.epochs;
  const auto start = std::chrono::steady_clock::now();
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < flags.epochs; ++epoch) {
    model->train();
    const auto order = torch::randperm(n, generator, torch::kLong).to(device);
    diffpost::ProgressBar bar(steps_per_epoch, fmt::format("epoch {}/{}", epoch + 1, flags.epochs));
    bar.log_interval(30.0);
    double loss_sum = 0.0;
    int64_t correct = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      const auto index = order.narrow(0, b * flags.batch, flags.batch);
      auto x = train_images.index_select(0, index);
      const auto y = train_labels.index_select(0, index);
      if (flags.flip) {
        const auto flip = (at::rand({flags.batch, 1, 1, 1}, generator) < 0.5).to(device);
        x = torch::where(flip, x.flip(3), x);
      }
      // Cosine decay from lr to 0 over the whole run.
      const double lr = 0.5 * flags.lr * (1.0 + std::cos(M_PI * static_cast<double>(step) / total_steps));
      for (auto& group : optimizer.param_groups())
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      const auto logits = model(x);
      const auto loss = torch::nn::functional::cross_entropy(logits, y);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
      correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      bar.update(b + 1,
                 fmt::format("loss {:.4f} train acc {:.4f}", loss_sum / (b + 1),
                             static_cast<double>(correct) / static_cast<double>((b + 1) * flags.batch)));
    }
    bar.finish();
  }
  const double minutes = diffpost::examples::minutes_since(start);
  const double test_accuracy = accuracy(model, test_images, test_labels);
  fmt::print("trained {} steps ({} epochs) in {:.1f} min with {} thread(s)\n", total_steps, flags.epochs,
             minutes, flags.threads);
  fmt::print("test accuracy: {:.4f} ({} test images)\n", test_accuracy, test_images.size(0));
  diffpost::save_checkpoint(model, flags.out, diffpost::SaveOptions{}.overwrite(flags.force));
  fmt::print("wrote {} ({} bytes)\n", flags.out.string(), fs::file_size(flags.out));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return diffpost::examples::run_reporting_errors("train_classifier",
                                                  [&] { return run(parse_flags(argc, argv)); });
}
