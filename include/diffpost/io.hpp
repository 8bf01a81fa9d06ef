// Umbrella header: loading and saving files - PyTorch checkpoints and safetensors files (and ADM UNet
// checkpoints with errors that name the configuration), CompVis latent diffusion checkpoints (UNet,
// autoencoder and schedule from a Lightning .ckpt and its YAML), diffusers folders, model configuration
// files, images, datasets, operators built from files (masks and kernels from images, the nonlinear blur from
// its network's weights), the weights of LPIPS and of FID's Inception, numpy .npz files (FID statistics) -
// and the progress bar. Needs zlib, yaml-cpp, nlohmann-json and stb besides LibTorch.
#pragma once

#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/datasets.hpp>
#include <diffpost/io/diffusers.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/latent_diffusion.hpp>
#include <diffpost/io/metric_weights.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/io/npz.hpp>
#include <diffpost/io/operator_files.hpp>
#include <diffpost/io/progress.hpp>
#include <diffpost/io/safetensors.hpp>
