// libFuzzer harness: the strict loaders of the metrics' weights (io/metric_weights.hpp) on a file holding the
// input: read_state_dict (fuzzed on its own by the checkpoint harness), then the LPIPS backbone and heads
// loaders and the FID Inception loader, with their filters (torchvision's classifier, fc,
// num_batches_tracked) and checks. The networks are built once; a load copies nothing unless the whole file
// matches. Seeds: lpips-layout head files (tests/data/metrics/lpips) and small state dicts in the backbone
// and Inception layouts, their big tensors as one-element broadcast views (diffpost_fuzz_seeds).
#include <diffpost/io/metric_weights.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>

namespace {

struct Networks {
  diffpost::Lpips alex{diffpost::LpipsNetwork::alex};
  diffpost::FidInceptionV3 inception;
};

std::unique_ptr<Networks>& networks() {
  static std::unique_ptr<Networks> built;
  return built;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  networks() = std::make_unique<Networks>();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path =
      diffpost::fuzzing::write_scratch_file("input.pth", diffpost::fuzzing::bytes_of(data, size));
  auto& nets = *networks();
  diffpost::StateDict state;
  try {
    state = diffpost::read_state_dict(path);
  } catch (const c10::Error&) {
    return 0;
  }
  try {
    diffpost::load_lpips_heads(nets.alex, state);
  } catch (const c10::Error&) {
  }
  try {
    diffpost::load_lpips_backbone(nets.alex, state);
  } catch (const c10::Error&) {
  }
  try {
    diffpost::load_fid_inception_weights(nets.inception, state);
  } catch (const c10::Error&) {
  }
  return 0;
}
