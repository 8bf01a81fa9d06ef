// The nonlinear blur (bkse's KernelWizard) on CUDA: the DPS reference's output on its random GOPRO-layout
// weights (tests/data/kernel_wizard), and forward and input gradient against the CPU, float32 with TF32 off.
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/nonlinear_blur.hpp>
#include <diffpost/random.hpp>

#include "cuda/cuda_support.hpp"
#include "support/doctest_with_torch.hpp"

#include <string>

using namespace diffpost;
using namespace diffpost::testing;

TEST_CASE("the nonlinear blur on CUDA matches the reference's output and the CPU's input gradient") {
  // The weights of the reference run, drawn in memory (write_random_kernel_wizard(path, 24) writes these).
  KernelWizard network;
  fill_random_kernel_wizard(*network, 24);
  const std::string data = std::string(DIFFPOST_TEST_DATA_DIR) + "/kernel_wizard/";
  const auto checks = read_state_dict(data + "reference_checks.pt");
  const auto expected = torch::cat({read_state_dict(data + "reference_forward_0.pt").at("y"),
                                    read_state_dict(data + "reference_forward_1.pt").at("y")});
  auto input_generator = make_generator(25);
  const auto x = at::rand({2, 3, 256, 256}, input_generator) * 2 - 1;
  NonlinearBlurOperator blur(*network, checks.at("latent"));

  torch::Tensor y_gpu;
  {
    torch::NoGradGuard no_grad;
    y_gpu = blur.forward(x.to(cuda()));
  }
  CHECK(y_gpu.is_cuda());
  CHECK(blur.networks_built() == 1);
  const double output_error = relative_error(y_gpu, expected);
  MESSAGE("nonlinear blur on CUDA against the reference: " << output_error);
  CHECK(output_error < 1e-5);

  auto gradient_on = [&](const torch::Device& device) {
    auto input = x.to(device).requires_grad_(true);
    const auto residual = blur.forward(input) - expected.to(device);
    return torch::autograd::grad({0.5 * residual.pow(2).sum()}, {input})[0];
  };
  const auto gpu_gradient = gradient_on(cuda());
  CHECK(gpu_gradient.is_cuda());
  const double gradient_error = relative_error(gpu_gradient, gradient_on(torch::kCPU));
  MESSAGE("nonlinear blur input gradient, CUDA against CPU: " << gradient_error);
  CHECK(gradient_error < 1e-5);

  // The reference's redrawn latent, from a CUDA generator: draws on the device, two calls differ.
  auto redraw = NonlinearBlurOperator::redrawing_latent_every_call(*network, make_generator(3, cuda()));
  torch::NoGradGuard no_grad;
  const auto first = redraw.forward(x.to(cuda()));
  const auto second = redraw.forward(x.to(cuda()));
  CHECK(first.is_cuda());
  CHECK(relative_error(second, first) > 1e-3);
}
