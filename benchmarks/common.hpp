// What the benchmark programs share: the median of the timed repeats, and the process settings every one of
// them takes from its flags (the CPU allocator, then the intra-op thread count).
#pragma once

#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace benchmarks {

inline double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

/// The value of --cpu-allocator, checked: "caching" (diffpost's caching allocator) or "default" (LibTorch's).
inline std::string cpu_allocator_choice(const std::string& value) {
  if (value != "caching" && value != "default") {
    std::cerr << "--cpu-allocator must be caching or default, not " << value << "\n";
    std::exit(2);
  }
  return value;
}

/// Installs the chosen CPU allocator before any tensor is made, and sets the intra-op threads.
inline void apply_process_settings(const std::string& cpu_allocator, int threads) {
  if (cpu_allocator == "caching") diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(threads);
}

}  // namespace benchmarks
