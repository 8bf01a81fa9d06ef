// The GPU-only parts of running diffpost: mixed precision on CUDA (bf16 and fp16), TF32, CUDA graphs, CUDA
// generators, a DPS step with no host-device copy or synchronisation, and the CUDA allocator's peak memory.
#include <diffpost/dps.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/runtime/cuda_graph.hpp>
#include <diffpost/runtime/device.hpp>
#include <diffpost/runtime/memory.hpp>

#include "cuda/cuda_support.hpp"
#include "support/doctest_with_torch.hpp"
#include "support/error_of.hpp"

#if DIFFPOST_HAS_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <string>

using namespace diffpost;
using namespace diffpost::testing;

namespace {

/// Output and input gradient of the sum of squares of the output.
std::pair<torch::Tensor, torch::Tensor> output_and_gradient(AdmUNet& model, const torch::Tensor& x,
                                                            const torch::Tensor& t) {
  auto input = x.detach().requires_grad_(true);
  auto out = model(input, t);
  auto gradient = torch::autograd::grad({out.pow(2).sum()}, {input})[0];
  return {out.detach(), gradient};
}

/// A DPS problem on the small UNet: SR x2 of the reference input, 20 respaced steps.
struct Problem {
  SuperResolutionOperator op{2};
  PosteriorSampler<DPS<GaussianLikelihood, SuperResolutionOperator>> dps{
      {GaussianLikelihood(0.05), op, DDPMSampler(DiffusionSchedule::linear().respaced("20")),
       DPSOptions{}.scale(0.3)}};
  torch::Tensor x;  ///< an iterate x_t on the device
  torch::Tensor y;  ///< its measurement
};

Problem make_problem() {
  Problem problem;
  const auto io = small_reference_run();
  problem.x = io.at("x").to(cuda());
  problem.y = problem.op.forward(problem.x.clamp(-1, 1));
  return problem;
}

/// RAII: CUDA calls that synchronise with the host (copies from pageable memory, .item(), stream and device
/// syncs) throw while it lives.
struct ErrorOnSync {
#if DIFFPOST_HAS_CUDA
  ErrorOnSync() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~ErrorOnSync() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  }
#endif
};

}  // namespace

TEST_CASE("bf16 and fp16 mixed precision on CUDA agree with float32 within their rounding") {
  const auto io = small_reference_run();
  const auto x = io.at("x").to(cuda());
  const auto t = io.at("t").to(cuda());
  auto full = small_model(cuda());
  const auto [full_out, full_gradient] = output_and_gradient(full, x, t);
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    CAPTURE(dtype);
    auto mixed = small_model(cuda());
    mixed->set_compute_dtype(dtype);
    const auto [out, gradient] = output_and_gradient(mixed, x, t);
    CHECK((out.scalar_type() == torch::kFloat32));
    CHECK((gradient.scalar_type() == torch::kFloat32));
    const double output_error = relative_l2_error(out, full_out);
    const double gradient_error = relative_l2_error(gradient, full_gradient);
    MESSAGE(dtype << " on CUDA against float32: output " << output_error << ", input gradient "
                  << gradient_error);
    // As on the CPU (tests/models): unit roundoff 3.9e-3 (bf16) or 4.9e-4 (fp16) over 33 convolutions.
    CHECK(output_error < 3e-2);
    CHECK(gradient_error < 6e-2);
    CHECK(output_error > 1e-5);
  }
}

TEST_CASE("TF32 changes the UNet by about 1e-3, and apply_precision(fp32) turns it off again") {
  const auto io = small_reference_run();
  const auto x = io.at("x").to(cuda());
  const auto t = io.at("t").to(cuda());
  auto model = small_model(cuda());
  apply_precision(Precision::tf32);
  const auto tf32_out = model(x, t).detach();
  apply_precision(Precision::fp32);
  const auto fp32_out = model(x, t).detach();
  const double tf32_error = relative_error(tf32_out, io.at("out"));
  const double fp32_error = relative_error(fp32_out, io.at("out"));
  MESSAGE("against the reference: TF32 " << tf32_error << ", fp32 " << fp32_error);
  CHECK(tf32_error < 1e-2);  // TF32 keeps 10 mantissa bits: 4.9e-4 per product (H200, FFHQ UNet: 8.5e-4)
  CHECK(fp32_error < 1e-5);
}

TEST_CASE("make_generator(seed, cuda) draws reproducible noise on the device") {
  auto first = make_generator(5, cuda());
  auto second = make_generator(5, cuda());
  auto other = make_generator(6, cuda());
  CHECK(first.device().is_cuda());
  const auto options = torch::TensorOptions().device(cuda());
  const auto a = at::randn({1000}, first, options);
  CHECK(a.is_cuda());
  CHECK(torch::equal(a, at::randn({1000}, second, options)));
  CHECK_FALSE(torch::equal(a, at::randn({1000}, other, options)));
  CHECK(error_of([] { make_generator(1, torch::Device(torch::kCUDA, 127)); }).find("this machine has") !=
        std::string::npos);
}

TEST_CASE("a DPS step on CUDA with a CUDA generator copies nothing from the host and never synchronises") {
  auto problem = make_problem();
  auto model = small_model(cuda());
  auto generator = make_generator(0, cuda());
  // The first step fills the caches (operator matrices, the timestep frequencies): copies from the host.
  auto x = problem.dps
               .step(model, problem.x, problem.y, 19, diffpost::detail::randn_like(problem.x, generator),
                     generator)
               .x_prev;
  std::string error = "(no error)";
  {
    [[maybe_unused]] ErrorOnSync error_on_sync;
    error = error_of([&] {
      for (int64_t index = 18; index >= 15; --index)
        x = problem.dps
                .step(model, x, problem.y, index, diffpost::detail::randn_like(x, generator), generator)
                .x_prev;
    });
  }
  CHECK(error == "(no error)");
  CHECK(x.is_cuda());
  CHECK(torch::isfinite(x).all().item<bool>());
}

TEST_CASE("CudaGraphModel captures the network and its input gradient, and replays them") {
  auto problem = make_problem();
  auto model = small_model(cuda());
  CudaGraphModel graphed(model);
  const auto noise = torch::randn_like(problem.x);
  auto generator = make_generator(0);  // DPS draws nothing beyond the step's given noise
  const auto eager = problem.dps.step(model, problem.x, problem.y, 10, noise, generator);
  const auto first = problem.dps.step(graphed, problem.x, problem.y, 10, noise, generator);  // captures
  INFO("fallback reason: " << graphed.fallback_reason());
  REQUIRE(graphed.captured());
  CHECK(graphed.fallback_reason().empty());
  const auto second = problem.dps.step(graphed, problem.x, problem.y, 10, noise, generator);  // replays
  CHECK(graphed.replays() == 2);
  for (const auto& result : {first, second}) {
    const double error = relative_error(result.x_prev, eager.x_prev);
    MESSAGE("DPS step through CUDA graphs against eager: " << error);
    CHECK(error < 1e-6);
    CHECK(relative_error(result.x0_hat, eager.x0_hat) < 1e-6);
  }

  SUBCASE("a whole run through the graphs equals the eager run") {
    auto run = [&](auto& network) {
      auto run_generator = make_generator(9);
      return problem.dps.sample(network, problem.y, {3, 32, 32}, run_generator);
    };
    const auto expected = run(model);
    const auto replays_before = graphed.replays();
    const auto got = run(graphed);
    CHECK(graphed.replays() == replays_before + 20);
    CHECK(relative_error(got, expected) < 1e-5);
  }
  SUBCASE("another batch size runs eagerly and says why") {
    const auto x2 = problem.x.repeat({2, 1, 1, 1});
    const auto t2 = torch::full({x2.size(0)}, 500, torch::TensorOptions().dtype(torch::kLong).device(cuda()));
    const auto out = graphed(x2, t2);
    CHECK(graphed.fallback_reason().find("a graph has one shape") != std::string::npos);
    CHECK(relative_error(out, model(x2, t2)) < 1e-6);
  }
  SUBCASE("a forward pass without a graph replays the forward graph only") {
    torch::NoGradGuard no_grad;
    const auto t =
        torch::full({problem.x.size(0)}, 321, torch::TensorOptions().dtype(torch::kLong).device(cuda()));
    const auto out = graphed(problem.x, t);
    CHECK(graphed.fallback_reason().empty());
    CHECK(relative_error(out, model(problem.x, t)) < 1e-6);
  }
  SUBCASE("backpropagating a stale output is an error, not a wrong gradient") {
    const auto t =
        torch::full({problem.x.size(0)}, 100, torch::TensorOptions().dtype(torch::kLong).device(cuda()));
    auto x1 = problem.x.clone().requires_grad_(true);
    auto out1 = graphed(x1, t);
    auto x2 = problem.x.clone().requires_grad_(true);
    auto out2 = graphed(x2, t);
    std::string stale = "(no error)";
    try {  // the autograd engine may rethrow the backward pass's c10::Error as another exception type
      torch::autograd::grad({out1.sum()}, {x1});
    } catch (const std::exception& e) {
      stale = e.what();
    }
    CHECK(stale.find("another forward pass") != std::string::npos);
    CHECK(torch::autograd::grad({out2.sum()}, {x2})[0].abs().sum().item<double>() > 0.0);
  }
}

TEST_CASE("CudaGraphModel falls back, with a reason, for a model in training mode") {
  auto model = small_model(cuda());
  model->train();
  CudaGraphModel graphed(model);
  const auto io = small_reference_run();
  graphed(io.at("x").to(cuda()), io.at("t").to(cuda()));
  CHECK_FALSE(graphed.captured());
  CHECK(graphed.fallback_reason().find("training mode") != std::string::npos);
}

TEST_CASE("peak memory on CUDA comes from the caching allocator, and checkpointing lowers it") {
  const auto io = small_reference_run();
  const auto x = io.at("x").repeat({8, 1, 1, 1}).to(cuda());
  const auto t = torch::full({x.size(0)}, 500, torch::TensorOptions().dtype(torch::kLong).device(cuda()));
  auto peak_of_step = [&](bool checkpointing) {
    auto model = small_model(cuda());
    model->set_gradient_checkpointing(checkpointing);
    torch::cuda::synchronize();
    reset_peak_memory(cuda());
    const auto [out, gradient] = output_and_gradient(model, x, t);
    torch::cuda::synchronize();
    const auto peak = peak_memory_bytes(cuda());
    REQUIRE(peak.has_value());
    return *peak;
  };
  const auto plain = peak_of_step(false);
  const auto checkpointed = peak_of_step(true);
  MESSAGE("peak of forward + input gradient, batch 16: plain " << plain / 1024 << " KiB, checkpointed "
                                                               << checkpointed / 1024 << " KiB");
  CHECK(plain > 0);
  CHECK(checkpointed < plain);
}
