// ReSample on a closed form: a linear autoencoder, a Gaussian prior over its latents and a dense linear
// operator, so that the least-squares latent, the resampling distribution and the measurement-consistent
// posterior are known exactly; and its checkpoint schedule and network cost against the reference's settings.
#include <diffpost/dps.hpp>
#include <diffpost/methods/resample.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/gaussian_posterior.hpp"
#include "support/linear_autoencoder.hpp"
#include "support/linear_problem.hpp"

#include <cmath>
#include <concepts>
#include <cstdint>
#include <vector>

using namespace diffpost;
using testing::LinearAutoencoder;

namespace {

// y = A x for images x [B, 3, 3, 3] flattened, A a fixed dense [M, 27] matrix.
struct ResampleDenseOperator {
  torch::Tensor matrix;
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    return x.reshape({x.size(0), -1}).matmul(matrix.to(x.options()).t());
  }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return {image_shape[0], matrix.size(0)};
  }
};
static_assert(ForwardOperator<ResampleDenseOperator>);

using ResampleMethod = ReSample<GaussianLikelihood, ResampleDenseOperator, LinearAutoencoder>;
static_assert(PosteriorStep<ResampleMethod>);
// ReSample takes any pixel-space ForwardOperator (it differentiates A and D by autograd) and any NoiseModel.
static_assert(PosteriorStep<ReSample<PoissonLikelihood, PhaseRetrievalOperator, LinearAutoencoder>>);

// The FFHQ LDM's schedule (ffhq-ldm-vq-4.yaml): ldm's "linear" betas, linspace(sqrt(0.0015), sqrt(0.0195),
// 1000)^2.
DiffusionSchedule resample_ldm_schedule() {
  std::vector<double> betas(1000);
  const double start = std::sqrt(0.0015), end = std::sqrt(0.0195);
  for (int64_t i = 0; i < 1000; ++i) {
    const double root = start + (end - start) * static_cast<double>(i) / 999.0;
    betas[i] = root * root;
  }
  return DiffusionSchedule(std::move(betas));
}

// Latents [2, 3, 3] decoded by a random 3 x 2 channel mixing to images [3, 3, 3]; M measurements.
struct ResampleProblem {
  LinearAutoencoder codec;
  ResampleDenseOperator op;
  testing::Matrix decoder_then_operator;  // B = A D, [M, 18]
};

ResampleProblem resample_problem(int64_t measurements, uint64_t seed) {
  auto codec = LinearAutoencoder::random(3, 2, 1, seed);
  auto generator = make_generator(seed + 1);
  ResampleDenseOperator op{at::randn({measurements, 27}, generator, torch::kFloat64) / std::sqrt(27.0)};
  const auto d = testing::to_eigen(codec.decoder_matrix({2, 3, 3}));
  return {codec, op, testing::to_eigen(op.matrix) * d};
}

ResampleMethod resample_method(const ResampleProblem& problem, const ReSampleOptions& options = {}) {
  return {GaussianLikelihood(0.01), ThroughDecoder(problem.op, problem.codec), resample_ldm_schedule(),
          options};
}

torch::Tensor resample_as_latent(const testing::Vector& v) {
  return testing::to_torch(v).reshape({1, 2, 3, 3});
}

}  // namespace

TEST_CASE("ReSample's latent optimisation converges to the least-squares latent") {
  // 24 measurements of 18 latent dimensions: argmin_z ||y - A D z||^2 is unique, z* = (B^T B)^{-1} B^T y.
  const auto problem = resample_problem(24, 3);
  const auto method = resample_method(problem);
  auto generator = make_generator(4);
  const auto z_true = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  const auto y = problem.op.forward(problem.codec.decode(z_true)) +
                 0.01 * at::randn({1, 24}, generator, torch::kFloat64);
  const auto& b = problem.decoder_then_operator;
  const testing::Vector least_squares = b.colPivHouseholderQr().solve(testing::to_eigen(y.reshape({-1})));
  const auto z_star = resample_as_latent(least_squares);
  // From a start near z* (the reference starts from the x0 estimate): with AdamW's weight decay (0.01, the
  // reference keeps torch's default) the fixed point is biased by about the learning rate (5e-3) times the
  // decay's pull; without it the fit reaches z* to rounding. Measured: 1.9e-3 and 1.8e-8.
  const auto z_init = z_star + 0.05 * at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  const double start_error = (z_init - z_star).abs().max().item<double>();
  const auto z = method.consistent_latent(y, z_init);
  const auto undecayed =
      resample_method(problem, ReSampleOptions{}.weight_decay(0.0)).consistent_latent(y, z_init);
  const double error = (z - z_star).abs().max().item<double>();
  const double undecayed_error = (undecayed - z_star).abs().max().item<double>();
  INFO("max |z - z*|: ", start_error, " at the start, ", error, " after the optimisation, ", undecayed_error,
       " without weight decay");
  CHECK(start_error > 0.05);
  CHECK(error < 5e-3);
  CHECK(undecayed_error < 1e-6);
  // The same fit from the same start is reproducible and independent of how often the flags are read back.
  const auto never_checked =
      resample_method(problem, ReSampleOptions{}.stop_check_interval(0)).consistent_latent(y, z_init);
  CHECK(torch::equal(z, never_checked));
}

TEST_CASE("ReSample stops a sample's optimisation by the reference's rules and freezes it") {
  // Underdetermined (8 measurements): the residual can reach 0, so the tolerance rule (MSE < 1e-6) ends the
  // fit; a sample that starts consistent stops after its first iteration, the others go on.
  const auto problem = resample_problem(8, 5);
  auto generator = make_generator(6);
  const auto z_true = at::randn({2, 2, 3, 3}, generator, torch::kFloat64);
  const auto y = problem.op.forward(problem.codec.decode(z_true));
  auto z_init = z_true.clone();
  z_init[1] += 0.3 * at::randn({2, 3, 3}, generator, torch::kFloat64);
  const auto method = resample_method(problem);
  const auto z = method.consistent_latent(y, z_init);
  const auto misfit = (problem.op.forward(problem.codec.decode(z)) - y).square().mean(1);
  INFO("final mean squared residuals ", misfit);
  // Sample 0: loss 0 < 1e-6 at iteration 0, so exactly one AdamW step from z_true, where the gradient is 0:
  // only the decoupled weight decay acts, z (1 - lr wd); then it is frozen.
  CHECK((z[0] - z_true[0] * (1.0 - 5e-3 * 1e-2)).abs().max().item<double>() < 1e-12);
  // Sample 1 ran until its own residual fell below the tolerance.
  CHECK(misfit[1].item<double>() < 1e-5);
  CHECK((z[1] - z_init[1]).abs().max().item<double>() > 0.05);
}

TEST_CASE("ReSample's stochastic resampling has the closed-form mean and variance") {
  // ReSample eq. 9: the product of N(sqrt(abar) z0, (1 - abar) I) (the forward process from the consistent
  // z0) and N(x'_t, gamma I) (the unconditional iterate), whose precision and mean are written out here.
  const auto problem = resample_problem(8, 7);
  const auto method = resample_method(problem);
  auto generator = make_generator(8);
  const int64_t index = 200;
  const auto z0 = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  const auto x_t = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  const auto& abar = method.schedule().alphas_cumprod();
  const double a_t = abar[index], a_prev = abar[index - 1];
  // The reference's gamma for step 200 of its 500: 40 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev).
  const double gamma = 40.0 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev);
  CHECK(method.resampling_variance(index) == doctest::Approx(gamma).epsilon(1e-12));
  const double precision = 1.0 / (1.0 - a_prev) + 1.0 / gamma;
  const auto mean = (std::sqrt(a_prev) * z0 / (1.0 - a_prev) + x_t / gamma) / precision;
  const double variance = 1.0 / precision;
  const auto zero = torch::zeros_like(z0);
  CHECK((method.resample(z0, x_t, index, zero) - mean).abs().max().item<double>() < 1e-12);
  const auto noise = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  CHECK((method.resample(z0, x_t, index, noise) - mean - std::sqrt(variance) * noise)
            .abs()
            .max()
            .item<double>() < 1e-12);
  // Empirically over many draws: the mean within 4 standard errors, the variance within 3%.
  const int64_t draws = 20000;
  const auto samples = method.resample(z0.expand({draws, 2, 3, 3}), x_t.expand({draws, 2, 3, 3}), index,
                                       at::randn({draws, 2, 3, 3}, generator, torch::kFloat64));
  const double mean_error = (samples.mean(0) - mean[0]).abs().max().item<double>();
  const double variance_ratio = (samples.var(0) / variance).mean().item<double>();
  INFO("mean error ", mean_error, " (standard error ", std::sqrt(variance / draws), "), variance ratio ",
       variance_ratio);
  CHECK(mean_error < 4 * std::sqrt(variance / draws));
  CHECK(std::abs(variance_ratio - 1.0) < 0.03);
}

TEST_CASE("ReSample's steps, consistency checkpoints and network cost are the reference's") {
  const auto problem = resample_problem(8, 9);
  const auto method = resample_method(problem);
  const auto& schedule = method.schedule();
  // ldm's DDIM with 500 steps of 1000 keeps timesteps 1, 3, ..., 999, and its last step goes to abar_0.
  REQUIRE(schedule.num_steps() == 500);
  for (int64_t i = 0; i < 500; ++i) CHECK(schedule.model_timestep(i) == 2 * i + 1);
  const auto model_schedule = resample_ldm_schedule();
  CHECK(method.alpha_cumprod_prev(0) == model_schedule.alphas_cumprod()[0]);
  CHECK(method.alpha_cumprod_prev(7) == model_schedule.alphas_cumprod()[13]);
  // ddim.py: index_split = 500 // 3 = 166; consistency where 0 < index <= 500 - 166 and index % 10 == 0,
  // pixel optimisation for index >= 166, latent optimisation below.
  std::vector<int64_t> pixel, latent, expected_pixel, expected_latent;
  for (int64_t i = 499; i >= 0; --i) {
    if (method.uses_pixel_optimization(i)) pixel.push_back(i);
    if (method.is_consistency_step(i) && !method.uses_pixel_optimization(i)) latent.push_back(i);
  }
  for (int64_t i = 330; i >= 170; i -= 10) expected_pixel.push_back(i);
  for (int64_t i = 160; i >= 10; i -= 10) expected_latent.push_back(i);
  CHECK(pixel == expected_pixel);
  CHECK(latent == expected_latent);
  // Network work: 500 evaluations with their gradient, and 5 time-travel evaluations at each of the 33
  // checkpoints.
  CHECK((PosteriorSampler(method).network_cost() == NetworkCost{500 + 33 * 5, 500}));
  // The template arguments are deduced from the constructor's (the docs' spelling).
  const ReSample deduced(GaussianLikelihood(0.01), ThroughDecoder(problem.op, problem.codec),
                         resample_ldm_schedule());
  static_assert(std::same_as<decltype(deduced), const ResampleMethod>);
  // Without pixel optimisation every checkpoint fits in latent space.
  const auto latent_only = resample_method(problem, ReSampleOptions{}.pixel_optimization(false));
  CHECK(latent_only.is_consistency_step(330));
  CHECK(!latent_only.uses_pixel_optimization(330));
  // ldm cannot run 300 DDIM steps of 1000 (it would index timestep 1000); neither can diffpost.
  CHECK_THROWS_WITH_AS(resample_method(problem, ReSampleOptions{}.steps(300)),
                       doctest::Contains("choose another step count"), c10::Error);
  CHECK_THROWS_WITH_AS(resample_method(problem, ReSampleOptions{}.time_travel_steps(0)),
                       doctest::Contains("time_travel_steps"), c10::Error);
}

TEST_CASE("ReSample's network cost is what a run evaluates and differentiates") {
  const auto problem = resample_problem(8, 10);
  auto generator = make_generator(11);
  const auto prior =
      GaussianPrior::with_covariance(torch::zeros({2, 3, 3}, torch::kFloat64),
                                     0.25 * torch::eye(18, torch::kFloat64), resample_ldm_schedule());
  testing::CountingModel model{&prior};
  const PosteriorSampler sampler(
      resample_method(problem, ReSampleOptions{}.steps(50).pixel_iterations(20).latent_iterations(20)));
  const auto y = problem.op.forward(problem.codec.decode(prior.sample(1, generator)));
  const auto z = sampler.sample(model, y, {2, 3, 3}, generator);
  CHECK(z.isfinite().all().item<bool>());
  // 50 steps: index_split 16; checkpoints 30 and 20 (pixel) and 10 (latent), 5 time-travel steps each.
  CHECK((sampler.network_cost() == NetworkCost{50 + 3 * 5, 50}));
  CHECK((model.cost() == sampler.network_cost()));
}

TEST_CASE("a ReSample run on the Gaussian latent problem fits y and lands near the consistent posterior") {
  // 8 measurements of 18 latent dimensions. ReSample's last act is latent optimisation to MSE < 1e-6, so
  // every sample fits y (to that tolerance); what y leaves free, the null space of B = A D, comes from the
  // prior through the reverse process. The reference point is the prior conditioned on B z = y (the
  // noise-free posterior, since hard consistency ignores the noise): mean S B^T (B S B^T)^{-1} y for a zero
  // prior mean. ReSample is not an exact sampler of it (its samples spread 1.5 times as wide, its mean is
  // biased by the gradient step and by AdamW's non-Euclidean fit), so the test asks what it is built to give:
  // exact consistency, and a null-space part informed by the prior, nearer the consistent posterior mean than
  // the minimum-norm consistent latent B^+ y (what fitting y from the prior mean alone gives). Measured: MSE
  // 1.03e-6, distance 0.48 against 0.74 for B^+ y and 1.33 for the prior mean.
  const auto problem = resample_problem(8, 12);
  auto generator = make_generator(13);
  const auto covariance = testing::smooth_covariance(3, 6, 0.8, 1.5);  // over the 18 latent entries
  const auto prior = GaussianPrior::with_covariance(torch::zeros({2, 3, 3}, torch::kFloat64), covariance,
                                                    resample_ldm_schedule());
  const auto z_true = prior.sample(1, generator);
  const auto y = problem.op.forward(problem.codec.decode(z_true));
  const auto s = testing::to_eigen(covariance);
  const auto& b = problem.decoder_then_operator;
  const auto y_vector = testing::to_eigen(y.reshape({-1}));
  const testing::Vector consistent_mean = s * b.transpose() * (b * s * b.transpose()).ldlt().solve(y_vector);
  const testing::Vector minimum_norm = b.completeOrthogonalDecomposition().solve(y_vector);
  const int64_t count = 64;
  const PosteriorSampler sampler(resample_method(problem, ReSampleOptions{}.steps(100)), count);
  const auto z = sampler.sample(prior, y, {2, 3, 3}, generator);
  const auto misfit = (problem.op.forward(problem.codec.decode(z)) - y).square().mean(1);
  const testing::Vector mean = testing::to_eigen(z.mean(0).reshape({-1}));
  const double error = (mean - consistent_mean).norm();
  const double minimum_norm_error = (minimum_norm - consistent_mean).norm();
  INFO("largest MSE to y ", misfit.max().item<double>(), "; |mean - consistent mean| ", error, " vs ",
       minimum_norm_error, " for B^+ y and ", consistent_mean.norm(), " for the prior mean");
  // The stopping test reads the loss before the last AdamW step, which may raise it a little: 4x margin.
  CHECK(misfit.max().item<double>() < 4e-6);
  CHECK(error < 0.8 * minimum_norm_error);
  CHECK(error < 0.5 * consistent_mean.norm());
}
