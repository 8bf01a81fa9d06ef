// libFuzzer harness: read_state_dict(path) on a file holding the input, through the public API only, so that
// it exercises whichever container reader io/checkpoint.hpp uses (zip archive and legacy torch.save format).
// Seeds: the repository's checkpoints (tests/data/checkpoints). Not run by .ci/fuzz yet: the zip reader is
// being replaced (see docs/fuzzing.md for what it finds in the current one).
#include <diffpost/io/checkpoint.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path =
      diffpost::fuzzing::write_scratch_file("input.pt", diffpost::fuzzing::bytes_of(data, size));
  try {
    const auto state = diffpost::read_state_dict(path);
    for (const auto& [name, tensor] : state) {
      // Broadcast views may count 2^62 elements over one stored value: read the small ones only.
      if (tensor.numel() <= 4096) (void)tensor.sum().item<double>();
    }
  } catch (const c10::Error&) {
  }
  return 0;
}
