// The roles a diffusion posterior sampler is assembled from, as C++20 concepts.
//
//   ForwardOperator  y = A(x)            the measurement physics (LinearOperator refines it)
//   NoiseModel       y ~ p(y | A(x))     how the measurement was corrupted, and the data-fidelity term
//   ScoreModel       eps(x_t, t)         the pretrained diffusion prior
//   Sampler          x_t -> x_{t-1}      one reverse step of the diffusion process
//   PosteriorStep    (x_t, eps) -> x_{t-1} a method's correction of that step by the measurement (DPS, DDRM,
//   ...)
//   Autoencoder      x <-> z             the first stage of a latent diffusion prior (LDM's VQ-f4, KL-f8)
//
// Each concept is split into small named requirements so that a type which misses one gets an error that
// names the missing piece. Conventions shared by all of them: tensors are NCHW, images live in [-1, 1],
// device and dtype are taken from the inputs.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <vector>

namespace diffpost {

/// Shape of a tensor as an owning vector; what `measurement_shape` returns.
using Shape = std::vector<int64_t>;

/// Result of one reverse diffusion step: the next iterate and the denoised estimate it was built from.
struct SamplerStep {
  torch::Tensor x_prev;  ///< x_{t-1}
  torch::Tensor x0_hat;  ///< Tweedie estimate of x_0 from x_t (clipped when the sampler clips)
};

class DiffusionSchedule;

// ---------------------------------------------------------------------------------------------------------------
// ForwardOperator
// ---------------------------------------------------------------------------------------------------------------

/// Requirement 1 of ForwardOperator: `op.forward(x)` maps an image batch [B, C, H, W] to a measurement batch,
/// built from differentiable LibTorch operations so that autograd can take d/dx through it.
template <class Op>
concept HasForward = requires(const Op& op, const torch::Tensor& x) {
  { op.forward(x) } -> std::same_as<torch::Tensor>;
};

/// Requirement 2 of ForwardOperator: `op.measurement_shape(image_shape)` tells the measurement shape produced
/// for an image batch of the given shape, without running the operator.
template <class Op>
concept HasMeasurementShape = requires(const Op& op, const Shape& image_shape) {
  { op.measurement_shape(image_shape) } -> std::convertible_to<Shape>;
};

/// A measurement operator A. Requirements:
///   1. `op.forward(x) -> torch::Tensor`, differentiable in x (HasForward);
///   2. `op.measurement_shape(image_shape) -> Shape` (HasMeasurementShape).
/// Not required: linearity, an adjoint, copyability beyond what the method storing it needs.
/// Refined by LinearOperator.
template <class Op>
concept ForwardOperator = HasForward<Op> && HasMeasurementShape<Op>;

/// Requirement of LinearOperator: `op.adjoint(y)` applies A^T to a measurement batch, returning an image
/// batch.
template <class Op>
concept HasAdjoint = requires(const Op& op, const torch::Tensor& y) {
  { op.adjoint(y) } -> std::same_as<torch::Tensor>;
};

/// A linear measurement operator: a ForwardOperator with an exact adjoint, <A x, y> = <x, A^T y>.
/// Projection methods (MCG, Score-SDE) need it. Refined by PseudoInvertibleOperator.
template <class Op>
concept LinearOperator = ForwardOperator<Op> && HasAdjoint<Op>;

/// Requirement of PseudoInvertibleOperator: `op.pseudo_inverse(y)` applies A^+, with A A^+ A = A.
template <class Op>
concept HasPseudoInverse = requires(const Op& op, const torch::Tensor& y) {
  { op.pseudo_inverse(y) } -> std::same_as<torch::Tensor>;
};

/// A linear operator whose Moore-Penrose pseudo-inverse is cheap (masks, colorization, super-resolution).
/// DDNM needs it.
template <class Op>
concept PseudoInvertibleOperator = LinearOperator<Op> && HasPseudoInverse<Op>;

/// A singular value decomposition A = U diag(s) V^T of a linear operator for one image shape, in spectral
/// coordinates shaped like the image batch [B, C, H, W]. Requirements:
///   1. `svd.singular_values()` -> torch::Tensor broadcastable against [B, C, H, W]: s >= 0, zero on the
///      components A does not measure (its null space);
///   2. `svd.v_transpose(x)` = V^T x and `svd.v(c)` = V c, image batch <-> spectral coordinates (V
///   orthogonal);
///   3. `svd.u_transpose(y)` = U^T y, a measurement batch in spectral coordinates (zero on the components
///      beyond the measurement), and `svd.u(c)` = U c, which reads only the measured components.
/// Then A x = u(s * v_transpose(x)) and A^T y = v(s * u_transpose(y)). Not required: any ordering of the
/// singular values. DDRM works in these coordinates; DDNM+, DiffPIR and PiGDM use them for exact
/// per-component updates.
template <class D>
concept SingularValueDecomposition = requires(const D& svd, const torch::Tensor& t) {
  { svd.singular_values() } -> std::convertible_to<torch::Tensor>;
  { svd.v_transpose(t) } -> std::same_as<torch::Tensor>;
  { svd.v(t) } -> std::same_as<torch::Tensor>;
  { svd.u_transpose(t) } -> std::same_as<torch::Tensor>;
  { svd.u(t) } -> std::same_as<torch::Tensor>;
};

/// Requirement of DecomposableOperator: `op.svd(image_shape, options)` returns the SingularValueDecomposition
/// of A for image batches of `image_shape` [B, C, H, W], its tensors in `options`' dtype and device (computed
/// once per run, not per step).
template <class Op>
concept HasSingularValueDecomposition = requires(const Op& op, const Shape& image_shape,
                                                 const torch::TensorOptions& options) {
  { op.svd(image_shape, options) } -> SingularValueDecomposition;
};

/// A linear operator that exposes its SVD: masks, colorization, super-resolution, separable (Gaussian) blur,
/// the identity. DDRM needs it. Refines LinearOperator.
template <class Op>
concept DecomposableOperator = LinearOperator<Op> && HasSingularValueDecomposition<Op>;

/// `op.naive_inverse(y)`: the image a user would get without a prior (zero-filled inpainting, bicubic
/// upsampling, the blurred image itself). Baselines and SDEdit start from it.
template <class Op>
concept HasNaiveInverse = requires(const Op& op, const torch::Tensor& y) {
  { op.naive_inverse(y) } -> std::same_as<torch::Tensor>;
};

// ---------------------------------------------------------------------------------------------------------------
// NoiseModel
// ---------------------------------------------------------------------------------------------------------------

/// Requirement 1 of NoiseModel: `noise.sample(clean, generator)` draws a noisy measurement from the clean one
/// A(x), using only the given generator so that runs are reproducible.
template <class N>
concept HasNoiseSample = requires(const N& noise, const torch::Tensor& clean, at::Generator& generator) {
  { noise.sample(clean, generator) } -> std::same_as<torch::Tensor>;
};

/// Requirement 2 of NoiseModel: `noise.data_fidelity(y, predicted)` returns one non-negative residual per
/// batch element, shape [B], differentiable in `predicted` = A(x0_hat). DPS descends its gradient (DPS eq.
/// 16).
template <class N>
concept HasDataFidelity = requires(const N& noise, const torch::Tensor& y, const torch::Tensor& predicted) {
  { noise.data_fidelity(y, predicted) } -> std::same_as<torch::Tensor>;
};

/// A measurement noise model p(y | A(x)). Requirements:
///   1. `noise.sample(clean, generator) -> torch::Tensor` (HasNoiseSample);
///   2. `noise.data_fidelity(y, predicted) -> torch::Tensor` of shape [B] (HasDataFidelity).
/// Not required: a closed-form likelihood or a noise level; the residual is what the sampler differentiates.
/// Refined by GaussianNoiseModel.
template <class N>
concept NoiseModel = HasNoiseSample<N> && HasDataFidelity<N>;

/// Requirement of GaussianNoiseModel: `noise.sigma()` gives the standard deviation of additive white Gaussian
/// noise on the [-1, 1] image scale (0 for noise-free measurements).
template <class N>
concept HasNoiseLevel = requires(const N& noise) {
  { noise.sigma() } -> std::convertible_to<double>;
};

/// Additive white Gaussian noise of known level: a NoiseModel with `sigma()` (HasNoiseLevel). The methods
/// whose updates are closed forms in sigma_y (DiffPIR, DDNM+, PiGDM, DDRM) need it; Poisson noise does not
/// satisfy it. GaussianLikelihood and NoNoise (sigma 0) do.
template <class N>
concept GaussianNoiseModel = NoiseModel<N> && HasNoiseLevel<N>;

// ---------------------------------------------------------------------------------------------------------------
// Autoencoder
// ---------------------------------------------------------------------------------------------------------------

/// Requirement 1 of Autoencoder: `codec.decode(z)` maps a latent batch to an image batch, built from
/// differentiable LibTorch operations (latent methods differentiate A(D(z)) with respect to z).
template <class C>
concept HasDecoder = requires(const C& codec, const torch::Tensor& z) {
  { codec.decode(z) } -> std::same_as<torch::Tensor>;
};

/// Requirement 2 of Autoencoder: `codec.encode(x)` maps an image batch to the latent the diffusion model
/// sees, differentiably (PSLD's gluing term differentiates through it).
template <class C>
concept HasEncoder = requires(const C& codec, const torch::Tensor& x) {
  { codec.encode(x) } -> std::same_as<torch::Tensor>;
};

/// Requirement 3 of Autoencoder: `codec.image_shape(latent_shape)` and `codec.latent_shape(image_shape)`
/// convert batch shapes [B, C, H, W] without running the networks.
template <class C>
concept HasLatentShapes = requires(const C& codec, const Shape& shape) {
  { codec.image_shape(shape) } -> std::convertible_to<Shape>;
  { codec.latent_shape(shape) } -> std::convertible_to<Shape>;
};

/// The first stage of a latent diffusion model, whose latents the score model denoises. Requirements:
///   1. `codec.decode(z) -> torch::Tensor`, differentiable in z (HasDecoder);
///   2. `codec.encode(x) -> torch::Tensor`, differentiable in x (HasEncoder);
///   3. `codec.image_shape(latent_shape)` and `codec.latent_shape(image_shape)` (HasLatentShapes).
/// Not required: encode(decode(z)) == z (a VQ codec quantizes), being a torch::nn::Module.
template <class C>
concept Autoencoder = HasDecoder<C> && HasEncoder<C> && HasLatentShapes<C>;

// ---------------------------------------------------------------------------------------------------------------
// ScoreModel
// ---------------------------------------------------------------------------------------------------------------

/// Requirement 1 of ScoreModel: `model(x_t, t)` returns the raw network output for x_t [B, C, H, W] and the
/// original (un-respaced) integer timesteps t [B] (int64): eps in the first C channels, followed by C
/// learned-variance channels when the model learns its variance.
template <class M>
concept HasNoisePrediction = requires(M& model, const torch::Tensor& x_t, const torch::Tensor& t) {
  { model(x_t, t) } -> std::same_as<torch::Tensor>;
};

/// Requirement 2 of ScoreModel: `model.learns_variance()` says whether the output carries the 2C-channel
/// `learned_range` variance (improved DDPM) or eps only.
template <class M>
concept HasVarianceKind = requires(const M& model) {
  { model.learns_variance() } -> std::convertible_to<bool>;
};

/// An eps-prediction diffusion model, the prior. Requirements:
///   1. `model(x_t, t) -> torch::Tensor` (HasNoisePrediction);
///   2. `model.learns_variance() -> bool` (HasVarianceKind).
/// Not required: being a torch::nn::Module (analytic priors such as GaussianPrior are plain classes), or
/// knowing the noise schedule (the sampler owns it).
template <class M>
concept ScoreModel = HasNoisePrediction<M> && HasVarianceKind<M>;

// ---------------------------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------------------------

/// Requirement 1 of Sampler: `sampler.schedule()` gives the (possibly respaced) schedule it steps along.
template <class S>
concept HasSchedule = requires(const S& sampler) {
  { sampler.schedule() } -> std::same_as<const DiffusionSchedule&>;
};

/// Requirement 2 of Sampler: `sampler.step(model_output, x_t, index, noise)` performs reverse step `index`
/// (0 is the last) given the raw model output at x_t and an explicit standard-normal tensor shaped like x_t.
template <class S>
concept HasReverseStep = requires(const S& sampler, const torch::Tensor& model_output,
                                  const torch::Tensor& x_t, int64_t index, const torch::Tensor& noise) {
  { sampler.step(model_output, x_t, index, noise) } -> std::same_as<SamplerStep>;
};

/// One reverse step of a diffusion process. Requirements:
///   1. `sampler.schedule() -> const DiffusionSchedule&` (HasSchedule);
///   2. `sampler.step(model_output, x_t, index, noise) -> SamplerStep` (HasReverseStep).
/// Not required: drawing its own noise (the caller passes it, so steps can be compared number for number).
template <class S>
concept Sampler = HasSchedule<S> && HasReverseStep<S>;

// ---------------------------------------------------------------------------------------------------------------
// PosteriorStep
// ---------------------------------------------------------------------------------------------------------------

/// One evaluation of the score model, as the reverse loop hands it to a method.
struct NetworkPrediction {
  torch::Tensor x_t;     ///< the iterate the network saw; a leaf requiring grad when `output` keeps its graph
  torch::Tensor output;  ///< the raw model output at x_t (eps, possibly followed by variance channels)
  int64_t index;         ///< the schedule step of x_t
};

/// What a method makes of one prediction.
struct MethodStep {
  torch::Tensor x_prev;    ///< x_{t-1}, detached
  torch::Tensor x0_hat;    ///< estimate of x_0 at x_t, detached
  torch::Tensor residual;  ///< data fidelity per sample [B], detached; undefined where a method has none
};

namespace detail {

/// A ScoreModel used only to state PosteriorStep's requirement on `correct`, which takes any score model.
struct ScoreModelArchetype {
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t);
  [[nodiscard]] bool learns_variance() const;
};

}  // namespace detail

/// Optional part of PosteriorStep: `method.prepare(y, like)` computes the constants of one run (the
/// measurement, an operator's SVD, U^T y, ...) once, for measurements y and iterates shaped like `like`.
template <class M>
concept HasRunContext = requires(const M& method, const torch::Tensor& y, const torch::Tensor& like) {
  method.prepare(y, like);
};

/// What a method's `correct` receives as its run's constants: what `prepare` returns, or the measurement
/// batch itself for methods without `prepare`.
template <class M>
struct method_context {
  using type = torch::Tensor;
};
template <HasRunContext M>
struct method_context<M> {
  using type = std::remove_cvref_t<decltype(std::declval<const M&>().prepare(
      std::declval<const torch::Tensor&>(), std::declval<const torch::Tensor&>()))>;
};
template <class M>
using method_context_t = typename method_context<M>::type;

/// Requirement 2 of PosteriorStep: `M::differentiates_network` is a compile-time bool: whether the reverse
/// loop evaluates the network with its graph (DPS and PiGDM backpropagate through it) or without.
template <class M>
concept DeclaresNetworkGradient = requires {
  typename std::bool_constant<M::differentiates_network>;
};

/// Requirement 3 of PosteriorStep: `method.measurement_operator()` gives the ForwardOperator of y = A(x), by
/// which the sampler checks the measurement against the image shape.
template <class M>
concept HasMeasurementOperator = requires(const M& method) {
  method.measurement_operator();
}
&&ForwardOperator<std::remove_cvref_t<decltype(std::declval<const M&>().measurement_operator())>>;

/// Requirement 4 of PosteriorStep: `method.correct(model, context, prediction, noise, generator)` turns the
/// loop's network prediction at x_t into x_{t-1}, for any ScoreModel (checked with an archetype), given the
/// run's context (method_context_t), the standard-normal `noise` the loop drew for this step, and the
/// generator for any further draws.
template <class M, class Model = detail::ScoreModelArchetype>
concept HasCorrection = requires(const M& method, Model& model, const method_context_t<M>& context,
                                 const NetworkPrediction& prediction, const torch::Tensor& noise,
                                 at::Generator& generator) {
  { method.correct(model, context, prediction, noise, generator) } -> std::same_as<MethodStep>;
};

/// Requirement 5 of PosteriorStep: `M::method_name()` and `M::divergence_remedy()` name the method and say
/// what to change when a run diverges, for the loop's error message.
template <class M>
concept NamesItself = requires {
  { M::method_name() } -> std::convertible_to<std::string_view>;
  { M::divergence_remedy() } -> std::convertible_to<std::string_view>;
};

/// A posterior sampling method: how the measurement corrects each reverse step. Requirements:
///   1. `method.schedule() -> const DiffusionSchedule&`: the steps the reverse loop runs (HasSchedule);
///   2. `M::differentiates_network`, a constant bool (DeclaresNetworkGradient);
///   3. `method.measurement_operator()`, a ForwardOperator (HasMeasurementOperator);
///   4. `method.correct(model, context, prediction, noise, generator) -> MethodStep` (HasCorrection);
///   5. `M::method_name()` and `M::divergence_remedy()` (NamesItself).
/// Optional, with defaults: `prepare(y, like)` (HasRunContext; default: the measurement is the context),
/// `start_index()` and `initial_state(y, like, generator)` where a method starts elsewhere than at x_T ~
/// N(0, I) (SDEdit), `network_evaluations(index)` where a step evaluates the network more than once (DAPS).
/// Not required: drawing the loop's noise (the loop draws it, so steps compare number for number), or
/// knowing how many samples are drawn per measurement (PosteriorSampler owns that).
template <class M>
concept PosteriorStep = HasSchedule<M> && DeclaresNetworkGradient<M> && HasMeasurementOperator<M> &&
    HasCorrection<M> && NamesItself<M>;

}  // namespace diffpost
