// What most users include: the concepts, schedules and samplers, DPS and unconditional sampling, the score
// models (ADM UNet, the analytic Gaussian prior), every measurement operator and noise model, and the caching
// CPU allocator. It needs only LibTorch and fmt: loading files (checkpoints, configs, images, datasets) is in
// <diffpost/io.hpp>.
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include <diffpost/runtime/caching_cpu_allocator.hpp>
#include <diffpost/samplers.hpp>
#include <diffpost/schedule.hpp>
