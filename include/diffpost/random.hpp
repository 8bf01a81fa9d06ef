// Random generators. Everything random in diffpost (noise, masks, motion kernels, sampling) is drawn from an
// explicit at::Generator the caller passes in, so that a seed fixes a run.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdint>

namespace diffpost {

/// A CPU random generator seeded with `seed`; pass it to samplers, noise models and random operators.
/// Random numbers are drawn on the generator's device and moved to the tensors' device, so a CPU generator
/// gives the same numbers whether the tensors live on the CPU or on a GPU.
inline at::Generator make_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

}  // namespace diffpost
