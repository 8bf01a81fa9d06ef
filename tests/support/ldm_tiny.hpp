// The tiny configurations of the LDM fixtures (tests/data/ldm, tests/data/ldm_autoencoder; their README.md
// say how the data was made), shared by the tests that load them.
#pragma once

#include <diffpost/models/ldm_autoencoder.hpp>

#include <string>

namespace diffpost::testing {

/// The tiny VQ autoencoder of tests/data/ldm_autoencoder: widths 32 and 64 (multiples of GroupNorm's 32
/// groups), two levels (factor 2), one residual block, a 16-entry codebook of 3-channel latents.
inline LdmAutoencoderOptions ldm_tiny_vq() {
  return LdmAutoencoderOptions{}
      .embed_dim(3)
      .n_embed(16)
      .z_channels(3)
      .resolution(16)
      .ch(32)
      .ch_mult({1, 2})
      .num_res_blocks(1);
}

/// The CompVis config of the tiny UNet of tests/data/ldm/tiny_unet.ckpt, with `extra` lines appended to its
/// unet_config params.
inline std::string ldm_tiny_yaml(const std::string& extra = "") {
  return R"(model:
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    timesteps: 1000
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 8
        in_channels: 3
        out_channels: 3
        model_channels: 32
        attention_resolutions: [2]
        num_res_blocks: 1
        channel_mult: [1, 1]
        num_head_channels: 8
)" + extra;
}

}  // namespace diffpost::testing
