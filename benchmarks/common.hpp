// What the benchmark programs share: the median of the timed repeats, the command line (CLI11), and the
// process settings every one of them takes from its flags (the CPU allocator, then the intra-op thread
// count).
#pragma once

#include <diffpost/runtime/caching_cpu_allocator.hpp>

#include <torch/torch.h>

#include <CLI/CLI.hpp>

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

/// Declares --threads and --cpu-allocator (diffpost's "caching" allocator or LibTorch's "default").
inline void add_process_flags(CLI::App& app, int& threads, std::string& cpu_allocator) {
  app.add_option("--threads", threads, "intra-op threads")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--cpu-allocator", cpu_allocator,
                 "CPU allocator: diffpost's caching one or LibTorch's default")
      ->check(CLI::IsMember({"caching", "default"}))
      ->capture_default_str();
}

/// --warmup (untimed runs first) and --repeats (timed runs; the median is reported).
inline void add_timing_flags(CLI::App& app, int& warmup, int& repeats) {
  app.add_option("--warmup", warmup, "untimed runs first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--repeats", repeats, "timed runs (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

/// Parses the command line into the options declared on `app`; --help prints the help and exits with 0, a
/// bad flag prints CLI11's message and exits with its code.
inline void parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
#ifndef __OPTIMIZE__
  // CI's build (.ci/test) is unoptimised: it only checks that the benchmarks run.
  std::cerr << "warning: " << app.get_name()
            << " was built without optimisation, so its timings are not representative; build it with "
               "-DCMAKE_BUILD_TYPE=Release\n";
#endif
}

/// Installs the chosen CPU allocator before any tensor is made, and sets the intra-op threads.
inline void apply_process_settings(const std::string& cpu_allocator, int threads) {
  if (cpu_allocator == "caching") diffpost::install_caching_cpu_allocator();
  torch::set_num_threads(threads);
}

}  // namespace benchmarks
