// TorchScriptScoreModel against Python: tests/data/torchscript/tiny_score.pt is torch.jit.script of
// out = tanh(conv3x3(x)) * (1 + t / 100), and tiny_score_expected.pt holds the output and
// d sum(out * weights) / dx that Python computed for the same x and t (see tests/data/README.md).
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/torchscript.hpp>

#include "support/error_of.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <filesystem>
#include <string>

namespace fs = std::filesystem;
using diffpost::TorchScriptOptions;
using diffpost::TorchScriptScoreModel;
using diffpost::testing::error_of;

static_assert(diffpost::ScoreModel<TorchScriptScoreModel>);
static_assert(!diffpost::ScoreModel<torch::jit::script::Module>, "a bare module has no learns_variance()");

namespace {

const fs::path kDir = fs::path(DIFFPOST_TEST_DATA_DIR) / "torchscript";

}  // namespace

TEST_CASE("TorchScriptScoreModel reproduces the scripted module's output and input gradient from Python") {
  const auto expected = diffpost::read_state_dict(kDir / "tiny_score_expected.pt");
  const TorchScriptScoreModel model(kDir / "tiny_score.pt", TorchScriptOptions{}.learns_variance(true));
  CHECK(model.learns_variance());

  auto x = expected.at("x").clone().requires_grad_(true);
  const auto& t = expected.at("t");
  REQUIRE((t.scalar_type() == torch::kInt64));
  auto out = model(x, t);
  CHECK((out.sizes() == c10::IntArrayRef{2, 2, 5, 5}));
  const double output_error = (out - expected.at("out")).abs().max().item<double>();
  MESSAGE("max |out - python| = " << output_error);
  CHECK(output_error < 1e-6);
  // The t-dependence is real: 1 + t/100 is 1.03 for the first sample and 3.5 for the second.
  CHECK(out[1].abs().max().item<double>() > 1.5);

  (out * expected.at("weights")).sum().backward();
  REQUIRE(x.grad().defined());
  const double gradient_error = (x.grad() - expected.at("grad")).abs().max().item<double>();
  MESSAGE("max |d/dx - python| = " << gradient_error << " (max |d/dx| = "
                                   << expected.at("grad").abs().max().item<double>() << ")");
  CHECK(gradient_error < 1e-5);
  CHECK(expected.at("grad").abs().max().item<double>() > 0.1);

  // Parameters are frozen by default: only the input gradient is computed.
  for (const auto& parameter : const_cast<TorchScriptScoreModel&>(model).module().parameters()) {
    CHECK_FALSE(parameter.requires_grad());
  }
}

TEST_CASE("TorchScriptScoreModel checks the declared output kind and the inputs") {
  auto missing_kind = error_of([] { TorchScriptScoreModel(kDir / "tiny_score.pt", TorchScriptOptions{}); });
  CHECK(missing_kind.find("learns_variance(true) for 2C channels") != std::string::npos);

  const TorchScriptScoreModel eps_only(kDir / "tiny_score.pt", TorchScriptOptions{}.learns_variance(false));
  auto x = torch::zeros({1, 1, 5, 5});
  auto t = torch::tensor({10}, torch::kInt64);
  auto wrong_kind = error_of([&] { eps_only(x, t); });
  CHECK(wrong_kind.find("returned 2 channels for 1 input channels") != std::string::npos);
  CHECK(wrong_kind.find("use learns_variance(true)") != std::string::npos);

  const TorchScriptScoreModel model(kDir / "tiny_score.pt", TorchScriptOptions{}.learns_variance(true));
  CHECK(error_of([&] {
          model(x, torch::tensor({1, 2}, torch::kInt64));
        }).find("timesteps must be [1]") != std::string::npos);
  CHECK(error_of([&] { model(x[0], t); }).find("x_t must be [B, C, H, W]") != std::string::npos);

  auto absent =
      error_of([] { TorchScriptScoreModel(kDir / "absent.pt", TorchScriptOptions{}.learns_variance(true)); });
  CHECK(absent.find("absent.pt\" does not exist") != std::string::npos);
  auto state_dict = error_of([] {
    TorchScriptScoreModel(fs::path(DIFFPOST_TEST_DATA_DIR) / "checkpoints" / "tiny_state_dict.pt",
                          TorchScriptOptions{}.learns_variance(false));
  });
  CHECK(state_dict.find("is not a loadable TorchScript archive") != std::string::npos);
}
