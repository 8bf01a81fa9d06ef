// CPU against CUDA with TF32 off: the UNet, every operator (forward, adjoint, pseudo-inverse, gradient), one
// DPS step against the reference's fixture, and a 20-step DPS run from the same CPU generator. Bounds are
// float32 rounding with room; the H200 measured 2.1e-6 (UNet against the reference), <= 6.2e-7 (operators),
// 8.6e-8 (a DPS step) and 8.1e-5 (20 steps) with LibTorch 2.11 (docs/performance.md).
#include <diffpost/dps.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>

#include "cuda/cuda_support.hpp"
#include "support/doctest_with_torch.hpp"

#include <functional>
#include <string>

#include <fmt/format.h>

using namespace diffpost;
using namespace diffpost::testing;

namespace {

/// Forward, adjoint (when linear), pseudo-inverse (when it has one) and the gradient of 0.5 ||A x - y||^2 on
/// the CPU and on CUDA, float32, from the same random inputs.
template <ForwardOperator Op>
void check_operator_parity(const Op& op, const Shape& image_shape, const char* name) {
  CAPTURE(name);
  auto generator = make_generator(11);
  const auto options = torch::TensorOptions().dtype(torch::kFloat32);
  const auto x = at::randn(image_shape, generator, options);
  const auto y = at::randn(op.measurement_shape(image_shape), generator, options);
  auto on = [&](const torch::Device& device) {
    std::vector<torch::Tensor> results;
    const auto xd = x.to(device).requires_grad_(true);
    const auto yd = y.to(device);
    const auto ax = op.forward(xd);
    results.push_back(ax.detach());
    results.push_back(torch::autograd::grad({0.5 * (ax - yd).pow(2).sum()}, {xd})[0]);
    if constexpr (LinearOperator<Op>) results.push_back(op.adjoint(yd));
    if constexpr (PseudoInvertibleOperator<Op>) results.push_back(op.pseudo_inverse(yd));
    return results;
  };
  const auto cpu = on(torch::kCPU);
  const auto gpu = on(cuda());
  REQUIRE(cpu.size() == gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    CAPTURE(i);  // 0 forward, 1 gradient, 2 adjoint, 3 pseudo-inverse
    CHECK(gpu[i].is_cuda());
    const double error = relative_error(gpu[i], cpu[i]);
    MESSAGE(name << " result " << i << ": CUDA against CPU " << error);
    CHECK(error < 1e-5);
  }
}

}  // namespace

TEST_CASE("the UNet on CUDA matches the reference's output and the CPU's input gradient") {
  const auto io = small_reference_run();
  auto cpu_model = small_model(torch::kCPU);
  auto gpu_model = small_model(cuda());
  const auto& x = io.at("x");
  const auto& t = io.at("t");
  const auto gpu_out = gpu_model(x.to(cuda()), t.to(cuda()));
  CHECK(gpu_out.is_cuda());
  const double output_error = relative_error(gpu_out, io.at("out"));
  MESSAGE("UNet on CUDA against the reference: " << output_error);
  CHECK(output_error < 1e-5);

  auto gradient_on = [&](AdmUNet& model, const torch::Device& device) {
    auto input = x.to(device).requires_grad_(true);
    auto out = model(input, t.to(device));
    return torch::autograd::grad({out.pow(2).sum()}, {input})[0];
  };
  const double gradient_error =
      relative_error(gradient_on(gpu_model, cuda()), gradient_on(cpu_model, torch::kCPU));
  MESSAGE("UNet input gradient, CUDA against CPU: " << gradient_error);
  CHECK(gradient_error < 1e-5);
}

TEST_CASE("every operator agrees on CUDA and on the CPU: forward, gradient, adjoint, pseudo-inverse") {
  auto generator = make_generator(3);
  const Shape rgb{2, 3, 32, 32};
  check_operator_parity(InpaintingOperator(BoxMask{}.size(12).margin(4), 32, 32, generator), rgb,
                        "box inpainting");
  check_operator_parity(InpaintingOperator(RandomPixelMask{}.fraction(0.7), 32, 32, generator), rgb,
                        "random inpainting");
  check_operator_parity(SuperResolutionOperator(4), rgb, "SR x4 bicubic");
  check_operator_parity(SuperResolutionOperator(2, DownsamplingMode::AveragePool), rgb, "SR x2 average");
  check_operator_parity(BlurOperator<Gaussian>(Gaussian{}.size(9).sigma(2.0)), rgb, "Gaussian blur");
  check_operator_parity(BlurOperator<Motion>(Motion{}.size(9).intensity(0.5), generator), rgb, "motion blur");
  check_operator_parity(ColorizationOperator{}, rgb, "colorization");
  check_operator_parity(PhaseRetrievalOperator(2.0), rgb, "phase retrieval");
  check_operator_parity(IdentityOperator{}, rgb, "identity");
}

TEST_CASE("operators keep their CUDA constants on the device, built once") {
  const SuperResolutionOperator op(4);
  const auto x = torch::randn({1, 3, 32, 32}, torch::TensorOptions().device(cuda()));
  static_cast<void>(op.forward(x));
  const auto built = op.constants_built();
  for (int i = 0; i < 5; ++i) static_cast<void>(op.forward(x));
  CHECK(op.constants_built() == built);
  static_cast<void>(op.forward(x.cpu()));
  CHECK(op.constants_built() == built + 1);  // the CPU has constants of its own
}

TEST_CASE("a DPS step on CUDA matches the reference's p_sample + PosteriorSampling step") {
  auto model = small_model(cuda());
  const auto reference = read_state_dict(std::string(DIFFPOST_TEST_DATA_DIR) + "/dps_step/reference_step.pt");
  const auto& mask = reference.at("mask");
  const PosteriorSampler dps(DPS<GaussianLikelihood, InpaintingOperator>(
      GaussianLikelihood(0.05), InpaintingOperator{mask[0][0]},
      DDPMSampler(DiffusionSchedule::linear().respaced("50")), DPSOptions{}.scale(0.5)));
  auto generator = make_generator(0);  // DPS draws nothing beyond the step's given noise
  for (int index : {35, 0}) {
    CAPTURE(index);
    const auto suffix = fmt::format("_{}", index);
    const auto result = dps.step(model, reference.at("x_t" + suffix).to(cuda()), reference.at("y").to(cuda()),
                                 index, reference.at("noise" + suffix).to(cuda()), generator);
    CHECK(result.x_prev.is_cuda());
    const double x0_error = relative_error(result.x0_hat, reference.at("x0_hat" + suffix));
    const double x_prev_error = relative_error(result.x_prev, reference.at("x_prev" + suffix));
    MESSAGE("DPS step " << index << " on CUDA against the reference: x0_hat " << x0_error << ", x_prev "
                        << x_prev_error);
    CHECK(x0_error < 1e-4);
    CHECK(x_prev_error < 1e-4);
    CHECK(result.residual.cpu().item<double>() ==
          doctest::Approx(reference.at("distance" + suffix).item<double>()).epsilon(1e-5));
  }
}

TEST_CASE("20 DPS steps on CUDA and on the CPU from the same CPU generator agree (TF32 off)") {
  const auto io = small_reference_run();
  auto run = [&](const torch::Device& device) {
    auto model = small_model(device);
    auto generator = make_generator(2024);
    const SuperResolutionOperator op(2);
    const GaussianLikelihood likelihood(0.05);
    const auto truth = io.at("x").clamp(-1, 1).to(device);
    const auto y = likelihood.sample(op.forward(truth), generator);
    const PosteriorSampler dps(DPS<GaussianLikelihood, SuperResolutionOperator>(
        likelihood, op, DDPMSampler(DiffusionSchedule::linear().respaced("20")), DPSOptions{}.scale(0.3)));
    return dps.sample(model, y, {3, 32, 32}, generator);
  };
  const auto cpu = run(torch::kCPU);
  const auto gpu = run(cuda());
  CHECK(gpu.is_cuda());
  const double error = relative_error(gpu, cpu);
  MESSAGE("20-step DPS, CUDA against CPU: " << error);
  CHECK(error < 1e-3);
}
