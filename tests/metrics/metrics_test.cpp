// PSNR and SSIM against closed forms and against scikit-image on committed images.
#include <diffpost/io/image.hpp>
#include <diffpost/metrics.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <string>

namespace {

std::string data_path(const std::string& name) {
  return std::string(DIFFPOST_TEST_DATA_DIR) + "/metrics/" + name;
}

}  // namespace

TEST_CASE("psnr of a constant offset is 10 log10(1 / (offset / 2)^2)") {
  // On the [0, 1] scale an offset d in [-1, 1] units is d / 2, so MSE = d^2 / 4 for every pixel.
  const auto reference = torch::rand({3, 2, 9, 7}, torch::kFloat64) * 1.6 - 0.8;
  const std::vector<double> offsets{0.1, -0.02, 0.5};
  auto image = reference.clone();
  for (size_t b = 0; b < offsets.size(); ++b) image[b] += offsets[b];
  const auto values = diffpost::psnr(image, reference);
  REQUIRE(values.sizes() == torch::IntArrayRef{3});
  CHECK((values.scalar_type() == torch::kFloat64));
  for (size_t b = 0; b < offsets.size(); ++b) {
    const double expected = 10.0 * std::log10(1.0 / (offsets[b] * offsets[b] / 4.0));
    CHECK(values[b].item<double>() == doctest::Approx(expected).epsilon(1e-12));
  }
  // 0.1 on [-1, 1] is 0.05 on [0, 1]: 26.0206 dB.
  CHECK(values[0].item<double>() == doctest::Approx(26.020599913279625).epsilon(1e-12));
}

TEST_CASE("psnr of identical images is infinite and of a single [C, H, W] image has one entry") {
  const auto image = torch::rand({1, 5, 5}) * 2 - 1;
  const auto values = diffpost::psnr(image, image);
  REQUIRE(values.sizes() == torch::IntArrayRef{1});
  CHECK(std::isinf(values[0].item<double>()));
}

TEST_CASE("ssim of identical images is 1, and of an image with its negative is far below") {
  const auto image = torch::rand({2, 3, 16, 16}, torch::kFloat32) * 2 - 1;
  const auto same = diffpost::ssim(image, image);
  REQUIRE(same.sizes() == torch::IntArrayRef{2});
  CHECK(same[0].item<double>() == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(same[1].item<double>() == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(diffpost::ssim(image, -image)[0].item<double>() < 0.0);
}

TEST_CASE("ssim of a constant shift of a constant image follows the luminance term alone") {
  // Flat images have zero variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with a, b the [0, 1] levels.
  const double a = 0.3, b = 0.5, c1 = 0.01 * 0.01;
  const auto x = torch::full({1, 1, 12, 13}, 2 * a - 1, torch::kFloat64);
  const auto y = torch::full({1, 1, 12, 13}, 2 * b - 1, torch::kFloat64);
  CHECK(diffpost::ssim(x, y)[0].item<double>() == doctest::Approx((2 * a * b + c1) / (a * a + b * b + c1)));
}

// Expected values from scikit-image 0.19.3 (Debian python3-skimage) on the committed PNGs read as pixel /
// 255:
//   peak_signal_noise_ratio(ref, dist, data_range=1)
//   structural_similarity(ref, dist, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//                         data_range=1, channel_axis=2 for RGB)
// See tests/data/metrics/README.md for how the images were made.
TEST_CASE("psnr and ssim match scikit-image on a gray and an RGB image pair") {
  struct Case {
    const char* kind;
    double psnr;
    double ssim;
  };
  for (const auto& c :
       {Case{"gray", 23.6002151719, 0.6755064348}, Case{"rgb", 22.4265093871, 0.8679200867}}) {
    CAPTURE(c.kind);
    const auto reference = diffpost::load_image(data_path(std::string(c.kind) + "_reference.png"));
    const auto distorted = diffpost::load_image(data_path(std::string(c.kind) + "_distorted.png"));
    CHECK(diffpost::psnr(distorted, reference)[0].item<double>() == doctest::Approx(c.psnr).epsilon(1e-6));
    CHECK(diffpost::ssim(distorted, reference)[0].item<double>() == doctest::Approx(c.ssim).epsilon(1e-6));
    // Both metrics are symmetric in their arguments.
    CHECK(diffpost::ssim(reference, distorted)[0].item<double>() == doctest::Approx(c.ssim).epsilon(1e-6));
  }
}

TEST_CASE("metrics reject mismatched shapes and images smaller than the window") {
  const auto a = torch::zeros({1, 1, 12, 12});
  CHECK_THROWS_WITH_AS(diffpost::psnr(a, torch::zeros({1, 1, 12, 11})), doctest::Contains("differs from"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(diffpost::ssim(torch::zeros({1, 1, 8, 8}), torch::zeros({1, 1, 8, 8})),
                       doctest::Contains("smaller than the 11x11 window"), c10::Error);
  CHECK(diffpost::ssim(torch::zeros({1, 1, 8, 8}), torch::zeros({1, 1, 8, 8}),
                       diffpost::SSIMOptions{}.window_size(7))[0]
            .item<double>() == doctest::Approx(1.0));
}
