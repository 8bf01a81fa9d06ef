// Umbrella header: the score models (ADM UNet, diffusers UNet2DModel, TorchScript, Gaussian), the LDM
// first-stage autoencoders (VQ-f4, KL-f8) and latent priors over them, the feature classifier of the Frechet
// distance and the bkse blur network of the nonlinear blur (loading them from files: <diffpost/io.hpp>).
#pragma once

#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/classifier.hpp>
#include <diffpost/models/diffusers_unet.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/models/kernel_wizard.hpp>
#include <diffpost/models/latent.hpp>
#include <diffpost/models/ldm_autoencoder.hpp>
#include <diffpost/models/torchscript.hpp>
