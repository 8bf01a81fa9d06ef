// Entry point of the CUDA suite (ctest label `cuda`). Without a CUDA device every test here would fail for
// want of a GPU rather than for a defect, so the suite reports itself skipped instead: it exits with 77,
// which tests/CMakeLists.txt declares as the test's SKIP_RETURN_CODE. With a device, TF32 is turned off for
// the whole suite (parity is to float32 rounding) and the tests that ask for TF32 turn it on themselves.
#define DOCTEST_CONFIG_IMPLEMENT
#include "support/doctest_with_torch.hpp"
// Again, for doctest's implementation: the precompiled header may have included doctest.h before the define.
#include <doctest/doctest.h>

#include <diffpost/detail/torch_compat.hpp>
#include <diffpost/runtime/device.hpp>

#include <iostream>
#include <thread>

/// The exit code ctest counts as "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt).
constexpr int kSkipped = 77;

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device ("
              << (diffpost::libtorch_has_cuda() ? "this LibTorch has CUDA but sees no GPU"
                                                : "this LibTorch is a CPU-only build")
              << "); the CUDA suite needs one\n";
    return kSkipped;
  }
  if (!DIFFPOST_HAS_CUDA) {
    std::cerr << "FAILED: a CUDA device is visible but diffpost's CUDA code was compiled out "
                 "(DIFFPOST_WITH_CUDA=0, or the CUDA toolkit's headers were not on the include path)\n";
    return 1;
  }
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  diffpost::apply_precision(diffpost::Precision::fp32);
  doctest::Context context(argc, argv);
  return context.run();
}
