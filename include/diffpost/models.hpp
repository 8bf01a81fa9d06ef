// Umbrella header: score models and their configuration, and the feature classifier of the Frechet distance.
#pragma once

#include <diffpost/models/adm_checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/classifier.hpp>
#include <diffpost/models/config.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/models/torchscript.hpp>
