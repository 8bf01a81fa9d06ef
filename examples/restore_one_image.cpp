// The shortest complete use of diffpost: load the bundled Fashion-MNIST prior, hide a square of one test
// image under Gaussian noise, restore it with Diffusion Posterior Sampling and print the PSNR of the result.
//
//   build/examples/restore_one_image [PRIOR_DIR] [IMAGE_INDEX]
//
// PRIOR_DIR holds fashion_mnist_28.pt and fashion_mnist_28.yaml (default: examples/prior of this source
// tree); the image comes from Debian's dataset-fashion-mnist test split.
#include <diffpost/dps.hpp>      // concepts, schedules, samplers, DPS, operators, noise, models
#include <diffpost/io.hpp>       // checkpoints, model configurations, datasets
#include <diffpost/metrics.hpp>  // PSNR

#include <cstdio>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  using namespace diffpost;
  const std::filesystem::path prior_dir = argc > 1 ? argv[1] : DIFFPOST_SOURCE_DIR "/examples/prior";
  const int64_t index = argc > 2 ? std::stoll(argv[2]) : 0;
  torch::set_num_threads(2);

  // The prior: an ADM UNet built from its configuration file, the checkpoint loaded strictly.
  AdmUNet model(read_adm_model_config(prior_dir / "fashion_mnist_28.yaml").options);
  load_checkpoint(model, prior_dir / "fashion_mnist_28.pt");
  model->eval();

  // One test image (never seen in training), as a batch [1, 1, 28, 28] in [-1, 1].
  const auto test_split = debian_fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz";
  if (!std::filesystem::exists(test_split)) {
    std::printf("%s is missing: install the Debian package dataset-fashion-mnist\n", test_split.c_str());
    return 77;  // skipped, for ctest
  }
  const auto images = read_idx_images(test_split, index + 1);
  const auto truth = images.narrow(0, index, 1);

  // The measurement: a 14 x 14 box hidden at a random place, Gaussian noise sigma = 0.05.
  auto generator = make_generator(0);
  const InpaintingOperator box(BoxMask{}.size(14).margin(4), 28, 28, generator);
  const GaussianLikelihood likelihood(0.05);
  const auto y = likelihood.sample(box.forward(truth), generator);

  // DPS on 100 ancestral steps; the step size 3 suits this prior (docs/cli.md).
  const PosteriorSampler dps(DPS<GaussianLikelihood, InpaintingOperator>(
      likelihood, box, DDPMSampler(DiffusionSchedule::linear().respaced("100")), DPSOptions{}.scale(3.0)));
  const auto restored = dps.sample(model, y, {1, 28, 28}, generator).clamp(-1.0, 1.0);

  std::printf("image %lld: PSNR of the zero-filled measurement %.2f dB, of the DPS restoration %.2f dB\n",
              static_cast<long long>(index), psnr(box.naive_inverse(y), truth).item<double>(),
              psnr(restored, truth).item<double>());
  return 0;
}
