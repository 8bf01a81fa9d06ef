// Random generators. Everything random in diffpost (noise, masks, motion kernels, sampling) is drawn from an
// explicit at::Generator the caller passes in, so that a seed fixes a run.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <diffpost/runtime/device.hpp>

#include <cstdint>
#include <mutex>

namespace diffpost {

/// A CPU random generator seeded with `seed`; pass it to samplers, noise models and random operators.
/// Random numbers are drawn on the generator's device and moved to the tensors' device, so a CPU generator
/// gives the same numbers whether the tensors live on the CPU or on a GPU.
inline at::Generator make_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

/// A random generator seeded with `seed` on `device`. On the CPU this is `make_generator(seed)`. On a CUDA
/// device it is a fresh CUDA generator (Philox, a copy of the device's default one with its own seed and
/// offset 0; the default generator is left untouched), so that the noise of every step is drawn on the GPU
/// with no copy from the host. The same seed on the same device gives the same run, but a CUDA generator
/// draws other numbers than a CPU one: keep the CPU generator (the default everywhere in diffpost) when runs
/// on the CPU and on a GPU must draw the same noise. Throws a c10::Error when the device is not usable
/// (`check_device`).
inline at::Generator make_generator(uint64_t seed, const torch::Device& device) {
  if (device.is_cpu()) return make_generator(seed);
  check_device(device, "make_generator");
  at::Generator device_default = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(device_default.mutex());  // cloning reads the default's state
  auto generator = device_default.clone();
  generator.set_current_seed(seed);
  return generator;
}

}  // namespace diffpost
