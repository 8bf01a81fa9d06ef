// ctest helper of the nonlinear-deblur task (examples/cli/run_nonlinear_deblur_test.cmake): writes, into the
// folder given, a small bkse KernelWizard with random weights in the layout of GOPRO_wVAE.pth (every key of
// the reference module, kernel extractor included; nf 4, one residual block each, so 0.6 MB instead of
// 461 MB) and two 128 x 128 RGB test images, smooth random colour fields.
//   write_nonlinear_blur_fixture <folder>
#include <diffpost/io/image.hpp>
#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/random.hpp>

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_nonlinear_blur_fixture <folder>\n");
    return 2;
  }
  const std::filesystem::path folder(argv[1]);
  std::filesystem::create_directories(folder);
  diffpost::write_random_kernel_wizard(
      folder / "kernel_wizard.pth", 7,
      diffpost::KernelWizardOptions{}.nf(4).front_RBs(1).back_RBs(1).kernel_dim(8).extractor_n_blocks(1),
      diffpost::SaveOptions{}.overwrite(true));
  auto generator = diffpost::make_generator(8);
  for (int i = 0; i < 2; ++i) {
    // An 8 x 8 field upsampled bicubically: edges and gradients for the blur to act on.
    const auto coarse = at::rand({1, 3, 8, 8}, generator) * 2 - 1;
    const auto image =
        torch::nn::functional::interpolate(coarse, torch::nn::functional::InterpolateFuncOptions()
                                                       .size(std::vector<int64_t>{128, 128})
                                                       .mode(torch::kBicubic)
                                                       .align_corners(false));
    diffpost::save_image(image.clamp(-1.0, 1.0), (folder / ("image_" + std::to_string(i) + ".png")).string(),
                         true);
  }
  std::printf("wrote %s\n", folder.string().c_str());
  return 0;
}
