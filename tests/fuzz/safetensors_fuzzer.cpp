// libFuzzer harness: read_safetensors(path) on a file holding the input, through the public API: the header
// length checks, the UTF-8 check, the SAX reader of the JSON header (nlohmann::json) and the offset, size and
// dtype checks, then the reads into the tensors. Seeds: the repository's safetensors files (tests/data) and
// small files of every dtype written by make_seeds.
#include <diffpost/io/safetensors.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path =
      diffpost::fuzzing::write_scratch_file("input.safetensors", diffpost::fuzzing::bytes_of(data, size));
  try {
    const auto file = diffpost::read_safetensors(path);
    for (const auto& [name, tensor] : file.tensors) {
      if (tensor.numel() <= 4096) (void)tensor.to(torch::kFloat64).sum().item<double>();
    }
  } catch (const c10::Error&) {
  }
  return 0;
}
