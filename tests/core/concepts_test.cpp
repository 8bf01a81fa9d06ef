// Compile-time tests: which types satisfy which concept, and which requirement a near-miss lacks.
#include <diffpost/dps.hpp>
#include <diffpost/methods.hpp>
#include "support/doctest_with_torch.hpp"

using namespace diffpost;
using torch::Tensor;

namespace {

struct NoForward {
  Shape measurement_shape(const Shape& s) const { return s; }
};
struct NoShape {
  Tensor forward(const Tensor& x) const { return x; }
};
struct ForwardReturnsDouble {
  double forward(const Tensor&) const { return 0.0; }
  Shape measurement_shape(const Shape& s) const { return s; }
};
struct NonlinearOnly {
  Tensor forward(const Tensor& x) const { return x.abs(); }
  Shape measurement_shape(const Shape& s) const { return s; }
};
struct NoiseWithoutFidelity {
  Tensor sample(const Tensor& clean, at::Generator&) const { return clean; }
};
struct NoiseWithoutSample {
  Tensor data_fidelity(const Tensor& y, const Tensor& p) const { return (y - p).flatten(1).norm(2, 1); }
};
struct ModelWithoutVarianceKind {
  Tensor operator()(const Tensor& x, const Tensor&) { return x; }
};
struct ModelWithForwardOnly {
  Tensor forward(const Tensor& x, const Tensor&) { return x; }
  bool learns_variance() const { return false; }
};
struct DecompositionWithoutU {
  Tensor singular_values() const { return torch::ones({1}); }
  Tensor v_transpose(const Tensor& x) const { return x; }
  Tensor v(const Tensor& c) const { return c; }
  Tensor u_transpose(const Tensor& y) const { return y; }
};
struct IdentityDecomposition : DecompositionWithoutU {
  Tensor u(const Tensor& c) const { return c; }
};
struct DecomposableWithoutAdjoint {
  Tensor forward(const Tensor& x) const { return x; }
  Shape measurement_shape(const Shape& s) const { return s; }
  IdentityDecomposition svd(const Shape&, const torch::TensorOptions&) const { return {}; }
};
struct SvdReturnsTensor {
  Tensor forward(const Tensor& x) const { return x; }
  Tensor adjoint(const Tensor& y) const { return y; }
  Shape measurement_shape(const Shape& s) const { return s; }
  Tensor svd(const Shape&, const torch::TensorOptions&) const { return {}; }
};
struct NoiseLevelOnly {
  double sigma() const { return 0.1; }
};
struct SamplerWithoutSchedule {
  SamplerStep step(const Tensor& out, const Tensor& x, int64_t, const Tensor&) const { return {x, out}; }
};

/// A minimal method: every requirement of PosteriorStep, the plain reverse step as its correction.
struct MinimalMethod {
  DDPMSampler sampler{DiffusionSchedule::linear().respaced("4")};
  [[nodiscard]] const DiffusionSchedule& schedule() const { return sampler.schedule(); }
  static constexpr bool differentiates_network = false;
  [[nodiscard]] IdentityOperator measurement_operator() const { return {}; }
  template <ScoreModel Model>
  MethodStep correct(Model&, const Tensor&, const NetworkPrediction& p, const Tensor& noise,
                     at::Generator&) const {
    return diffpost::detail::plain_reverse_step(sampler, p, noise);
  }
  static const char* method_name() { return "minimal"; }
  static const char* divergence_remedy() { return "none"; }
};
/// Requirement 1 missing: no schedule.
struct MethodWithoutSchedule : MinimalMethod {
  void schedule() const = delete;
};
/// Requirement 2 missing: whether it differentiates the network is not a compile-time constant.
struct MethodWithRuntimeFlag {
  DDPMSampler sampler{DiffusionSchedule::linear().respaced("4")};
  [[nodiscard]] const DiffusionSchedule& schedule() const { return sampler.schedule(); }
  static inline bool differentiates_network = false;
  [[nodiscard]] IdentityOperator measurement_operator() const { return {}; }
  template <ScoreModel Model>
  MethodStep correct(Model&, const Tensor&, const NetworkPrediction&, const Tensor&, at::Generator&) const {
    return {};
  }
  static const char* method_name() { return "runtime flag"; }
  static const char* divergence_remedy() { return "none"; }
};
/// Requirement 3 missing: its "operator" is not a ForwardOperator.
struct MethodWithNoiseAsOperator : MinimalMethod {
  [[nodiscard]] GaussianLikelihood measurement_operator() const { return GaussianLikelihood(0.1); }
};
/// Requirement 4 missing: its correction returns a tensor, not a MethodStep.
struct MethodReturningTensor : MinimalMethod {
  template <ScoreModel Model>
  Tensor correct(Model&, const Tensor&, const NetworkPrediction&, const Tensor& noise, at::Generator&) const {
    return noise;
  }
};
/// Requirement 4 missing: `prepare` makes a context its correction does not take.
struct RunContext {
  Tensor y;
};
struct MethodIgnoringItsContext : MinimalMethod {
  [[nodiscard]] RunContext prepare(const Tensor& y, const Tensor&) const { return {y}; }
};
/// Requirement 4 met with a context: the correction takes what `prepare` makes.
struct MethodWithContext : MethodIgnoringItsContext {
  template <ScoreModel Model>
  MethodStep correct(Model&, const RunContext&, const NetworkPrediction& p, const Tensor& noise,
                     at::Generator&) const {
    return diffpost::detail::plain_reverse_step(sampler, p, noise);
  }
};
/// Requirement 5 missing: nothing to name it in errors.
struct AnonymousMethod {
  DDPMSampler sampler{DiffusionSchedule::linear().respaced("4")};
  [[nodiscard]] const DiffusionSchedule& schedule() const { return sampler.schedule(); }
  static constexpr bool differentiates_network = false;
  [[nodiscard]] IdentityOperator measurement_operator() const { return {}; }
  template <ScoreModel Model>
  MethodStep correct(Model&, const Tensor&, const NetworkPrediction&, const Tensor&, at::Generator&) const {
    return {};
  }
};

}  // namespace

// Operators.
static_assert(ForwardOperator<IdentityOperator> && PseudoInvertibleOperator<IdentityOperator>);
static_assert(HasNaiveInverse<IdentityOperator>);
static_assert(ForwardOperator<NonlinearOnly> && !LinearOperator<NonlinearOnly>);
static_assert(!HasForward<NoForward> && HasMeasurementShape<NoForward> && !ForwardOperator<NoForward>);
static_assert(HasForward<NoShape> && !HasMeasurementShape<NoShape> && !ForwardOperator<NoShape>);
static_assert(!ForwardOperator<ForwardReturnsDouble>);
// SVDs: a decomposition needs all five pieces; a decomposable operator is linear and returns one from svd().
static_assert(SingularValueDecomposition<SeparableSVD> && SingularValueDecomposition<IdentityDecomposition>);
static_assert(!SingularValueDecomposition<DecompositionWithoutU>);
static_assert(DecomposableOperator<InpaintingOperator> && DecomposableOperator<IdentityOperator>);
static_assert(HasSingularValueDecomposition<DecomposableWithoutAdjoint> &&
              !DecomposableOperator<DecomposableWithoutAdjoint>);
static_assert(LinearOperator<SvdReturnsTensor> && !HasSingularValueDecomposition<SvdReturnsTensor>);
static_assert(!HasSingularValueDecomposition<NonlinearOnly> &&
              !HasSingularValueDecomposition<BlurOperator<Motion>>);
// Noise models.
static_assert(NoiseModel<GaussianLikelihood>);
static_assert(GaussianNoiseModel<GaussianLikelihood> && GaussianNoiseModel<NoNoise>);
static_assert(NoiseModel<PoissonLikelihood> && !HasNoiseLevel<PoissonLikelihood> &&
              !GaussianNoiseModel<PoissonLikelihood>);
static_assert(HasNoiseLevel<NoiseLevelOnly> && !GaussianNoiseModel<NoiseLevelOnly>);
static_assert(HasNoiseSample<NoiseWithoutFidelity> && !NoiseModel<NoiseWithoutFidelity>);
static_assert(HasDataFidelity<NoiseWithoutSample> && !NoiseModel<NoiseWithoutSample>);
// Score models: the call operator is required, a forward() method is not enough.
static_assert(ScoreModel<GaussianPrior>);
static_assert(HasNoisePrediction<ModelWithoutVarianceKind> && !ScoreModel<ModelWithoutVarianceKind>);
static_assert(!HasNoisePrediction<ModelWithForwardOnly> && !ScoreModel<ModelWithForwardOnly>);
// Samplers.
static_assert(Sampler<DDPMSampler> && Sampler<DDIMSampler>);
static_assert(HasReverseStep<SamplerWithoutSchedule> && !Sampler<SamplerWithoutSchedule>);
// Methods: each requirement of PosteriorStep, met and missed.
static_assert(PosteriorStep<MinimalMethod>);
static_assert(!HasSchedule<MethodWithoutSchedule> && !PosteriorStep<MethodWithoutSchedule>);
static_assert(HasSchedule<MethodWithRuntimeFlag> && !DeclaresNetworkGradient<MethodWithRuntimeFlag> &&
              !PosteriorStep<MethodWithRuntimeFlag>);
static_assert(!HasMeasurementOperator<MethodWithNoiseAsOperator> &&
              !PosteriorStep<MethodWithNoiseAsOperator>);
static_assert(!HasCorrection<MethodReturningTensor> && !PosteriorStep<MethodReturningTensor>);
static_assert(HasRunContext<MethodIgnoringItsContext> && !HasCorrection<MethodIgnoringItsContext> &&
              !PosteriorStep<MethodIgnoringItsContext>);
static_assert(std::same_as<method_context_t<MethodWithContext>, RunContext> &&
              PosteriorStep<MethodWithContext>);
static_assert(std::same_as<method_context_t<MinimalMethod>, Tensor>);
static_assert(HasCorrection<AnonymousMethod> && !NamesItself<AnonymousMethod> &&
              !PosteriorStep<AnonymousMethod>);
// Every method of the library is one, and the plain reverse step of unconditional sampling is not (no
// operator).
static_assert(PosteriorStep<DPS<GaussianLikelihood, InpaintingOperator>> &&
              PosteriorStep<DPS<PoissonLikelihood, BlurOperator<Motion>, DDIMSampler>> &&
              PosteriorStep<MCG<GaussianLikelihood, InpaintingOperator>> &&
              PosteriorStep<ScoreSDEProjection<InpaintingOperator>> &&
              PosteriorStep<ScoreALD<GaussianLikelihood, PhaseRetrievalOperator>> &&
              PosteriorStep<SDEdit<SuperResolutionOperator>> &&
              PosteriorStep<DiffPIR<GaussianLikelihood, BlurOperator<Motion>>> &&
              PosteriorStep<DDNM<NoNoise, InpaintingOperator>> &&
              PosteriorStep<PiGDM<GaussianLikelihood, BlurOperator<Motion>>> &&
              PosteriorStep<DDRM<GaussianLikelihood, ColorizationOperator>> &&
              PosteriorStep<DAPS<PoissonLikelihood, PhaseRetrievalOperator>>);
static_assert(!PosteriorStep<diffpost::detail::PlainReverseStep<DDPMSampler>>);
// One operator per image keeps what the per-image operator can do.
static_assert(DecomposableOperator<PerImageOperator<InpaintingOperator>> &&
              PseudoInvertibleOperator<PerImageOperator<InpaintingOperator>> &&
              HasNaiveInverse<PerImageOperator<InpaintingOperator>>);
static_assert(LinearOperator<PerImageOperator<BlurOperator<Motion>>> &&
              !HasSingularValueDecomposition<PerImageOperator<BlurOperator<Motion>>>);
static_assert(ForwardOperator<PerImageOperator<PhaseRetrievalOperator>> &&
              !LinearOperator<PerImageOperator<PhaseRetrievalOperator>> &&
              !HasNaiveInverse<PerImageOperator<PhaseRetrievalOperator>>);
// Nothing else satisfies a concept by accident.
static_assert(!ScoreModel<DDPMSampler> && !Sampler<GaussianPrior> && !NoiseModel<IdentityOperator>);

TEST_CASE("concept checks are compile-time; this case records that the file compiled") {
  CHECK(ForwardOperator<IdentityOperator>);
  CHECK_FALSE(LinearOperator<NonlinearOnly>);
  CHECK(PosteriorStep<MinimalMethod>);
}

TEST_CASE("a method that meets PosteriorStep and nothing more runs through PosteriorSampler") {
  auto prior = GaussianPrior(torch::zeros({1, 4, 4}), torch::ones({1, 4, 4}), DiffusionSchedule::linear());
  const PosteriorSampler sampler(MinimalMethod{}, 3);
  auto generator = make_generator(0);
  int64_t steps = 0;
  const auto x = sampler.sample(prior, torch::zeros({2, 1, 4, 4}), {1, 4, 4}, generator,
                                [&](const StepInfo&) { ++steps; });
  CHECK(x.sizes() == torch::IntArrayRef{6, 1, 4, 4});
  CHECK(steps == 4);
  CHECK((sampler.network_cost() == NetworkCost{4, 0}));
  CHECK_THROWS_WITH_AS(PosteriorSampler(MinimalMethod{}, 0),
                       doctest::Contains("num_samples must be >= 1, got 0"), c10::Error);
}
