// What most users include: the concepts, schedules and samplers, DPS, the analytic prior, and the measurement
// and noise models.
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/unconditional.hpp>
#include <diffpost/models/gaussian_prior.hpp>
#include <diffpost/noise/gaussian.hpp>
#include <diffpost/operators/identity.hpp>
#include <diffpost/samplers.hpp>
#include <diffpost/schedule.hpp>
