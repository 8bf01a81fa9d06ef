// Operators built from image files (diffpost/io/operator_files.hpp): masks and blur kernels.
#include <diffpost/io/operator_files.hpp>

#include "support/doctest_with_torch.hpp"
#include "support/temp_dir.hpp"

using diffpost::testing::TempDir;

TEST_CASE("custom kernels from an image file are normalised") {
  const TempDir dir("operator-files");
  const auto path = dir.file("kernel.png");
  auto image = torch::full({1, 1, 3, 3}, -1.0);
  image[0][0][1][1] = 1.0;
  image[0][0][1][2] = 1.0;
  diffpost::save_image(image, path);
  const auto kernel = diffpost::blur_kernel_from_file(path).make_kernel();
  CHECK(kernel.sizes() == torch::IntArrayRef({3, 3}));
  CHECK(kernel[1][1].item<double>() == doctest::Approx(0.5));
  CHECK(kernel[1][2].item<double>() == doctest::Approx(0.5));
}

TEST_CASE("inpainting masks read from image files: white observed, black missing") {
  const TempDir dir("operator-files");
  const auto path = dir.file("mask.png");
  auto image = torch::ones({1, 1, 4, 6});
  image[0][0][2][3] = -1.0;
  diffpost::save_image(image, path);
  const auto op = diffpost::inpainting_operator_from_file(path);
  CHECK(op.mask().sizes() == torch::IntArrayRef({4, 6}));
  CHECK(op.mask().sum().item<double>() == 23.0);
  CHECK(op.mask()[2][3].item<double>() == 0.0);
}
