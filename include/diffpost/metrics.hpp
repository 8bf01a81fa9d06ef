// Image quality metrics: PSNR, SSIM and LPIPS per image pair, on [-1, 1] images (PSNR and SSIM scored on the
// [0, 1] scale), and for sets of images the Frechet distance and the Kernel Inception Distance between
// feature sets, with the FID Inception network that gives the features. The weights of LPIPS and of the
// Inception are loaded by <diffpost/io/metric_weights.hpp>.
#pragma once

#include <diffpost/metrics/fid_inception.hpp>
#include <diffpost/metrics/frechet.hpp>
#include <diffpost/metrics/kid.hpp>
#include <diffpost/metrics/lpips.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/metrics/ssim.hpp>
