// libFuzzer harness: numpy files, through the public API and the .npy parser. The input is decoded as one
// .npy array (detail::decode_npy: the header grammar and the size checks) and, written to a file, read by
// read_npz (the zip reader in its flat layout, inflate, then each record as .npy) and by read_fid_statistics.
// Seeds: the .npz files of tests/data/metrics and each .npy record inside them (diffpost_fuzz_seeds).
#include <diffpost/io/npz.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>

namespace {

// Touches the elements of what was read, as a caller would (the sizes were checked against the input).
void touch(const torch::Tensor& tensor) {
  if (tensor.numel() <= 4096) (void)tensor.sum();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = diffpost::fuzzing::bytes_of(data, size);
  try {
    touch(diffpost::detail::decode_npy(bytes, "fuzz input"));
  } catch (const c10::Error&) {
  }
  const auto path = diffpost::fuzzing::write_scratch_file("input.npz", bytes);
  try {
    for (const auto& [name, tensor] : diffpost::read_npz(path)) touch(tensor);
  } catch (const c10::Error&) {
  }
  try {
    const auto statistics = diffpost::read_fid_statistics(path);
    touch(statistics.sigma);
  } catch (const c10::Error&) {
  }
  return 0;
}
