// Umbrella header: score models and their configuration.
#pragma once

#include <diffpost/models/adm_checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/config.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/models/torchscript.hpp>
