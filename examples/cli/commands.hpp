// Subcommands of the diffpost tool that live in their own translation units.
#pragma once

namespace diffpost::cli {

/// `diffpost eval`: methods x tasks x noise on a set of images, with PSNR, SSIM and a Frechet distance
/// (examples/cli/eval.cpp).
int run_eval(int argc, char** argv);

}  // namespace diffpost::cli
