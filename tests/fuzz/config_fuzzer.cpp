// libFuzzer harness: the model config reader on YAML/JSON text -> AdmUNetOptions, and the LDM first-stage
// reader -> LdmAutoencoderOptions. What they accept must pass validate() again and stay within the
// documented bounds (the UNet's parameters counted without building it). Seeds: the repository's config
// files (tests/data/adm_config, tests/data/cli, tests/data/latent_diffusion, examples/prior).
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
  // The first-stage autoencoder reader (standalone configs, and the first_stage_config of LDM configs).
  try {
    const auto first_stage = diffpost::parse_ldm_first_stage_config(text, "'fuzz.yaml'");
    first_stage.options.validate();
    if (first_stage.options.ch() > diffpost::detail::kLdmFirstStageMaxChannels ||
        first_stage.options.n_embed() > diffpost::detail::kLdmFirstStageMaxCodebook)
      __builtin_trap();
  } catch (const c10::Error&) {
  }
  return 0;
}
