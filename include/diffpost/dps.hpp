// What most users include: the concepts, schedules and samplers, DPS, the score models (ADM UNet with
// checkpoint loading, the analytic Gaussian prior), and every measurement operator and noise model.
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/models/adm_checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>
#include <diffpost/samplers.hpp>
#include <diffpost/schedule.hpp>
