// libFuzzer harness: read_state_dict(path) on a file holding the input, through the public API only: the zip
// reader (io/detail/zip_archive.hpp), the legacy torch.save format and the pickle interpreter together.
// Seeds: the repository's small checkpoints (tests/data/checkpoints: stored, deflated and zip64 archives,
// legacy).
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
