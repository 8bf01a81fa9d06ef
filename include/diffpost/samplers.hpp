// Umbrella header: the diffusion schedule and the reverse-step samplers.
#pragma once

#include <diffpost/samplers/common.hpp>
#include <diffpost/samplers/ddim.hpp>
#include <diffpost/samplers/ddpm.hpp>
#include <diffpost/schedule.hpp>
