// The operators' constants (masks, resampling matrices and pseudo-inverses, blur spectra and padding indices,
// luma weights, SVDs) are built once per device, dtype and size, shared by copies, and equal to what a
// per-call computation gives. The "meta" device stands in for a GPU: tensors there have a device other than
// the CPU but no data, so a constant that stayed on the CPU would fail the operation.
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/resampling.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

#include <atomic>
#include <thread>
#include <vector>

using namespace diffpost;
using torch::Tensor;

namespace {

Tensor random_images(const Shape& shape, torch::ScalarType dtype, uint64_t seed = 3) {
  auto generator = make_generator(seed);
  return at::randn(shape, generator, torch::TensorOptions().dtype(dtype));
}

const torch::TensorOptions kMeta = torch::TensorOptions().device(torch::kMeta).dtype(torch::kFloat32);

}  // namespace

TEST_CASE("ConstantCache builds each key once, keyed by name, sizes, device and dtype") {
  diffpost::detail::ConstantCache<Tensor> cache;
  int calls = 0;
  auto make = [&](const torch::TensorOptions& options) {
    return [&calls, options] {
      ++calls;
      return torch::ones({2}, options);
    };
  };
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto first = cache.get({"a", {2}, f32}, make(f32));
  const auto again = cache.get({"a", {2}, f32}, make(f32));
  CHECK(calls == 1);
  CHECK(first.is_same(again));  // the same tensor, not an equal copy
  cache.get({"a", {2}, f64}, make(f64));
  cache.get({"a", {3}, f32}, make(f32));
  cache.get({"b", {2}, f32}, make(f32));
  const auto on_meta = cache.get({"a", {2}, kMeta}, make(kMeta));
  CHECK(calls == 5);
  CHECK(cache.builds() == 5);
  CHECK(cache.size() == 5);
  CHECK(on_meta.device().type() == torch::kMeta);
}

TEST_CASE("ConstantCache makes one value when threads ask at once, and makes plain tensors") {
  diffpost::detail::ConstantCache<Tensor> cache;
  std::atomic<int> calls{0};
  std::vector<Tensor> seen(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&, i] {
      seen[i] = cache.get({"shared", {}, torch::TensorOptions()}, [&] {
        ++calls;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the others arrive meanwhile
        return torch::arange(4.0);
      });
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(calls == 1);
  for (const auto& tensor : seen) CHECK(tensor.is_same(seen[0]));

  // A first call under InferenceMode or with grad mode must not leave an inference tensor or a graph behind.
  Tensor cached;
  {
    c10::InferenceMode inference;
    cached = cache.get({"inference", {}, torch::TensorOptions()}, [] { return torch::ones({3}) * 2; });
  }
  CHECK_FALSE(cached.is_inference());
  auto leaf = torch::ones({3}, torch::requires_grad());
  const auto derived = cache.get({"grad", {}, torch::TensorOptions()}, [&] { return leaf * 2; });
  CHECK_FALSE(derived.requires_grad());
}

TEST_CASE("inpainting converts its mask once per device and dtype, shared by copies") {
  auto generator = make_generator(0);
  InpaintingOperator op(RandomPixelMask{}.fraction(0.5), 16, 16, generator);
  const auto x = random_images({2, 3, 16, 16}, torch::kFloat32);
  const auto expected = x * op.mask().to(x.options()).view({1, 1, 16, 16});  // the per-call computation
  CHECK(torch::equal(op.forward(x), expected));
  CHECK(torch::equal(op.forward(x), expected));
  CHECK(torch::equal(op.adjoint(x), expected));
  CHECK(torch::equal(op.naive_inverse(x), expected));
  CHECK(op.constants_built() == 1);
  const InpaintingOperator copy = op;  // copies share the cache
  CHECK(torch::equal(copy.forward(x), expected));
  static_cast<void>(op.forward(x.to(torch::kFloat64)));
  CHECK(copy.constants_built() == 2);
  const auto on_meta = op.forward(torch::empty({2, 3, 16, 16}, kMeta));
  CHECK(on_meta.device().type() == torch::kMeta);
  CHECK(op.constants_built() == 3);
  // The SVD is built once per image size, device and dtype; the batch size does not matter.
  const auto options = torch::TensorOptions().dtype(torch::kFloat32);
  const auto svd = op.svd({2, 3, 16, 16}, options);
  const auto svd_again = op.svd({5, 3, 16, 16}, options);
  CHECK(svd.singular_values().is_same(svd_again.singular_values()));
}

TEST_CASE("super-resolution builds each matrix and pseudo-inverse once, equal to the per-call ones") {
  for (auto mode : {DownsamplingMode::Bicubic, DownsamplingMode::AveragePool}) {
    CAPTURE(static_cast<int>(mode));
    const SuperResolutionOperator op(4, mode);
    const auto x = random_images({2, 3, 32, 24}, torch::kFloat32);
    const auto y = op.forward(x);
    CHECK(op.constants_built() == 2);  // one matrix per axis length
    // What the operator computed per call before it cached anything.
    const auto per_call = [&](const Tensor& rows, const Tensor& cols, const Tensor& input) {
      return diffpost::detail::apply_separable(rows, cols, input);
    };
    CHECK(torch::equal(y, per_call(op.downsampling_matrix(32), op.downsampling_matrix(24), x)));
    CHECK(torch::equal(op.adjoint(y), per_call(op.downsampling_matrix(32).transpose(0, 1),
                                               op.downsampling_matrix(24).transpose(0, 1), y)));
    CHECK(
        torch::equal(op.pseudo_inverse(y), per_call(at::linalg_pinv(op.downsampling_matrix(32), 1e-15),
                                                    at::linalg_pinv(op.downsampling_matrix(24), 1e-15), y)));
    const auto up_rows = diffpost::detail::resize_matrix(8, 32, 4.0, diffpost::detail::ResampleKernel::Cubic);
    const auto up_cols = diffpost::detail::resize_matrix(6, 24, 4.0, diffpost::detail::ResampleKernel::Cubic);
    CHECK(torch::equal(op.naive_inverse(y), per_call(up_rows, up_cols, y)));
    CHECK(op.constants_built() == 8);  // four kinds, two lengths
    for (int repeat = 0; repeat < 3; ++repeat) {
      static_cast<void>(op.forward(x));
      static_cast<void>(op.adjoint(y));
      static_cast<void>(op.pseudo_inverse(y));
      static_cast<void>(op.naive_inverse(y));
    }
    CHECK(op.constants_built() == 8);
    const auto on_meta = op.forward(torch::empty({2, 3, 32, 24}, kMeta));
    CHECK(on_meta.device().type() == torch::kMeta);
    CHECK(on_meta.sizes() == y.sizes());
    CHECK(op.constants_built() == 10);
  }
}

TEST_CASE("blur computes its kernel spectrum and padding indices once per size, device and dtype") {
  auto generator = make_generator(5);
  const BlurOperator<Motion> op(Motion{}.size(9).intensity(0.5), generator);
  const auto x = random_images({1, 3, 20, 20}, torch::kFloat32);
  const auto y = op.forward(x);
  CHECK(op.constants_built() == 2);  // the spectrum, one index table (H = W)
  static_cast<void>(op.adjoint(y));
  CHECK(op.constants_built() == 2);  // the adjoint uses the same spectrum and indices
  // A new operator with the same kernel computes everything afresh; the cached results are the same bits.
  const BlurOperator<Custom> fresh(Custom(op.kernel()));
  CHECK(torch::equal(op.forward(x), fresh.forward(x)));
  CHECK(torch::equal(op.adjoint(y), fresh.adjoint(y)));
  static_cast<void>(op.forward(random_images({1, 3, 20, 12}, torch::kFloat32)));
  CHECK(op.constants_built() == 4);  // a new padded size and a new width
  static_cast<void>(op.forward(x.to(torch::kFloat64)));
  CHECK(op.constants_built() == 5);  // the indices are dtype-free, the spectrum is not
  // Four threads blurring at once with a fresh operator build every constant once.
  const BlurOperator<Custom> shared(Custom(op.kernel()));
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&] { static_cast<void>(shared.forward(x)); });
  for (auto& thread : threads) thread.join();
  CHECK(shared.constants_built() == 2);
}

TEST_CASE("colorization converts its weights once per device and dtype") {
  const ColorizationOperator op;
  const auto x = random_images({2, 3, 8, 8}, torch::kFloat32);
  const auto w = torch::tensor({0.299, 0.587, 0.114}, torch::kFloat64).to(x.options()).view({1, 3, 1, 1});
  CHECK(torch::equal(op.forward(x), (x * w).sum(1, true)));
  const auto y = op.forward(x);
  CHECK(torch::equal(op.adjoint(y), y * w));
  CHECK(torch::equal(op.pseudo_inverse(y), y * w / (w * w).sum()));
  CHECK(op.constants_built() == 1);
  CHECK(op.forward(torch::empty({2, 3, 8, 8}, kMeta)).device().type() == torch::kMeta);
  CHECK(op.constants_built() == 2);
}
