// Shared doctest entry point: fixes LibTorch's thread count (it defaults to one here) before any test runs.
#define DOCTEST_CONFIG_IMPLEMENT
#include "support/doctest_with_torch.hpp"
// Again, for doctest's implementation: the precompiled header may have included doctest.h before the define.
#include <doctest/doctest.h>

#include <thread>

int main(int argc, char** argv) {
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  doctest::Context context(argc, argv);
  return context.run();
}
