// ctest helper of LPIPS, FID and KID in restore and eval (examples/cli/run_paper_metrics_test.cmake): writes,
// into <folder>/hub/checkpoints (a $TORCH_HOME), torchvision's VGG16 and pytorch-fid's Inception with the
// random weights of the metric fixtures (tests/support/metric_weights.hpp), under the file names Python tools
// use.
//   write_metric_weights_fixture <folder>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/metric_weights.hpp>

#include "support/metric_weights.hpp"

#include <cstdio>
#include <filesystem>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_metric_weights_fixture <folder>\n");
    return 2;
  }
  const auto folder = std::filesystem::path(argv[1]) / "hub" / "checkpoints";
  std::filesystem::create_directories(folder);
  const auto overwrite = diffpost::SaveOptions{}.overwrite(true);
  diffpost::save_state_dict(diffpost::testing::random_backbone(diffpost::LpipsNetwork::vgg),
                            folder / diffpost::kVgg16WeightsFile, overwrite);
  diffpost::save_state_dict(diffpost::testing::random_fid_inception(),
                            folder / diffpost::kFidInceptionWeightsFile, overwrite);
  std::printf("wrote %s\n", folder.string().c_str());
  return 0;
}
