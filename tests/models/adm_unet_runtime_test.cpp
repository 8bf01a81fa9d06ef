// How AdmUNet runs, as opposed to what it computes: mixed precision (guided-diffusion's use_fp16 scheme),
// gradient checkpointing, the cached timestep frequencies, and CudaGraphModel's CPU fallback. Numbers are
// checked against the reference's float32 run (tests/data/adm_small) and against the plain model.
#include <diffpost/dps.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/adm_unet.hpp>
#include <diffpost/operators/inpainting.hpp>
#include <diffpost/runtime/cuda_graph.hpp>

#include "support/adm_small.hpp"
#include "support/doctest_with_torch.hpp"
#include "support/error_of.hpp"
#include "support/tensors.hpp"

#include <set>
#include <string>

using namespace diffpost;
using diffpost::testing::error_of;
using diffpost::testing::relative_error;

namespace {

AdmUNet small_model() {
  AdmUNet model(testing::adm_small_options());
  load_checkpoint(model, testing::adm_small_state_dict_path());
  model->eval();
  return model;
}

/// ||actual - expected|| / ||expected||, the error of a whole tensor rather than of its worst element.
double relative_l2_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  return ((actual - expected).norm() / expected.norm()).item<double>();
}

/// Output and input gradient (of the output's sum) of `model` at x, t.
std::pair<torch::Tensor, torch::Tensor> output_and_input_gradient(AdmUNet& model, const torch::Tensor& x,
                                                                  const torch::Tensor& t) {
  auto input = x.detach().requires_grad_(true);
  auto out = model(input, t);
  auto gradient = torch::autograd::grad({out}, {input}, {torch::ones_like(out)})[0];
  return {out.detach(), gradient};
}

/// The parameters guided-diffusion's convert_to_fp16 converts: the weights and biases of every convolution
/// (Conv1d, Conv2d) inside input_blocks, middle_block and output_blocks. A convolution is recognised by its
/// weight's shape (3 or 4 dimensions), read off the state-dict shapes, not off the module tree.
std::set<std::string> converted_parameters(const AdmUNetOptions& options) {
  std::set<std::string> names;
  for (const auto& [name, shape] : adm_state_dict_shapes(options)) {
    const bool in_blocks = name.starts_with("input_blocks.") || name.starts_with("middle_block.") ||
                           name.starts_with("output_blocks.");
    if (!in_blocks || !name.ends_with(".weight") || shape.size() < 3) continue;
    const auto prefix = name.substr(0, name.size() - std::string(".weight").size());
    names.insert(prefix + ".weight");
    names.insert(prefix + ".bias");
  }
  return names;
}

}  // namespace

TEST_CASE("the cached timestep frequencies give the reference's embedding") {
  const auto t = torch::tensor({0, 10, 837, 999}, torch::kLong);
  for (int64_t dim : {32, 33, 128}) {
    CAPTURE(dim);
    const auto freqs = adm::timestep_frequencies(dim / 2);
    CHECK((freqs.scalar_type() == torch::kFloat32));
    CHECK(torch::equal(adm::timestep_embedding(t, dim), adm::timestep_embedding(t, dim, freqs)));
  }
  CHECK(error_of([&] {
          adm::timestep_embedding(t, 32, adm::timestep_frequencies(8));
        }).find("expected 16 frequencies for dim 32") != std::string::npos);
}

TEST_CASE("bf16 mixed precision: the blocks' convolutions in bfloat16, the rest in float32") {
  const auto io = read_state_dict(testing::adm_small_file("small_io.pt"));
  const auto &x = io.at("x"), &t = io.at("t"), &reference = io.at("out");
  auto full = small_model();
  const auto [full_out, full_gradient] = output_and_input_gradient(full, x, t);
  REQUIRE(relative_error(full_out, reference) < 1e-5);

  auto mixed = small_model();
  mixed->set_compute_dtype(torch::kBFloat16);
  CHECK((mixed->compute_dtype() == torch::kBFloat16));
  const auto converted = converted_parameters(testing::adm_small_options());
  CHECK(converted.size() == 66);  // 33 convolutions: 2 per residual block (+1 skip), qkv, proj_out, the input
  for (const auto& item : mixed->named_parameters()) {
    CAPTURE(item.key());
    CHECK((item.value().scalar_type() == (converted.count(item.key()) ? torch::kBFloat16 : torch::kFloat32)));
  }
  const auto [out, gradient] = output_and_input_gradient(mixed, x, t);
  CHECK((out.scalar_type() == torch::kFloat32));
  CHECK((gradient.scalar_type() == torch::kFloat32));
  const double output_error = relative_l2_error(out, reference);
  const double gradient_error = relative_l2_error(gradient, full_gradient);
  MESSAGE("bf16 against float32, relative L2 errors: output "
          << output_error << ", input gradient " << gradient_error << "; worst elements "
          << relative_error(out, reference) << ", " << relative_error(gradient, full_gradient));
  // bfloat16's unit roundoff is 2^-8 = 3.9e-3; the output passes 33 convolutions, the gradient those and
  // their transposes, and independent roundings add up like sqrt(n) u: 2.2e-2 and 3.2e-2. Measured: 1.4e-2
  // and 2.9e-2 (float32 gives 1e-7 here, so the lower bound proves bfloat16 was used).
  CHECK(output_error < 3e-2);
  CHECK(gradient_error < 6e-2);
  CHECK(output_error > 1e-4);
  CHECK(gradient.abs().max().item<double>() > 0.1);  // the gradient flows through the casts

  // Back to float32: every parameter is float32 again, with the bits bfloat16 dropped.
  mixed->set_compute_dtype(torch::kFloat32);
  CHECK((mixed->compute_dtype() == torch::kFloat32));
  for (const auto& p : mixed->parameters()) CHECK((p.scalar_type() == torch::kFloat32));
  CHECK(relative_l2_error(mixed(x, t).detach(), reference) < 3e-2);
  CHECK(
      error_of([&] { mixed->set_compute_dtype(torch::kFloat64); })
          .find(
              "expected torch::kBFloat16, torch::kHalf or the dtype of the model's other parameters (Float), "
              "got Double") != std::string::npos);
}

TEST_CASE("fp16 mixed precision converts the same parameters (its forward pass needs CUDA: tests/cuda)") {
  auto model = small_model();
  model->set_compute_dtype(torch::kHalf);
  CHECK((model->compute_dtype() == torch::kHalf));
  const auto converted = converted_parameters(testing::adm_small_options());
  for (const auto& item : model->named_parameters()) {
    CAPTURE(item.key());
    CHECK((item.value().scalar_type() == (converted.count(item.key()) ? torch::kHalf : torch::kFloat32)));
  }
}

TEST_CASE("gradient checkpointing: the same output, the same gradients up to the order of their sums") {
  const auto io = read_state_dict(testing::adm_small_file("small_io.pt"));
  const auto &x = io.at("x"), &t = io.at("t");
  auto plain = small_model();
  auto checkpointed = small_model();
  checkpointed->set_gradient_checkpointing(true);
  CHECK(checkpointed->gradient_checkpointing());

  SUBCASE("float32 input gradient, as DPS takes it") {
    const auto [plain_out, plain_gradient] = output_and_input_gradient(plain, x, t);
    const auto [out, gradient] = output_and_input_gradient(checkpointed, x, t);
    CHECK(torch::equal(out, plain_out));
    const double error = relative_error(gradient, plain_gradient);
    MESSAGE("float32 input gradient, checkpointed against plain: " << error);
    CHECK(error < 1e-6);
    CHECK(gradient.abs().max().item<double>() > 0.1);
  }
  SUBCASE("float64 training step: every parameter's gradient") {
    plain->to(torch::kFloat64);
    checkpointed->to(torch::kFloat64);
    plain->train();
    checkpointed->train();
    const auto x64 = x.to(torch::kFloat64);
    plain(x64, t).pow(2).mean().backward();
    checkpointed(x64, t).pow(2).mean().backward();
    const auto expected = plain->named_parameters();
    double worst = 0.0;
    for (const auto& item : checkpointed->named_parameters()) {
      CAPTURE(item.key());
      const auto& want = expected[item.key()].grad();
      REQUIRE(item.value().grad().defined());
      const double scale = want.abs().max().item<double>();
      REQUIRE(scale > 0.0);
      worst = std::max(worst, ((item.value().grad() - want).abs().max() / scale).item<double>());
    }
    MESSAGE("float64 parameter gradients, checkpointed against plain: worst " << worst);
    CHECK(worst < 1e-12);
  }
  SUBCASE("a forward pass without a graph is not checkpointed") {
    torch::NoGradGuard no_grad;
    const auto out = checkpointed(x, t);
    CHECK_FALSE(out.requires_grad());
    CHECK(torch::equal(out, plain(x, t)));
  }
}

TEST_CASE("gradient checkpointing refuses active dropout, which recomputation would redraw") {
  auto model = AdmUNet(testing::adm_small_options().dropout(0.1));
  model->set_gradient_checkpointing(true);
  const auto x = torch::randn({1, 3, 32, 32});
  const auto t = torch::tensor({5}, torch::kLong);
  CHECK(error_of([&] { model(x, t); }).find("gradient checkpointing recomputes every block") !=
        std::string::npos);
  model->eval();
  CHECK(error_of([&] { model(x, t); }) == "(no error)");
}

TEST_CASE("CudaGraphModel runs a CPU model eagerly, says why, and changes no number of a DPS step") {
  static_assert(ScoreModel<CudaGraphModel<AdmUNet>>);
  auto model = small_model();
  CudaGraphModel graphed(model);
  CHECK(graphed.learns_variance());
  const auto io = read_state_dict(testing::adm_small_file("small_io.pt"));
  const auto &x = io.at("x"), &t = io.at("t");
  CHECK(torch::equal(graphed(x, t), model(x, t)));
  CHECK(graphed.fallback_reason().find("CUDA") != std::string::npos);
  CHECK_FALSE(graphed.captured());
  CHECK(graphed.replays() == 0);

  auto generator = make_generator(0);
  const InpaintingOperator op(BoxMask{}.size(16).margin(4), 32, 32, generator);
  const PosteriorSampler dps(DPS<GaussianLikelihood, InpaintingOperator>(
      GaussianLikelihood(0.05), op, DDPMSampler(DiffusionSchedule::linear().respaced("20")),
      DPSOptions{}.scale(0.5)));
  const auto y = op.forward(x);
  const auto noise = torch::randn_like(x);
  const auto expected = dps.step(model, x, y, 12, noise, generator);
  const auto got = dps.step(graphed, x, y, 12, noise, generator);
  CHECK(torch::equal(got.x_prev, expected.x_prev));
  CHECK(torch::equal(got.x0_hat, expected.x0_hat));
  CHECK(error_of([] {
          CudaGraphModel<AdmUNet>(AdmUNet(testing::adm_small_options()), CudaGraphOptions{}.warmup_passes(0));
        }).find("warmup_passes must be >= 1, got 0") != std::string::npos);
}
