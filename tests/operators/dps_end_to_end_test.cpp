// End to end: DPS with an analytic GaussianPrior restores a degraded measurement of every operator family,
// i.e. the measurement residual of its sample comes down to about the noise level and far below the residual
// of the prior mean. Images are small (16 x 16) and runs short (100 respaced steps) so each case takes about
// a second.
#include <diffpost/dps.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include "support/doctest_with_torch.hpp"

#include <cmath>

using namespace diffpost;
using torch::Tensor;

namespace {

constexpr double kSigma = 0.05;  // the reference's noise level on the [-1, 1] scale

/// Independent pixels, N(0, 0.4^2), C x 16 x 16.
GaussianPrior white_prior(int64_t channels) {
  return GaussianPrior(torch::zeros({channels, 16, 16}, torch::kFloat64),
                       torch::full({channels, 16, 16}, 0.4, torch::kFloat64), DiffusionSchedule::linear());
}

/// Smooth gray images: squared-exponential covariance 0.5^2 exp(-d^2 / (2 * 2^2)) between pixels at distance
/// d. Blur and decimation keep most of such an image, so the measurement says something about it.
GaussianPrior smooth_prior() {
  const auto axis = torch::arange(16, torch::kFloat64);
  const auto coords = torch::stack(torch::meshgrid({axis, axis}, "ij"), -1).reshape({-1, 2});
  const auto d2 = (coords.unsqueeze(1) - coords.unsqueeze(0)).pow(2).sum(-1);
  const auto covariance = 0.25 * torch::exp(-d2 / 8.0) + 1e-4 * torch::eye(256, torch::kFloat64);
  return GaussianPrior::with_covariance(torch::zeros({1, 16, 16}, torch::kFloat64), covariance,
                                        DiffusionSchedule::linear());
}

struct Outcome {
  double residual_rms;        ///< ||y - A x|| / sqrt(m) of the DPS sample
  double prior_residual_rms;  ///< the same for the prior mean (zero)
};

/// Draws a truth from the prior, measures it with noise, runs DPS and returns the residuals.
template <ForwardOperator Op>
Outcome restore(const Op& op, GaussianPrior& prior, double scale, uint64_t seed) {
  auto generator = make_generator(seed);
  const auto shape = prior.image_shape();
  const Tensor truth = prior.sample(1, generator).to(torch::kFloat32);
  const GaussianLikelihood likelihood(kSigma);
  const Tensor y = likelihood.sample(op.forward(truth), generator);
  PosteriorSampler dps(DPS<GaussianLikelihood, Op>(
      likelihood, op,
      DDPMSampler(DiffusionSchedule::linear().respaced("100"), DDPMOptions{}.clip_denoised(false)),
      DPSOptions{}.scale(scale)));
  const Tensor x = dps.sample(prior, y, shape, generator);
  const Tensor fitted = op.forward(x);
  const Tensor prior_fit = op.forward(torch::zeros_like(truth));
  const double m = static_cast<double>(y.numel());
  return {(y - fitted).norm().template item<double>() / std::sqrt(m),
          (y - prior_fit).norm().template item<double>() / std::sqrt(m)};
}

void check_restored(const Outcome& outcome) {
  INFO("residual rms " << outcome.residual_rms << " (sigma " << kSigma << "), prior mean's "
                       << outcome.prior_residual_rms);
  CHECK(outcome.residual_rms < 1.5 * kSigma);
  CHECK(outcome.residual_rms < 0.3 * outcome.prior_residual_rms);
}

}  // namespace

TEST_CASE("DPS restores inpainting measurements (box and random pixels)") {
  auto generator = make_generator(3);
  auto prior = white_prior(3);
  check_restored(restore(InpaintingOperator(BoxMask{}.size(8).margin(2), 16, 16, generator), prior, 2.0, 1));
  check_restored(restore(InpaintingOperator(RandomPixelMask{}, 16, 16, generator), prior, 2.0, 2));
}

TEST_CASE("DPS restores super-resolution measurements (x2 colour, x4 gray)") {
  auto white = white_prior(3);
  check_restored(restore(SuperResolutionOperator(2), white, 2.0, 3));
  auto smooth = smooth_prior();
  check_restored(restore(SuperResolutionOperator(4), smooth, 1.0, 4));
}

TEST_CASE("DPS restores Gaussian and motion blur measurements") {
  auto prior = smooth_prior();
  check_restored(restore(BlurOperator<Gaussian>(Gaussian{}.size(9).sigma(1.5)), prior, 1.0, 5));
  auto generator = make_generator(3);
  const BlurOperator<Motion> motion(Motion{}.size(9), generator);
  // The combination the issue names, spelled out.
  auto truth_generator = make_generator(6);
  const Tensor truth = prior.sample(1, truth_generator).to(torch::kFloat32);
  const Tensor y = GaussianLikelihood(kSigma).sample(motion.forward(truth), truth_generator);
  PosteriorSampler dps(DPS<GaussianLikelihood, BlurOperator<Motion>>(
      GaussianLikelihood(kSigma), motion,
      DDPMSampler(DiffusionSchedule::linear().respaced("100"), DDPMOptions{}.clip_denoised(false)),
      DPSOptions{}.scale(1.0)));
  const Tensor x = dps.sample(prior, y, {1, 16, 16}, truth_generator);
  const double m = static_cast<double>(y.numel());
  check_restored(
      {(y - motion.forward(x)).norm().item<double>() / std::sqrt(m), y.norm().item<double>() / std::sqrt(m)});
}

TEST_CASE("DPS restores colorization, denoising and phase retrieval measurements") {
  auto white = white_prior(3);
  check_restored(restore(ColorizationOperator{}, white, 2.0, 7));
  check_restored(restore(IdentityOperator{}, white, 2.0, 8));
  auto smooth = smooth_prior();
  check_restored(restore(PhaseRetrievalOperator{}, smooth, 2.0, 9));
}
