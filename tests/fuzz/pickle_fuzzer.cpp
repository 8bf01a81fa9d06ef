// libFuzzer harness: detail::Unpickler on raw bytes (a data.pkl), with a storage loader that hands out small
// storages as the checkpoint readers do (refusing what the record could not hold), then a walk over the graph
// the way read_state_dict walks it. Seeds: the data.pkl records of the repository's checkpoints and the
// consecutive pickles of its legacy files (diffpost_fuzz_seeds).
#include <diffpost/io/detail/pickle.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

using diffpost::detail::PickleValue;

// Stands in for a record of at most 4096 elements: the real loaders check numel against the record's bytes.
torch::Tensor small_storage(std::string_view key, torch::ScalarType type, int64_t numel) {
  TORCH_CHECK(numel <= 4096, "fuzz: storage '", key, "' claims ", numel, " elements, more than its record");
  return torch::zeros({numel}, torch::TensorOptions().dtype(type));
}

// Touches what a reader of the graph touches: kinds, dict keys and values, tensor shapes and data.
void walk(const PickleValue& root) {
  (void)diffpost::detail::describe(root);
  for (const auto& [key, value] : root.entries) {
    (void)diffpost::detail::describe(*key);
    // Broadcast views may count 2^62 elements over one stored value: read the small ones only.
    if (value->is(PickleValue::Kind::Tensor) && value->tensor.numel() <= 4096)
      (void)value->tensor.sum().item<double>();
  }
  for (const auto& item : root.items) (void)diffpost::detail::describe(*item);
  if (root.attributes) (void)diffpost::detail::describe(*root.attributes);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    diffpost::detail::Unpickler unpickler(diffpost::fuzzing::bytes_of(data, size), small_storage,
                                          "checkpoint 'fuzz.pt'");
    const auto graph = unpickler.parse();
    walk(*graph.root());
  } catch (const c10::Error&) {
  }
  return 0;
}
