// Image loading and saving through stb: round trips, gray and colour, grids, errors, no clobbering.
#include <diffpost/io/image.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/error_of.hpp"
#include "support/temp_dir.hpp"

#include <filesystem>
#include <fstream>
#include <string>

using namespace diffpost;
namespace fs = std::filesystem;
using diffpost::testing::error_of;
using diffpost::testing::TempDir;

namespace {

/// The 8-bit levels an image in [-1, 1] is stored as, back in [-1, 1].
torch::Tensor quantised(const torch::Tensor& x) {
  return ((x.clamp(-1, 1) + 1) / 2 * 255).round() / 255 * 2 - 1;
}

}  // namespace

TEST_CASE("RGB and gray images round-trip through PNG at 8-bit precision") {
  const TempDir dir("image-roundtrip");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto rgb = at::rand({1, 3, 7, 5}, generator, torch::TensorOptions(torch::kFloat32)) * 2.4 - 1.2;
  save_image(rgb, dir.file("rgb.png"));
  const auto loaded = load_image(dir.file("rgb.png"));
  REQUIRE(loaded.sizes() == torch::IntArrayRef({1, 3, 7, 5}));
  CHECK(loaded.dtype() == torch::kFloat32);
  CHECK(
      torch::allclose(loaded, quantised(rgb), 0, 1e-6));  // clamped to [-1, 1], rounded to the nearest level
  CHECK(loaded.min().item<float>() == -1.0f);
  CHECK(loaded.max().item<float>() == 1.0f);

  const auto gray =
      at::rand({1, 4, 6}, generator, torch::TensorOptions(torch::kFloat64)) * 2 - 1;  // [C, H, W]
  save_image(gray, dir.file("gray.png"));
  const auto gray_loaded = load_image(dir.file("gray.png"));
  REQUIRE(gray_loaded.sizes() == torch::IntArrayRef({1, 1, 4, 6}));
  CHECK(torch::allclose(gray_loaded.to(torch::kFloat64), quantised(gray).unsqueeze(0), 0, 1e-6));

  SUBCASE("channel conversion on load") {
    CHECK(load_image(dir.file("gray.png"), 3).sizes() == torch::IntArrayRef({1, 3, 4, 6}));
    const auto as_gray = load_image(dir.file("rgb.png"), 1);
    REQUIRE(as_gray.sizes() == torch::IntArrayRef({1, 1, 7, 5}));
    // stb's luma: (77 R + 150 G + 29 B) >> 8 on the 8-bit values
    const auto pixels = ((loaded + 1) / 2 * 255).round().to(torch::kInt64);
    const auto luma = (pixels[0][0] * 77 + pixels[0][1] * 150 + pixels[0][2] * 29).div(256, "floor");
    CHECK(torch::allclose(as_gray[0][0], (luma.to(torch::kFloat32) / 255 * 2 - 1), 0, 1e-6));
  }
  SUBCASE("one pixel level is 2 / 255 apart") {
    auto levels = torch::tensor({-1.0, -1.0 + 2.0 / 255.0, 1.0}).view({1, 1, 1, 3});
    save_image(levels, dir.file("levels.png"));
    CHECK(torch::allclose(load_image(dir.file("levels.png")), levels, 0, 1e-6));
  }
}

TEST_CASE("saving never replaces an existing file unless asked, and leaves no temporary files") {
  const TempDir dir("image-overwrite");
  const auto black = torch::full({1, 1, 2, 2}, -1.0);
  const auto white = torch::full({1, 1, 2, 2}, 1.0);
  save_image(black, dir.file("a.png"));
  const auto message = error_of([&] { save_image(white, dir.file("a.png")); });
  CHECK(message.find("already exists") != std::string::npos);
  CHECK(message.find("a.png") != std::string::npos);
  CHECK(load_image(dir.file("a.png")).max().item<float>() == -1.0f);
  save_image(white, dir.file("a.png"), /*overwrite=*/true);
  CHECK(load_image(dir.file("a.png")).min().item<float>() == 1.0f);
  CHECK(dir.entries() == 1);
}

TEST_CASE("errors name the path and the reason") {
  const TempDir dir("image-errors");
  const auto missing = error_of([&] { load_image(dir.file("missing.png")); });
  CHECK(missing.find("missing.png") != std::string::npos);
  CHECK(missing.find("no such file") != std::string::npos);
  { std::ofstream(dir.file("text.png")) << "this is not an image"; }
  const auto not_image = error_of([&] { load_image(dir.file("text.png")); });
  CHECK(not_image.find("text.png") != std::string::npos);
  CHECK(not_image.find("unknown image type") != std::string::npos);  // stb's reason
  CHECK(error_of([&] { load_image(dir.file("text.png"), 2); }).find("channels must be 0 (keep), 1 or 3") !=
        std::string::npos);
  CHECK(error_of([&] {
          save_image(torch::zeros({2, 3, 4, 4}), dir.file("b.png"));
        }).find("[2, 3, 4, 4]") != std::string::npos);
  CHECK(error_of([&] {
          save_image(torch::zeros({1, 3, 4, 4}), dir.file("no/such/dir/b.png"));
        }).find("cannot write") != std::string::npos);
  CHECK(dir.entries() == 1);
}

TEST_CASE("grids place images in rows with gaps") {
  const TempDir dir("image-grid");
  const auto red =
      torch::tensor({1.0, -1.0, -1.0}).view({1, 3, 1, 1}).expand({2, 3, 4, 4});  // a batch of two
  const auto gray = torch::full({1, 2, 3}, 0.0);                                 // smaller, gray
  save_grid({{red}, {gray}}, dir.file("grid.png"), GridOptions{}.gap(1).background(-1.0));
  const auto grid = load_image(dir.file("grid.png"));
  // width: 1 + 4 + 1 + 4 + 1; height: 1 + 4 + 1 + 2 + 1
  REQUIRE(grid.sizes() == torch::IntArrayRef({1, 3, 9, 11}));
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 1), torch::tensor({1.0f, -1.0f, -1.0f})));  // in red
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 5), torch::full({3}, -1.0f)));              // the gap
  CHECK(torch::allclose(grid[0].select(1, 1).select(1, 6), torch::tensor({1.0f, -1.0f, -1.0f})));  // 2nd red
  // the gray image, shown in all three channels, at the top left of its cell
  CHECK((grid[0].select(1, 6).select(1, 1) - (128.0f / 255 * 2 - 1)).abs().max().item<float>() < 1e-6);
  CHECK(torch::allclose(grid[0].select(1, 6).select(1, 4), torch::full({3}, -1.0f)));  // beyond its width
}
