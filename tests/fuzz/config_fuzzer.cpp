// libFuzzer harness: the model config reader on YAML/JSON text -> AdmUNetOptions. What it accepts must pass
// validate() again and describe a network within the documented bounds (its parameters counted without
// building it). Seeds: the repository's config files (tests/data/adm_config, tests/data/cli,
// examples/prior).
#include <diffpost/io/model_config.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  diffpost::fuzzing::initialise_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(diffpost::fuzzing::bytes_of(data, size));
  try {
    const auto config = diffpost::parse_adm_model_config(text, "'fuzz.yaml'");
    config.options.validate();
    const auto parameters = diffpost::adm_parameter_count(config.options);
    if (parameters <= 0 || parameters > diffpost::detail::kAdmConfigMaxParameters) __builtin_trap();
  } catch (const c10::Error&) {
  }
  return 0;
}
