// Umbrella header: loading and saving files - PyTorch checkpoints (and ADM UNet checkpoints with errors that
// name the configuration), model configuration files, images, datasets, operators from image files, the
// weights of LPIPS and of FID's Inception, numpy .npz files (FID statistics) - and the progress bar. Needs
// zlib, yaml-cpp and stb besides LibTorch.
#pragma once

#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/io/npz.hpp>
#include <diffpost/io/operator_files.hpp>
#include <diffpost/io/progress.hpp>
