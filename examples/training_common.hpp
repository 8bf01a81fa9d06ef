// Pieces shared by the training examples (train_prior, train_classifier): parsing the command line (CLI11),
// the --device flag, reading a Fashion-MNIST split, counting parameters, wall-clock minutes, and the
// error reporting of main(). Private to the examples; not part of the diffpost library.
#pragma once

#include <diffpost/io/datasets.hpp>
#include <diffpost/runtime/device.hpp>

#include <torch/torch.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>

namespace diffpost::examples {

/// Parses the command line into the options declared on `app`: --help prints the help and exits with 0; a
/// bad or unknown flag prints CLI11's message and exits with its non-zero code.
inline void parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
}

/// CLI11 check of a finite number > 0 (learning rates), with a message that names the value.
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0.0;
        if (CLI::detail::lexical_cast(text, value) && std::isfinite(value) && value > 0.0) return {};
        return "must be a finite number > 0, got '" + text + "'";
      },
      "> 0");
}

/// Declares `--device` (cpu, cuda or cuda:N; checked when the run starts with `diffpost::usable_device`).
inline CLI::Option* add_device_option(CLI::App& app, std::string& device) {
  return app
      .add_option("--device", device,
                  "where to train: cpu, cuda or cuda:N (the data is moved there once; random draws come "
                  "from the seeded CPU generator, so a seed gives the same draws on every device)")
      ->capture_default_str();
}

/// One split of Fashion-MNIST: images [N, 1, 28, 28] in [-1, 1] and their int64 labels [N].
struct LabelledImages {
  torch::Tensor images;
  torch::Tensor labels;

  /// Both tensors on `device` (one copy each).
  LabelledImages to(const torch::Device& device) const { return {images.to(device), labels.to(device)}; }
};

/// Reads the split `split` ("train" or "t10k", the prefixes of the IDX file names) of Fashion-MNIST from the
/// gzip-compressed IDX files in `folder` (e.g. diffpost::debian_fashion_mnist_dir()). Throws c10::Error when
/// a file cannot be read (see diffpost::read_idx) or when the image and label counts differ.
inline LabelledImages read_fashion_mnist(const std::filesystem::path& folder, const std::string& split) {
  LabelledImages data{diffpost::read_idx_images(folder / (split + "-images-idx3-ubyte.gz")),
                      diffpost::read_idx_labels(folder / (split + "-labels-idx1-ubyte.gz"))};
  TORCH_CHECK(data.images.size(0) == data.labels.size(0), "read_fashion_mnist: ", data.images.size(0),
              " images but ", data.labels.size(0), " labels in the '", split, "' split of ", folder.string());
  return data;
}

/// Number of scalar parameters of `module` and its submodules, as printed in the training logs.
inline int64_t count_parameters(const torch::nn::Module& module) {
  int64_t parameters = 0;
  for (const auto& p : module.parameters()) parameters += p.numel();
  return parameters;
}

/// Wall-clock minutes since `start` (steady clock), for the time limits and reports of a training run.
inline double minutes_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60.0;
}

/// The body of main() of a training program: returns `run()`, or prints "PROGRAM: message" (without a
/// LibTorch backtrace) to stderr and returns 1 when it throws.
template <class Run>
int run_reporting_errors(const char* program, Run&& run) {
  try {
    return run();
  } catch (const c10::Error& e) {
    std::cerr << program << ": " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
  }
  return 1;
}

}  // namespace diffpost::examples
