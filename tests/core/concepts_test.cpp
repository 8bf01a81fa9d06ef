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
// Noise models.
static_assert(NoiseModel<GaussianLikelihood>);
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
