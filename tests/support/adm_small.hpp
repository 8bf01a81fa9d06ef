// Test support: the small ADM UNet of the reference runs in tests/data/adm_small (README.md there says how
// they were made), shared by the UNet parity test and the DPS reference-step test.
#pragma once

#include <diffpost/models/adm_unet.hpp>

#include <filesystem>
#include <string>

namespace diffpost::testing {

/// The options of the reference's create_model(32, 32, 1, channel_mult="1,1", learn_sigma=True,
/// attention_resolutions="16", num_heads=4, num_head_channels=16, use_scale_shift_norm=True,
/// resblock_updown=True): legacy attention order, scale-shift norm, resblock up/down, learned sigma.
inline AdmUNetOptions adm_small_options() {
  return AdmUNetOptions(32, 32, 1)
      .channel_mult({1, 1})
      .attention_resolutions({16})
      .num_heads(4)
      .num_head_channels(16)
      .learn_sigma(true)
      .use_scale_shift_norm(true)
      .resblock_updown(true);
}

/// A file of tests/data/adm_small (the reference's weights, inputs and outputs for adm_small_options()).
inline std::string adm_small_file(const std::string& name) {
  return (std::filesystem::path(DIFFPOST_TEST_DATA_DIR) / "adm_small" / name).string();
}

/// The reference's weights for adm_small_options(), saved by torch.save(model.state_dict()).
inline std::string adm_small_state_dict_path() {
  return adm_small_file("small_state_dict.pt");
}

}  // namespace diffpost::testing
