// The caching CPU allocator: installation, reuse and its fit rule, the small-block bypass, the cache limit,
// raw allocations (oneDNN's path), pointers of the allocator it replaced, and concurrent use. This suite is
// its own executable because installing the allocator changes the whole process.
#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

namespace {

using diffpost::CachingCpuAllocator;

CachingCpuAllocator& installed_allocator() {
  diffpost::install_caching_cpu_allocator();
  return CachingCpuAllocator::instance();
}

torch::Tensor floats_of_bytes(std::size_t bytes) {
  return torch::empty({static_cast<int64_t>(bytes / sizeof(float))}, torch::kFloat32);
}

}  // namespace

TEST_CASE("install_caching_cpu_allocator makes it LibTorch's CPU allocator, once") {
  auto* const before = c10::GetCPUAllocator();
  auto& allocator = installed_allocator();
  CHECK(before != &allocator);
  CHECK(diffpost::caching_cpu_allocator_installed());
  CHECK(c10::GetCPUAllocator() == &allocator);
  diffpost::install_caching_cpu_allocator();  // a second call changes nothing
  CHECK(c10::GetCPUAllocator() == &allocator);
  const auto tensor = torch::ones({1 << 20});
  CHECK(allocator.owns(tensor.data_ptr()));
}

TEST_CASE("a freed block is handed out again for a request it fits, and only then") {
  auto& allocator = installed_allocator();
  allocator.empty_cache();
  const std::size_t bytes = std::size_t{4} << 20;
  void* first = nullptr;
  {
    const auto tensor = floats_of_bytes(bytes);
    first = tensor.data_ptr();
    CHECK(reinterpret_cast<std::uintptr_t>(first) % 64 == 0);
  }
  CHECK(allocator.stats().cached_bytes == bytes);
  const auto hits = allocator.stats().hits;
  SUBCASE("the same size") {
    const auto again = floats_of_bytes(bytes);
    CHECK(again.data_ptr() == first);
    CHECK(allocator.stats().hits == hits + 1);
    CHECK(allocator.stats().cached_bytes == 0);
  }
  SUBCASE("a smaller request the block exceeds by at most 1/8") {
    const auto smaller = floats_of_bytes(bytes - bytes / 16);
    CHECK(smaller.data_ptr() == first);
  }
  SUBCASE("not a request the block exceeds by more than 1/8, nor a larger one") {
    const auto half = floats_of_bytes(bytes / 2);
    const auto larger = floats_of_bytes(bytes + 64);
    CHECK(half.data_ptr() != first);
    CHECK(larger.data_ptr() != first);
    CHECK(allocator.stats().hits == hits);
    CHECK(allocator.stats().cached_bytes == bytes);
  }
  allocator.empty_cache();
  CHECK(allocator.stats().cached_bytes == 0);
}

TEST_CASE("small blocks bypass the cache and live tensors are counted") {
  auto& allocator = installed_allocator();
  allocator.empty_cache();
  const auto before = allocator.stats();
  {
    const auto small = floats_of_bytes(allocator.min_cached_bytes() / 2);
    CHECK(allocator.owns(small.data_ptr()));
    CHECK(allocator.stats().allocated_bytes == before.allocated_bytes + allocator.min_cached_bytes() / 2);
  }
  const auto after = allocator.stats();
  CHECK(after.cached_bytes == 0);
  CHECK(after.allocated_bytes == before.allocated_bytes);
  CHECK(after.hits + after.misses == before.hits + before.misses);
}

TEST_CASE("the cache limit returns blocks beyond it to the C library") {
  auto& allocator = installed_allocator();
  allocator.empty_cache();
  const auto limit = allocator.max_cached_bytes();
  CHECK(limit > 0);
  { const auto kept = floats_of_bytes(std::size_t{1} << 20); }
  CHECK(allocator.stats().cached_bytes == std::size_t{1} << 20);
  allocator.set_max_cached_bytes(0);  // evicts what is cached, and caches nothing more
  CHECK(allocator.stats().cached_bytes == 0);
  { const auto dropped = floats_of_bytes(std::size_t{1} << 20); }
  CHECK(allocator.stats().cached_bytes == 0);
  allocator.set_max_cached_bytes(limit);
}

TEST_CASE("raw allocations round-trip, and pointers of the replaced allocator go back to it") {
  auto& allocator = installed_allocator();
  allocator.empty_cache();
  auto* const cpu = c10::GetCPUAllocator();
  void* raw = cpu->raw_allocate(std::size_t{2} << 20);
  CHECK(allocator.owns(raw));
  cpu->raw_deallocate(raw);
  CHECK_FALSE(allocator.owns(raw));
  CHECK(allocator.stats().cached_bytes == std::size_t{2} << 20);

  // oneDNN scratch memory raw-allocated before the installation is freed through the new allocator.
  void* foreign = c10::GetDefaultCPUAllocator()->raw_allocate(std::size_t{2} << 20);
  CHECK_FALSE(allocator.owns(foreign));
  cpu->raw_deallocate(foreign);
  CHECK(allocator.stats().cached_bytes == std::size_t{2} << 20);
  allocator.empty_cache();
}

TEST_CASE("concurrent allocation and release keep the books balanced") {
  auto& allocator = installed_allocator();
  allocator.empty_cache();
  const auto before = allocator.stats().allocated_bytes;
  std::atomic<int> corrupted{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < 4; ++id) {
    threads.emplace_back([id, &corrupted] {
      std::mt19937 random(static_cast<unsigned>(id));
      std::uniform_int_distribution<int> kib(1, 4096);
      for (int i = 0; i < 300; ++i) {
        auto tensor = torch::full({kib(random) * 256}, static_cast<float>(id), torch::kFloat32);
        if (tensor.ne(static_cast<float>(id)).any().item<bool>()) ++corrupted;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(corrupted == 0);
  CHECK(allocator.stats().allocated_bytes == before);
  CHECK(allocator.stats().hits > 0);
  allocator.empty_cache();
}

TEST_CASE("a network's forward and backward pass leave no block behind") {
  auto& allocator = installed_allocator();
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 64, 3).padding(1)),
                            torch::nn::SiLU(),
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(64, 3, 3).padding(1)));
  const auto x = torch::randn({2, 3, 64, 64});
  const auto before = allocator.stats().allocated_bytes;
  torch::Tensor first_gradient;
  for (int step = 0; step < 3; ++step) {
    auto input = x.clone().requires_grad_(true);
    auto gradient = torch::autograd::grad({net->forward(input).square().sum()}, {input})[0];
    if (step == 0)
      first_gradient = gradient;
    else
      CHECK(torch::equal(gradient, first_gradient));  // reused memory gives the same numbers
  }
  first_gradient.reset();
  CHECK(allocator.stats().allocated_bytes == before);
  CHECK(allocator.stats().hits > 0);
}
