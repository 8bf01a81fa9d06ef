// libFuzzer harness: the image loader, from memory (decode_image) and from a file (load_image), which must
// agree. The channel conversion is chosen by the input's length; the pixel limit is lowered to 2^12 so that
// each input decodes in microseconds (the limit logic is the same at any value). Seeds: the repository's PNGs
// and small images of every supported format written by diffpost_fuzz_seeds.
#include <diffpost/io/image.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = diffpost::fuzzing::bytes_of(data, size);
  static const int channel_choices[] = {0, 1, 3};
  const auto options =
      diffpost::ImageReadOptions{}.channels(channel_choices[size % 3]).max_pixels(int64_t{1} << 12);
  std::optional<torch::Tensor> from_memory;
  try {
    from_memory = diffpost::decode_image(bytes, options);
  } catch (const c10::Error&) {
  }
  if (from_memory) {
    const auto& image = *from_memory;
    if (!(image.dim() == 4 && image.size(0) == 1 && (image.size(1) == 1 || image.size(1) == 3) &&
          image.scalar_type() == torch::kFloat32 && image.min().item<float>() >= -1.0f &&
          image.max().item<float>() <= 1.0f))
      __builtin_trap();  // decoded, but not an image in [-1, 1]
  }
  const auto path = diffpost::fuzzing::write_scratch_file("input", bytes);
  try {
    const auto from_file = diffpost::load_image(path, options);
    if (!from_memory || !torch::equal(from_file, *from_memory)) __builtin_trap();  // file and memory disagree
  } catch (const c10::Error&) {
    if (from_memory) __builtin_trap();
  }
  return 0;
}
