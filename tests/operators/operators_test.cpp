// Measurement operators: numbers against closed forms, published constants and reference runs.
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <complex>
#include <fstream>
#include <string>

using namespace diffpost;
using torch::Tensor;

namespace {

Tensor read_text_tensor(const std::string& name) {
  std::ifstream in(std::string(DIFFPOST_TEST_DATA_DIR) + "/operators/" + name);
  REQUIRE_MESSAGE(in.good(), "missing test data " << name);
  std::string shape_line;
  std::getline(in, shape_line);
  std::istringstream shape_stream(shape_line);
  std::vector<int64_t> shape;
  for (int64_t s; shape_stream >> s;) shape.push_back(s);
  std::vector<double> values;
  for (double v; in >> v;) values.push_back(v);
  return torch::tensor(values, torch::kFloat64).reshape(shape);
}

double sum_of_products(const Tensor& a, const Tensor& b) {
  return (a * b).sum().item<double>();
}

/// <A x, y> = <x, A^T y> on random float64 x and y, to 1e-5 relative.
template <LinearOperator Op>
void check_adjoint(const Op& op, const Shape& image_shape, uint64_t seed = 0) {
  auto generator = make_generator(seed);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const auto x = at::randn(image_shape, generator, options);
  const auto y = at::randn(op.measurement_shape(image_shape), generator, options);
  const auto ax = op.forward(x);
  REQUIRE(Shape(ax.sizes().begin(), ax.sizes().end()) == op.measurement_shape(image_shape));
  const auto aty = op.adjoint(y);
  REQUIRE(aty.sizes() == x.sizes());
  const double lhs = sum_of_products(ax, y);
  const double rhs = sum_of_products(x, aty);
  INFO("<Ax, y> = " << lhs << ", <x, A^T y> = " << rhs);
  CHECK(std::abs(lhs - rhs) <= 1e-5 * std::max(std::abs(lhs), std::abs(rhs)));
  CHECK(std::abs(lhs) > 1e-3);  // a vacuous 0 = 0 would not test anything
}

/// A A^+ A x = A x on a random float64 x.
template <PseudoInvertibleOperator Op>
void check_pseudo_inverse(const Op& op, const Shape& image_shape, uint64_t seed = 1) {
  auto generator = make_generator(seed);
  const auto x = at::randn(image_shape, generator, torch::TensorOptions().dtype(torch::kFloat64));
  const auto ax = op.forward(x);
  const auto again = op.forward(op.pseudo_inverse(ax));
  CHECK(torch::allclose(again, ax, 1e-8, 1e-8));
}

bool throws_with(const std::function<void()>& call, const std::string& text) {
  try {
    call();
  } catch (const c10::Error& error) {
    const std::string message = error.what();
    INFO(message);
    return message.find(text) != std::string::npos;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Concepts
// ---------------------------------------------------------------------------------------------------------------

static_assert(PseudoInvertibleOperator<InpaintingOperator>);
static_assert(PseudoInvertibleOperator<SuperResolutionOperator>);
static_assert(PseudoInvertibleOperator<ColorizationOperator>);
static_assert(PseudoInvertibleOperator<IdentityOperator>);
static_assert(LinearOperator<BlurOperator<Gaussian>> && !HasPseudoInverse<BlurOperator<Gaussian>>);
static_assert(LinearOperator<BlurOperator<Motion>> && LinearOperator<BlurOperator<Custom>>);
static_assert(ForwardOperator<PhaseRetrievalOperator> && !LinearOperator<PhaseRetrievalOperator>);
static_assert(!HasAdjoint<PhaseRetrievalOperator> && !HasNaiveInverse<PhaseRetrievalOperator>);
static_assert(ForwardOperator<LambdaOperator> && !LinearOperator<LambdaOperator>);
static_assert(LinearOperator<LinearLambdaOperator> && !PseudoInvertibleOperator<LinearLambdaOperator>);
static_assert(DeterministicBlurKernel<Gaussian> && DeterministicBlurKernel<Custom> &&
              !RandomBlurKernel<Gaussian>);
static_assert(RandomBlurKernel<Motion> && !DeterministicBlurKernel<Motion>);
// Motion kernels need a generator: BlurOperator<Motion> cannot be built from the policy alone.
static_assert(!std::is_constructible_v<BlurOperator<Motion>, Motion>);
static_assert(std::is_constructible_v<BlurOperator<Motion>, Motion, at::Generator&>);
static_assert(!std::is_constructible_v<BlurOperator<Gaussian>, Gaussian, at::Generator&>);

// ---------------------------------------------------------------------------------------------------------------
// Super-resolution
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE(
    "bicubic x4 weights match the reference's imresize weights (DPS util/resizer.py, MATLAB imresize)") {
  const double published[8] = {0.240967,  0.181885,  0.097412,  0.022705,
                               -0.011963, -0.018311, -0.010986, -0.001709};
  const auto matrix = SuperResolutionOperator(4).downsampling_matrix(256);
  REQUIRE(matrix.sizes() == torch::IntArrayRef({64, 256}));
  for (int64_t k : {4, 20, 59}) {  // interior rows, away from the mirrored border
    const auto row = matrix[k];
    CHECK(row.sum().item<double>() == doctest::Approx(1.0).epsilon(1e-12));
    CHECK((row != 0).sum().item<int64_t>() == 16);
    // Output pixel k is centred at input position 4k + 1.5: taps 4k + 1 - j and 4k + 2 + j are at distance j
    // + 0.5.
    for (int64_t j = 0; j < 8; ++j) {
      CHECK(std::abs(row[4 * k + 1 - j].item<double>() - published[j]) < 1e-6);
      CHECK(std::abs(row[4 * k + 2 + j].item<double>() - published[j]) < 1e-6);
    }
  }
  // At the border the taps outside the image are mirrored back ("symmetric"), keeping the row sum at one.
  CHECK(matrix[0].sum().item<double>() == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(matrix[0][0].item<double>() == doctest::Approx(published[1] + published[2]).epsilon(1e-5));
}

TEST_CASE("bicubic downsampling reproduces the reference resizer for factors 2, 3 and 4") {
  const auto x = read_text_tensor("sr_input_1x2x24x24.txt");
  for (int64_t factor : {2, 3, 4}) {
    const auto expected = read_text_tensor("sr_reference_factor" + std::to_string(factor) + ".txt");
    const auto y = SuperResolutionOperator(factor).forward(x);
    REQUIRE(y.sizes() == expected.sizes());
    CHECK((y - expected).abs().max().item<double>() < 1e-6);
  }
}

TEST_CASE("super-resolution adjoints, pseudo-inverses and naive inverse") {
  for (int64_t factor : {2, 3, 4}) {
    CAPTURE(factor);
    check_adjoint(SuperResolutionOperator(factor), {2, 3, 12 * factor / 2, 6 * factor});
    check_pseudo_inverse(SuperResolutionOperator(factor), {1, 2, 12 * factor / 2, 6 * factor});
    check_adjoint(SuperResolutionOperator(factor, DownsamplingMode::AveragePool),
                  {2, 1, 6 * factor, 4 * factor});
    check_pseudo_inverse(SuperResolutionOperator(factor, DownsamplingMode::AveragePool),
                         {1, 1, 6 * factor, 4 * factor});
  }
  SUBCASE("average pooling is the block mean and its pseudo-inverse is nearest upsampling") {
    const auto x = torch::arange(16, torch::kFloat64).reshape({1, 1, 4, 4});
    const SuperResolutionOperator pool(2, DownsamplingMode::AveragePool);
    const auto y = pool.forward(x);
    CHECK(torch::allclose(y, torch::tensor({2.5, 4.5, 10.5, 12.5}, torch::kFloat64).reshape({1, 1, 2, 2})));
    CHECK(torch::allclose(pool.pseudo_inverse(y), y.repeat_interleave(2, 2).repeat_interleave(2, 3)));
  }
  SUBCASE("bicubic upsampling keeps constants and shapes") {
    const auto y = torch::full({2, 3, 5, 7}, 0.25, torch::kFloat32);
    const auto up = SuperResolutionOperator(4).naive_inverse(y);
    CHECK(up.sizes() == torch::IntArrayRef({2, 3, 20, 28}));
    CHECK(up.dtype() == torch::kFloat32);
    CHECK(torch::allclose(up, torch::full_like(up, 0.25), 1e-6, 1e-6));
  }
  SUBCASE("sizes that are not multiples of the factor are rejected with the reason") {
    CHECK(throws_with(
        [] {
          static_cast<void>(SuperResolutionOperator(4).forward(torch::zeros({1, 3, 30, 32})));
        },
        "multiples of the factor"));
    CHECK(throws_with(
        [] {
          static_cast<void>(SuperResolutionOperator(4).forward(torch::zeros({3, 32, 32})));
        },
        "got shape [3, 32, 32]"));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Blur
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("Gaussian kernel matches its closed form (61 x 61, sigma 3, truncated at radius 12)") {
  const auto kernel = BlurOperator<Gaussian>().kernel();
  REQUIRE(kernel.sizes() == torch::IntArrayRef({61, 61}));
  double norm = 0.0;
  for (int d = -12; d <= 12; ++d) norm += std::exp(-d * d / 18.0);
  for (auto [i, j] : {std::pair{30, 30}, {30, 31}, {25, 33}, {18, 42}, {30, 42}}) {
    const int di = i - 30, dj = j - 30;
    const double expected = std::exp(-(di * di + dj * dj) / 18.0) / (norm * norm);
    CHECK(kernel[i][j].item<double>() == doctest::Approx(expected).epsilon(1e-12));
  }
  CHECK(kernel[30][17].item<double>() ==
        0.0);  // radius 13: outside scipy's truncation int(4 sigma + 0.5) = 12
  CHECK((kernel != 0).sum().item<int64_t>() == 25 * 25);
  CHECK(kernel.sum().item<double>() == doctest::Approx(1.0).epsilon(1e-12));
}

TEST_CASE("motion kernels are reproducible per seed, non-negative and sum to one") {
  auto first = make_generator(7);
  auto second = make_generator(7);
  auto other = make_generator(8);
  const auto a = BlurOperator<Motion>(Motion{}, first).kernel();
  const auto b = BlurOperator<Motion>(Motion{}, second).kernel();
  const auto c = BlurOperator<Motion>(Motion{}, other).kernel();
  REQUIRE(a.sizes() == torch::IntArrayRef({61, 61}));
  CHECK(torch::equal(a, b));
  CHECK(!torch::allclose(a, c));
  for (uint64_t seed = 0; seed < 6; ++seed) {
    auto generator = make_generator(seed);
    for (double intensity : {0.0, 0.5, 1.0}) {
      const auto k = Motion{}.size(31).intensity(intensity).make_kernel(generator);
      CAPTURE(seed);
      CAPTURE(intensity);
      CHECK(k.min().item<double>() >= 0.0);
      CHECK(k.sum().item<double>() == doctest::Approx(1.0).epsilon(1e-12));
      CHECK(k.max().item<double>() < 0.9);  // a path, not a single point
    }
  }
}

TEST_CASE("blur forward equals reflect padding + cross-correlation (the reference's nn.Sequential)") {
  auto generator = make_generator(3);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  const auto kernel = at::rand({5, 7}, generator, options);  // asymmetric: catches a flipped kernel
  const auto x = at::randn({2, 3, 12, 10}, generator, options);
  const auto expected = torch::nn::functional::conv2d(torch::reflection_pad2d(x, {3, 3, 2, 2}),
                                                      kernel.view({1, 1, 5, 7}).repeat({3, 1, 1, 1}),
                                                      torch::nn::functional::Conv2dFuncOptions().groups(3));
  CHECK(torch::allclose(BlurOperator<Custom>(Custom(kernel)).forward(x), expected, 1e-12, 1e-12));
  // float32 in, float32 out
  const auto y32 = BlurOperator<Custom>(Custom(kernel)).forward(x.to(torch::kFloat32));
  CHECK(y32.dtype() == torch::kFloat32);
  CHECK(torch::allclose(y32.to(torch::kFloat64), expected, 1e-5, 1e-5));
}

TEST_CASE("blur adjoints, including padding wider than the image") {
  auto generator = make_generator(4);
  check_adjoint(BlurOperator<Gaussian>(Gaussian{}.size(9).sigma(1.5)), {2, 3, 16, 16});
  check_adjoint(BlurOperator<Gaussian>(), {1, 3, 16, 20});  // 61 x 61: pad 30 > 16, reflection repeats
  check_adjoint(BlurOperator<Motion>(Motion{}.size(15), generator), {1, 3, 16, 16});
  check_adjoint(
      BlurOperator<Custom>(Custom(at::rand({3, 5}, generator, torch::TensorOptions(torch::kFloat64)))),
      {2, 2, 9, 7});
  check_adjoint(BlurOperator<Custom>(Custom(torch::ones({3, 3}, torch::kFloat64))),
                {1, 1, 1, 5});  // 1-pixel axis
  const BlurOperator<Gaussian> blur(Gaussian{}.size(5));
  const auto y = torch::rand({1, 1, 8, 8});
  CHECK(torch::equal(blur.naive_inverse(y), y));
}

TEST_CASE("custom kernels must have odd sizes") {
  CHECK(throws_with([] { Custom(torch::ones({4, 4})); }, "odd"));
}

// ---------------------------------------------------------------------------------------------------------------
// Inpainting
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("box masks: reference placement, fixed placement, reproducibility") {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto generator = make_generator(seed);
    const auto mask = BoxMask{}.make_mask(256, 256, generator);
    const auto missing_rows = (mask == 0).any(1).nonzero().flatten();
    const auto missing_cols = (mask == 0).any(0).nonzero().flatten();
    CHECK((mask == 0).sum().item<int64_t>() == 128 * 128);
    REQUIRE(missing_rows.numel() == 128);
    const auto top = missing_rows[0].item<int64_t>(), left = missing_cols[0].item<int64_t>();
    CHECK(top >= 16);
    CHECK(top < 112);
    CHECK(left >= 16);
    CHECK(left < 112);
  }
  auto a = make_generator(5), b = make_generator(5);
  CHECK(torch::equal(BoxMask{}.size(16).make_mask(64, 64, a), BoxMask{}.size(16).make_mask(64, 64, b)));
  auto generator = make_generator(0);
  const auto fixed = BoxMask{}.size(4).top(1).left(2).make_mask(8, 8, generator);
  CHECK(fixed.slice(0, 1, 5).slice(1, 2, 6).sum().item<double>() == 0.0);
  CHECK(fixed.sum().item<double>() == 64 - 16);
  CHECK(throws_with([&] { BoxMask{}.size(128).make_mask(64, 64, generator); }, "does not fit"));
}

TEST_CASE("random-pixel masks drop int(H W p) pixels, the same in every channel") {
  auto generator = make_generator(1);
  const auto mask = RandomPixelMask{}.fraction(0.92).make_mask(32, 32, generator);
  CHECK((mask == 0).sum().item<int64_t>() == static_cast<int64_t>(32 * 32 * 0.92));
  const InpaintingOperator op(RandomPixelMask{}.fraction_range(0.3, 0.7), 16, 16, generator);
  const auto dropped = (op.mask() == 0).sum().item<int64_t>();
  CHECK(dropped >= static_cast<int64_t>(256 * 0.3));
  CHECK(dropped <= static_cast<int64_t>(256 * 0.7));
  const auto y = op.forward(torch::ones({2, 3, 16, 16}));
  CHECK(torch::equal(y[1][2], op.mask().to(torch::kFloat32)));
  CHECK(torch::equal(y[0][0], y[1][1]));
}

TEST_CASE("inpainting is linear with exact adjoint and pseudo-inverse") {
  auto generator = make_generator(2);
  const InpaintingOperator box(BoxMask{}.size(6).margin(2), 16, 16, generator);
  const InpaintingOperator pixels(RandomPixelMask{}, 16, 16, generator);
  const InpaintingOperator soft(at::rand({16, 16}, generator, torch::TensorOptions(torch::kFloat64)));
  for (const auto* op : {&box, &pixels, &soft}) {
    check_adjoint(*op, {2, 3, 16, 16});
    check_pseudo_inverse(*op, {2, 3, 16, 16});
  }
  const auto y = torch::randn({1, 3, 16, 16});
  CHECK(torch::equal(box.naive_inverse(y), y * box.mask().to(torch::kFloat32)));
  CHECK(throws_with([&] { static_cast<void>(box.forward(torch::zeros({1, 3, 8, 16}))); }, "mask is 16x16"));
}

// ---------------------------------------------------------------------------------------------------------------
// Colorization, identity, lambda
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("colorization uses the BT.601 luma weights and is pseudo-invertible") {
  const ColorizationOperator op;
  const auto x = torch::tensor({1.0, -1.0, 0.5}, torch::kFloat64).view({1, 3, 1, 1});
  CHECK(op.forward(x).item<double>() == doctest::Approx(0.299 - 0.587 + 0.5 * 0.114).epsilon(1e-12));
  check_adjoint(op, {2, 3, 5, 4});
  check_pseudo_inverse(op, {2, 3, 5, 4});
  check_adjoint(IdentityOperator{}, {2, 3, 5, 4});
  check_pseudo_inverse(IdentityOperator{}, {2, 3, 5, 4});
  CHECK(op.naive_inverse(torch::zeros({2, 1, 3, 3})).sizes() == torch::IntArrayRef({2, 3, 3, 3}));
  CHECK(throws_with(
      [&] {
        static_cast<void>(op.forward(torch::zeros({1, 1, 4, 4})));
      },
      "expected an RGB image batch [B, 3, H, W]"));
}

TEST_CASE("lambda operators wrap user functions, differentiably") {
  const SuperResolutionOperator sr(2);
  const LinearLambdaOperator linear([&](const Tensor& x) { return sr.forward(x); },
                                    [&](const Tensor& y) { return sr.adjoint(y); },
                                    [&](const Shape& s) { return sr.measurement_shape(s); });
  check_adjoint(linear, {1, 2, 8, 6});
  const LambdaOperator square([](const Tensor& x) { return x * x; }, [](const Shape& s) { return s; });
  const auto x = torch::full({1, 1, 2, 2}, 3.0, torch::requires_grad());
  square.forward(x).sum().backward();
  CHECK(torch::allclose(x.grad(), torch::full({1, 1, 2, 2}, 6.0)));
}

// ---------------------------------------------------------------------------------------------------------------
// Phase retrieval
// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("phase retrieval: reference padding, explicit centred DFT, Parseval, sign invariance") {
  const PhaseRetrievalOperator op(2.0);
  CHECK(op.measurement_shape({1, 3, 256, 256}) ==
        Shape{1, 3, 384, 384});  // pad 64 per side, as the reference
  auto generator = make_generator(9);
  const auto x = at::randn({2, 3, 8, 8}, generator, torch::TensorOptions(torch::kFloat64));
  const auto y = op.forward(x);
  REQUIRE(y.sizes() == torch::IntArrayRef({2, 3, 12, 12}));
  CHECK(y.dtype() == torch::kFloat64);
  // Parseval: the orthonormal transform keeps the energy of every channel.
  CHECK(torch::allclose(y.pow(2).sum({2, 3}), x.pow(2).sum({2, 3}), 1e-10, 1e-10));
  CHECK(torch::allclose(op.forward(-x), y, 1e-12, 1e-12));
  // Explicit DFT of the padded image with centred indices: Y[k] = sum_m x[m] exp(-2 pi i (k - c)(m - c) / N)
  // / N, c = N / 2 (fftshift / ifftshift for even N).
  const int64_t n = 12, c = 6;
  const auto padded = torch::constant_pad_nd(x[1][2], {2, 2, 2, 2});
  for (auto [k, l] : {std::pair<int64_t, int64_t>{0, 0}, {6, 6}, {3, 9}, {11, 1}}) {
    std::complex<double> sum = 0.0;
    for (int64_t m = 0; m < n; ++m)
      for (int64_t q = 0; q < n; ++q)
        sum += padded[m][q].item<double>() *
               std::polar(1.0, -2.0 * M_PI * static_cast<double>((k - c) * (m - c) + (l - c) * (q - c)) / n);
    CHECK(y[1][2][k][l].item<double>() == doctest::Approx(std::abs(sum) / n).epsilon(1e-10));
  }
  // float32 input gives a float32 magnitude
  CHECK(op.forward(x.to(torch::kFloat32)).dtype() == torch::kFloat32);
}
