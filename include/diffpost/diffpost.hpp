// Umbrella header: all of diffpost.
#pragma once

#include <diffpost/dps.hpp>
#include <diffpost/io.hpp>
#include <diffpost/methods.hpp>
#include <diffpost/metrics.hpp>
#include <diffpost/models.hpp>
#include <diffpost/training/ema.hpp>
#include <diffpost/training/losses.hpp>
