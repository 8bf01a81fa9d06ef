// All measurement noise models of diffpost: y ~ p(y | A(x)).
#pragma once

#include <diffpost/noise/gaussian.hpp>
#include <diffpost/noise/none.hpp>
#include <diffpost/noise/poisson.hpp>
