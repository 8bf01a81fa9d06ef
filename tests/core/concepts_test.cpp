// Compile-time tests: which types satisfy which concept, and which requirement a near-miss lacks.
#include <diffpost/dps.hpp>
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
// Nothing else satisfies a concept by accident.
static_assert(!ScoreModel<DDPMSampler> && !Sampler<GaussianPrior> && !NoiseModel<IdentityOperator>);

TEST_CASE("concept checks are compile-time; this case records that the file compiled") {
  CHECK(ForwardOperator<IdentityOperator>);
  CHECK_FALSE(LinearOperator<NonlinearOnly>);
}
