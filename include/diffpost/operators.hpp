// All measurement operators of diffpost: y = A(x).
#pragma once

#include <diffpost/operators/blur.hpp>
#include <diffpost/operators/colorization.hpp>
#include <diffpost/operators/identity.hpp>
#include <diffpost/operators/inpainting.hpp>
#include <diffpost/operators/lambda.hpp>
#include <diffpost/operators/per_image.hpp>
#include <diffpost/operators/phase_retrieval.hpp>
#include <diffpost/operators/super_resolution.hpp>
