// The data-fidelity gradient the guided methods descend: the likelihood's residual r(y, A(x)) per sample, and
// its gradient through the operator (and, for DPS, through the network) by autograd. deepinv calls the same
// piece a DataFidelity.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>

namespace diffpost {

/// What is differentiated of the per-sample residuals r_b = likelihood.data_fidelity(y_b, A(x_b)):
enum class FidelityPenalty {
  norm,          ///< sum_b r_b: DPS's step on the plain residual norm (its eq. 16 as the reference runs it)
  squared_norm,  ///< sum_b r_b^2: the Gaussian log-likelihood up to its scale (ScoreALD, DAPS)
  half_squared_norm,  ///< sum_b r_b^2 / 2: the proximal objective (DiffPIR's gradient data step)
};

/// The residuals r [B] (detached) and the gradient of the penalty with respect to the variable.
struct FidelityGradient {
  torch::Tensor residual;
  torch::Tensor gradient;
};

/// The penalty of the residuals of `estimate` against y, differentiated with respect to `variable`, of which
/// `estimate` is a function in the current autograd graph (DPS: x0_hat(x_t) and x_t). Samples are
/// independent, so the gradient of the sum is each sample's own gradient. Checks that the likelihood returns
/// one residual per sample.
template <NoiseModel Likelihood, ForwardOperator Operator>
FidelityGradient fidelity_gradient_through(const Likelihood& likelihood, const Operator& op,
                                           const torch::Tensor& y, const torch::Tensor& estimate,
                                           const torch::Tensor& variable, FidelityPenalty penalty) {
  torch::AutoGradMode enable_grad(true);
  auto residual = likelihood.data_fidelity(y, op.forward(estimate));
  TORCH_CHECK(residual.dim() == 1 && residual.size(0) == estimate.size(0),
              "data_fidelity must return one value per sample, shape [", estimate.size(0), "], got ",
              residual.sizes());
  torch::Tensor objective;
  switch (penalty) {
    case FidelityPenalty::norm:
      objective = residual.sum();
      break;
    case FidelityPenalty::squared_norm:
      objective = residual.square().sum();
      break;
    case FidelityPenalty::half_squared_norm:
      objective = 0.5 * residual.square().sum();
      break;
  }
  auto gradient = torch::autograd::grad({objective}, {variable})[0];
  return {residual.detach(), std::move(gradient)};
}

/// The penalty of the residuals of x itself, differentiated with respect to x (through the operator only).
template <NoiseModel Likelihood, ForwardOperator Operator>
FidelityGradient fidelity_gradient(const Likelihood& likelihood, const Operator& op, const torch::Tensor& y,
                                   const torch::Tensor& x, FidelityPenalty penalty) {
  auto leaf = x.detach().requires_grad_(true);
  return fidelity_gradient_through(likelihood, op, y, leaf, leaf, penalty);
}

}  // namespace diffpost
