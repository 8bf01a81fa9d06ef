// Test support: a small KernelWizard configuration, for tests that need the network's structure but not its
// published size (115 M parameters).
#pragma once

#include <diffpost/models/kernel_wizard.hpp>

namespace diffpost::testing {

/// nf 4, one residual block front and back, kernel_dim 8, one extractor block: every kind of layer of the
/// published configuration, about 0.15 M parameters. Its kernel latent has 32 channels.
inline KernelWizardOptions small_kernel_wizard_options() {
  return KernelWizardOptions{}.nf(4).front_RBs(1).back_RBs(1).kernel_dim(8).extractor_n_blocks(1);
}

}  // namespace diffpost::testing
