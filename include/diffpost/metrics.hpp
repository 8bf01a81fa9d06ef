// Image quality metrics: PSNR and SSIM per image, on [-1, 1] images scored on the [0, 1] scale, and the
// Frechet distance between two feature sets.
#pragma once

#include <diffpost/metrics/frechet.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/metrics/ssim.hpp>
