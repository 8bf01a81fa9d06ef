// Subcommands of the diffpost tool that live in their own translation units.
#pragma once

#include "run_folder.hpp"

namespace diffpost::cli {

/// `diffpost restore`: degrades images and restores them with one method (examples/cli/restore.cpp).
int run_restore(int argc, char** argv);

/// `diffpost eval`: methods x tasks x noise on a set of images, with PSNR, SSIM and a Frechet distance
/// (examples/cli/eval.cpp).
int run_eval(int argc, char** argv);

/// `diffpost score`: PSNR, SSIM, LPIPS, FID and KID between two folders paired by file name
/// (examples/cli/score.cpp).
int run_score_command(int argc, char** argv);

/// The summary files of a sharded restore or eval run in `folder`, made from its records and its stored
/// settings.
int merge_restore(const RunFolder& folder);
int merge_eval(const RunFolder& folder);

}  // namespace diffpost::cli
