// CUDA graphs for the network evaluation of a sampling loop: the score model's forward pass, and with it the
// backward pass to its input that DPS and PiGDM take every step, captured once at a fixed shape and replayed.
// At batch 1 on a GPU a step of the FFHQ UNet is hundreds of small kernels, and launching them costs a large
// part of the step; a replayed graph launches them as one.
//
// Constraints, the same as PyTorch's `torch.cuda.make_graphed_callables`:
//   * One shape. The graphs are captured for the shape, dtype and device of the first call; calls with
//     another shape (a different batch) run eagerly.
//   * Static buffers. The graph reads x_t and t from tensors it owns and writes its output into another one;
//     each call copies the inputs in and the output out (a few device-to-device copies, no host work).
//   * Capture happens on a side stream after a few eager warm-up passes (cuDNN and cuBLAS choose their
//     algorithms and allocate their workspaces then), with the whole device synchronised around it, once.
//   * Between a forward pass and its backward pass no other forward pass may run (they share the graph's
//     activations); a backward pass of a stale output is an error, not a wrong gradient.
//   * The model must be in eval mode (dropout would need graph-safe random numbers) and must not read the
//     host or synchronise in its forward pass (AdmUNet does neither).
// When capture is impossible - CPU tensors, a LibTorch without CUDA, a model in training mode, or an error
// during capture - the wrapper runs the model eagerly, as if it were not there, and says why
// (`fallback_reason()`); it tries capturing once, not at every step. Not thread-safe: one sampling loop per
// wrapper (and its copies) at a time.
#pragma once

#include <torch/torch.h>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/torch_compat.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace diffpost {

/// Options of CudaGraphModel.
struct CudaGraphOptions {
  /// Eager passes on the side stream before capturing (PyTorch's make_graphed_callables uses 3).
  TORCH_ARG(int64_t, warmup_passes) = 3;
};

namespace detail {

/// The state one CudaGraphModel shares with the autograd nodes of its outputs: the static buffers, the
/// captured graphs, and why the model runs eagerly when it does.
struct CudaGraphState : torch::CustomClassHolder {
  std::string reason;             ///< why the last eager call did not replay a graph; empty otherwise
  bool capture_failed = false;    ///< a capture was tried and failed: run eagerly from then on
  int64_t replays = 0;            ///< forward replays so far
  int64_t generation = 0;         ///< counts forward replays of the differentiable graph
  std::vector<int64_t> x_sizes;   ///< the shape the graphs were captured for
  torch::Tensor static_x;         ///< input buffer (a leaf requiring grad for the differentiable graph)
  torch::Tensor static_t;         ///< timestep buffer
  torch::Tensor static_out;       ///< output buffer
  torch::Tensor static_grad_out;  ///< upstream gradient buffer
  torch::Tensor static_grad_x;    ///< input gradient buffer
  bool differentiable = false;    ///< whether the graphs were captured with the backward pass
#if DIFFPOST_HAS_CUDA
  at::cuda::CUDAGraph forward_graph;
  at::cuda::CUDAGraph backward_graph;
#endif
};

#if DIFFPOST_HAS_CUDA
/// The captured network as an autograd function of x_t: forward replays the forward graph, backward copies
/// the upstream gradient in and replays the backward graph.
class GraphedNetwork : public torch::autograd::Function<GraphedNetwork> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const c10::intrusive_ptr<CudaGraphState>& state, const torch::Tensor& x,
                               const torch::Tensor& t) {
    state->static_x.detach().copy_(x);
    state->static_t.copy_(t);
    state->forward_graph.replay();
    ++state->replays;
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->saved_data["generation"] = ++state->generation;
    return state->static_out.detach().clone();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto state =
        c10::static_intrusive_pointer_cast<CudaGraphState>(ctx->saved_data["state"].toCapsule());
    TORCH_CHECK(
        ctx->saved_data["generation"].toInt() == state->generation,
        "CudaGraphModel: the graph ran another forward pass before this output's backward pass, so its "
        "activations are gone; backpropagate each output before the next call (or run without graphs)");
    state->static_grad_out.copy_(grad_outputs[0]);
    state->backward_graph.replay();
    return {torch::Tensor(), state->static_grad_x.clone(), torch::Tensor()};  // state, x, t
  }
};
#endif

}  // namespace detail

/// A ScoreModel that runs `Model` through CUDA graphs: the first call at a shape captures the network's
/// forward pass (and, when the call builds a graph - `x_t` requires grad under grad mode, as in DPS and PiGDM
/// - the backward pass to x_t as a second graph), later calls replay them. Results are those of the model
/// itself: the same kernels run, so they agree with eager calls to the last bit up to the algorithm choices
/// of cuDNN. Where graphs cannot be used it calls the model eagerly and `fallback_reason()` says why; see the
/// constraints at the top of this header. Copies share the graphs. Use it in place of the model:
///   CudaGraphModel graphed(model);  dps.sample(graphed, y, shape, generator);
template <ScoreModel Model>
class CudaGraphModel {
 public:
  /// Wraps `model` (held by value: a module holder such as AdmUNet shares its module with the caller's).
  explicit CudaGraphModel(Model model, CudaGraphOptions options = {})
      : model_(std::move(model)), options_(options), state_(c10::make_intrusive<detail::CudaGraphState>()) {
    TORCH_CHECK(options_.warmup_passes() >= 1, "CudaGraphOptions::warmup_passes must be >= 1, got ",
                options_.warmup_passes());
  }

  /// The model's output at x_t [B, C, H, W] and timesteps t [B], from the captured graphs when they apply.
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) {
    const bool differentiable = torch::GradMode::is_enabled() && x_t.requires_grad();
    const auto reason = why_not(x_t, t, differentiable);
    if (!reason.empty()) {
      state_->reason = reason;
      return model_(x_t, t);
    }
#if DIFFPOST_HAS_CUDA
    if (state_->x_sizes.empty() && !capture(x_t, t, differentiable)) return model_(x_t, t);
    state_->reason.clear();
    if (differentiable) return detail::GraphedNetwork::apply(state_, x_t, t);
    state_->static_x.detach().copy_(x_t);
    state_->static_t.copy_(t);
    state_->forward_graph.replay();
    ++state_->replays;
    ++state_->generation;  // a pending backward pass would now read these activations
    return state_->static_out.detach().clone();
#else
    return model_(x_t, t);  // unreachable: why_not always has a reason without CUDA
#endif
  }

  /// Whether the model's output carries learned-variance channels (ScoreModel).
  [[nodiscard]] bool learns_variance() const {
    return model_.learns_variance();
  }

  /// Why the last call ran the model eagerly instead of replaying a graph; empty when it replayed (or before
  /// the first call).
  [[nodiscard]] const std::string& fallback_reason() const noexcept {
    return state_->reason;
  }

  /// Whether graphs have been captured (later calls of the captured shape replay them).
  [[nodiscard]] bool captured() const noexcept {
    return !state_->x_sizes.empty();
  }

  /// Forward graph replays so far; tests and benchmarks use it to see that the graphs ran.
  [[nodiscard]] int64_t replays() const noexcept {
    return state_->replays;
  }

  /// The wrapped model.
  Model& model() noexcept {
    return model_;
  }

 private:
  /// Why a call with these inputs cannot replay or capture a graph; empty when it can.
  [[nodiscard]] std::string why_not(const torch::Tensor& x_t, const torch::Tensor& t,
                                    bool differentiable) const {
#if DIFFPOST_HAS_CUDA
    if (!x_t.is_cuda() || !t.is_cuda())
      return "the tensors are on " + x_t.device().str() + ": CUDA graphs need CUDA tensors";
    if constexpr (requires { model_->is_training(); }) {
      if (model_->is_training())
        return "the model is in training mode; call eval() (dropout cannot be replayed from a graph)";
    }
    const auto& s = *state_;
    if (s.capture_failed) return s.reason;
    if (s.x_sizes.empty()) return {};
    if (x_t.sizes().vec() != s.x_sizes || x_t.scalar_type() != s.static_x.scalar_type() ||
        x_t.device() != s.static_x.device() || t.sizes() != s.static_t.sizes()) {
      return "the graphs were captured for x_t " +
             c10::str(c10::IntArrayRef(s.x_sizes), " ", s.static_x.scalar_type(), " on ",
                      s.static_x.device()) +
             ", this call has " + c10::str(x_t.sizes(), " ", x_t.scalar_type(), " on ", x_t.device()) +
             " (a graph has one shape)";
    }
    if (differentiable && !s.differentiable)
      return "the graphs were captured without the backward pass (the first call built no graph)";
    return {};
#else
    (void)x_t, (void)t, (void)differentiable;
    return "this build of diffpost has no CUDA (a CPU-only LibTorch, or DIFFPOST_WITH_CUDA=0)";
#endif
  }

#if DIFFPOST_HAS_CUDA
  /// Captures the graphs for the shape of x_t; false (with the reason recorded) when capture fails.
  bool capture(const torch::Tensor& x_t, const torch::Tensor& t, bool differentiable) {
    auto& s = *state_;
    const c10::cuda::CUDAGuard device_guard(x_t.device());
    auto side = c10::cuda::getStreamFromPool(false, x_t.device().index());
    try {
      torch::cuda::synchronize(x_t.device().index());  // the side stream must see the caller's work
      {
        const c10::cuda::CUDAStreamGuard stream_guard(side);
        // Without the backward pass no autograd graph is recorded, whatever the caller's grad mode.
        const torch::AutoGradMode grad_mode(differentiable);
        s.static_x = x_t.detach().clone().requires_grad_(differentiable);
        s.static_t = t.detach().clone();
        auto pass = [&] {
          auto out = model_(s.static_x, s.static_t);
          if (differentiable) torch::autograd::grad({out}, {s.static_x}, {torch::ones_like(out)});
        };
        for (int64_t i = 0; i < options_.warmup_passes(); ++i) pass();
        side.synchronize();
        s.forward_graph.capture_begin();
        s.static_out = model_(s.static_x, s.static_t);
        s.forward_graph.capture_end();
        if (differentiable) {
          s.static_grad_out = torch::zeros_like(s.static_out);
          s.backward_graph.capture_begin(s.forward_graph.pool());
          s.static_grad_x = torch::autograd::grad({s.static_out}, {s.static_x}, {s.static_grad_out},
                                                  /*retain_graph=*/true)[0];
          s.backward_graph.capture_end();
        }
        side.synchronize();
      }
      s.x_sizes = x_t.sizes().vec();
      s.differentiable = differentiable;
      return true;
    } catch (const std::exception& e) {
      // An error inside a capture leaves the side stream capturing: end that capture so that the stream and
      // the device can be used again, and drop what was captured.
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(side.stream(), &status) == cudaSuccess &&
          status != cudaStreamCaptureStatusNone) {
        cudaGraph_t partial = nullptr;
        if (cudaStreamEndCapture(side.stream(), &partial) == cudaSuccess && partial != nullptr)
          cudaGraphDestroy(partial);
      }
      (void)cudaGetLastError();  // clear the capture error so that later calls do not report it
      s.capture_failed = true;
      s.reason = std::string("CUDA graph capture failed, running eagerly: ") + e.what();
      s.static_x = s.static_t = s.static_out = s.static_grad_out = s.static_grad_x = torch::Tensor();
      return false;
    }
  }
#endif

  Model model_;
  CudaGraphOptions options_;
  c10::intrusive_ptr<detail::CudaGraphState> state_;
};

}  // namespace diffpost
