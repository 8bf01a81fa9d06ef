// Image quality metrics: PSNR and SSIM per image, on [-1, 1] images scored on the [0, 1] scale.
#pragma once

#include <diffpost/metrics/psnr.hpp>
#include <diffpost/metrics/ssim.hpp>
