// A diffusion prior given as a TorchScript file: any eps-prediction network exported from Python with
// `torch.jit.script(model).save(path)` (or torch.jit.trace) whose `forward(x, t)` returns eps, or eps
// followed by the learned-variance channels. This is the way to bring an architecture diffpost does not
// implement.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>
#include <diffpost/concepts.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// How a TorchScript score model is loaded and read. `learns_variance` must be set: true when forward
/// returns 2C channels (eps, then the `learned_range` variance v, as ADM / improved-DDPM models with
/// learn_sigma), false when it returns eps only; every call checks the channel count against it.
/// `device`: where to load the parameters (default: where they were saved). `freeze_parameters` (default
/// true): parameters stop requiring grad, so backpropagation computes only d/dx_t, all DPS needs.
struct TorchScriptOptions {
  TORCH_ARG(std::optional<bool>, learns_variance) = std::nullopt;
  TORCH_ARG(std::optional<torch::Device>, device) = std::nullopt;
  TORCH_ARG(bool, freeze_parameters) = true;
};

/// A ScoreModel backed by a `torch::jit::script::Module` loaded with `torch::jit::load`. `model(x_t, t)`
/// calls the module's `forward(x_t, t)` with x_t [B, C, H, W] and the original integer timesteps t [B]
/// (int64, passed as they are; a model wanting floats converts inside its forward) and returns its output,
/// checked to be [B, C, H, W] (or [B, 2C, H, W] when `learns_variance`). The module is put in eval mode.
/// Autograd flows through it, so DPS can differentiate the output with respect to x_t. Copies share the
/// loaded module.
class TorchScriptScoreModel {
 public:
  /// Loads `path` (a file written by torch.jit.save). Throws c10::Error naming the path when it cannot be
  /// loaded, and when `options.learns_variance()` was not set.
  TorchScriptScoreModel(const std::filesystem::path& path, const TorchScriptOptions& options) : path_(path) {
    TORCH_CHECK(
        options.learns_variance().has_value(), "TorchScriptScoreModel(", path,
        "): say what forward(x, t) returns: TorchScriptOptions{}.learns_variance(true) for 2C channels "
        "(eps, then the learned variance; ADM / improved DDPM with learn_sigma), or learns_variance(false) "
        "for eps only");
    learns_variance_ = *options.learns_variance();
    std::error_code error;
    TORCH_CHECK(std::filesystem::is_regular_file(path, error), "TorchScriptScoreModel: ", path,
                " does not exist or is not a file");
    try {
      c10::optional<torch::Device> device;  // LibTorch 1.13 takes c10::optional, not std::optional
      if (options.device()) device = *options.device();
      module_ = torch::jit::load(path.string(), device);
    } catch (const c10::Error& e) {
      TORCH_CHECK(
          false, "TorchScriptScoreModel: ", path,
          " is not a loadable TorchScript archive (write one with torch.jit.script(model).save(path); a "
          "torch.save state dict needs a C++ model and load_checkpoint instead): ",
          e.what_without_backtrace());
    }
    module_.eval();
    if (options.freeze_parameters()) {
      for (auto parameter : module_.parameters()) parameter.requires_grad_(false);
    }
  }

  /// Raw network output at (x_t, t): eps in the first C channels, then C variance channels if
  /// learns_variance().
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) const {
    TORCH_CHECK(x_t.dim() == 4, "TorchScriptScoreModel: x_t must be [B, C, H, W], got ", x_t.sizes());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x_t.size(0), "TorchScriptScoreModel: timesteps must be [",
                x_t.size(0), "] (one per batch element), got ", t.sizes());
    auto output = module_.forward({x_t, t});
    TORCH_CHECK(output.isTensor(), "TorchScriptScoreModel: forward(x, t) of ", path_, " returned ",
                output.tagKind(), ", expected a Tensor");
    auto result = output.toTensor();
    const int64_t channels = x_t.size(1);
    const int64_t expected_channels = learns_variance_ ? 2 * channels : channels;
    TORCH_CHECK(result.dim() == 4 && result.size(0) == x_t.size(0) && result.size(2) == x_t.size(2) &&
                    result.size(3) == x_t.size(3),
                "TorchScriptScoreModel: forward(x, t) of ", path_, " returned shape ", result.sizes(),
                " for x_t of shape ", x_t.sizes(), "; expected [B, C or 2C, H, W]");
    if (result.size(1) != expected_channels) {
      const bool looks_learned = result.size(1) == 2 * channels;
      TORCH_CHECK(
          false, "TorchScriptScoreModel: forward(x, t) of ", path_, " returned ", result.size(1),
          " channels for ", channels, " input channels, but it was declared with learns_variance(",
          learns_variance_ ? "true" : "false", "), which means ", expected_channels, ".",
          looks_learned ? " The output looks like eps plus learned variance: use learns_variance(true)."
          : result.size(1) == channels ? " The output looks like eps only: use learns_variance(false)."
                                       : "");
    }
    return result;
  }

  /// Whether the output's second half is the learned (`learned_range`) variance.
  bool learns_variance() const noexcept { return learns_variance_; }

  /// Moves the parameters to `device` and/or `dtype` (inputs must then live there and have that dtype).
  void to(torch::Device device) { module_.to(device); }
  void to(torch::Dtype dtype) { module_.to(dtype); }

  /// The underlying TorchScript module (shared, not copied).
  torch::jit::script::Module& module() noexcept { return module_; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  bool learns_variance_ = false;
  // forward() is not const on jit modules, but calling it does not change this object's state.
  mutable torch::jit::script::Module module_;
};

static_assert(ScoreModel<TorchScriptScoreModel>);

}  // namespace diffpost
