// PSLD on closed forms: a linear autoencoder (testing::LinearAutoencoder), a Gaussian prior over its latents
// and a dense linear operator with Gaussian noise, where the Tweedie denoiser, its Jacobian and the posterior
// over latents are known exactly.
#include <diffpost/dps.hpp>
#include <diffpost/methods/psld.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/error_of.hpp"
#include "support/gaussian_posterior.hpp"
#include "support/linear_autoencoder.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

using namespace diffpost;

namespace {

// y = M x on [3, 4, 4] images (48 pixels, row-major) for a dense M [m, 48], with A^T = M^T and A^+ = pinv(M).
struct PsldDenseOperator {
  torch::Tensor matrix;
  torch::Tensor pseudo_inverse_matrix;

  torch::Tensor forward(const torch::Tensor& x) const {
    return x.flatten(1).matmul(matrix.to(x.options()).t());
  }
  torch::Tensor adjoint(const torch::Tensor& y) const {
    return y.matmul(matrix.to(y.options())).view({y.size(0), 3, 4, 4});
  }
  torch::Tensor pseudo_inverse(const torch::Tensor& y) const {
    return y.matmul(pseudo_inverse_matrix.to(y.options()).t()).view({y.size(0), 3, 4, 4});
  }
  Shape measurement_shape(const Shape& image_shape) const {
    TORCH_CHECK(image_shape.size() == 4 && image_shape[1] == 3 && image_shape[2] == 4 && image_shape[3] == 4,
                "PsldDenseOperator: images must be [B, 3, 4, 4]");
    return {image_shape[0], matrix.size(0)};
  }
};
static_assert(PseudoInvertibleOperator<PsldDenseOperator>);

using PsldMethod = PSLD<GaussianLikelihood, PsldDenseOperator, testing::LinearAutoencoder>;
using PsldThroughDecoder = ThroughDecoder<PsldDenseOperator, testing::LinearAutoencoder>;

// Latents [2, 2, 2] (8 numbers) ~ N(0, S), decoded by a linear autoencoder (3 channels, x2) to [3, 4, 4]
// images, measured by m random rows with noise sigma; the exact posterior over latents uses A D.
struct PsldProblem {
  testing::LinearAutoencoder codec;
  PsldDenseOperator op;
  torch::Tensor covariance;
  GaussianPrior prior;
  torch::Tensor y;
  testing::Posterior posterior;
  double sigma;
};

const Shape kPsldLatentShape{2, 2, 2};

PsldProblem make_psld_problem(int64_t measurements, double sigma, uint64_t seed) {
  auto codec = testing::LinearAutoencoder::random(3, 2, 2, seed);
  auto generator = make_generator(seed + 1);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64);
  auto matrix = at::randn({measurements, 48}, generator, options) / std::sqrt(48.0);
  PsldDenseOperator op{matrix, torch::linalg::pinv(matrix)};
  auto factor = at::randn({8, 8}, generator, options) / std::sqrt(8.0);
  auto covariance = 0.5 * factor.matmul(factor.t()) + 0.1 * torch::eye(8, options);
  auto prior = GaussianPrior::with_covariance(torch::zeros(kPsldLatentShape, options), covariance,
                                              DiffusionSchedule::linear());
  auto z_true = prior.sample(1, generator);
  auto y = GaussianLikelihood(sigma).sample(op.forward(codec.decode(z_true)), generator);
  const testing::Matrix a =
      testing::to_eigen(matrix) * testing::to_eigen(codec.decoder_matrix(kPsldLatentShape));
  auto posterior = testing::gaussian_posterior(testing::Vector::Zero(8), testing::to_eigen(covariance), a,
                                               testing::to_eigen(y.reshape({-1})), sigma);
  return {codec, op, covariance, prior, y, posterior, sigma};
}

PsldMethod make_psld(const PsldProblem& problem, const PSLDOptions& options) {
  return {GaussianLikelihood(problem.sigma), PsldThroughDecoder(problem.op, problem.codec),
          DiffusionSchedule::linear(), options};
}

}  // namespace

TEST_CASE("PSLD steps on ldm's uniform DDIM timesteps, with psld.py's shift at 1000 steps") {
  const auto model_schedule = DiffusionSchedule::linear();
  const auto fifty = ldm_uniform_ddim_schedule(model_schedule, 50);
  REQUIRE(fifty.num_steps() == 50);
  for (int64_t i = 0; i < 50; ++i) {
    CHECK(fifty.model_timestep(i) == 1 + 20 * i);  // make_ddim_timesteps: range(0, 1000, 20) + 1
    CHECK(fifty.alphas_cumprod()[i] ==
          doctest::Approx(model_schedule.alphas_cumprod()[1 + 20 * i]).epsilon(1e-12));
  }
  // 1000 // 400 = 2: ldm keeps range(0, 1000, 2) + 1, 500 steps, not 400.
  const auto strided = ldm_uniform_ddim_schedule(model_schedule, 400);
  CHECK(strided.num_steps() == 500);
  CHECK(strided.model_timestep(499) == 999);
  // All 1000 steps: the network sees t = 1 ... 1000 and abar is taken one timestep earlier.
  const auto all = ldm_uniform_ddim_schedule(model_schedule, 1000);
  REQUIRE(all.num_steps() == 1000);
  CHECK(all.model_timestep(0) == 1);
  CHECK(all.model_timestep(999) == 1000);
  CHECK(all.alphas_cumprod()[999] == doctest::Approx(model_schedule.alphas_cumprod()[999]).epsilon(1e-12));
  CHECK(all.alphas_cumprod()[0] == doctest::Approx(model_schedule.alphas_cumprod()[0]).epsilon(1e-12));

  using testing::error_of;
  CHECK(error_of([&] {
          static_cast<void>(ldm_uniform_ddim_schedule(model_schedule, 0));
        }).find("steps must be in [1, 1000], got 0") != std::string::npos);
  CHECK(error_of([&] {
          static_cast<void>(ldm_uniform_ddim_schedule(model_schedule.respaced("100"), 10));
        }).find("un-respaced") != std::string::npos);
}

TEST_CASE("one PSLD step equals the closed form from the decoder, encoder, operator and Tweedie matrices") {
  auto problem = make_psld_problem(5, 0.05, 31);
  const double omega = 0.7, gamma = 0.3, eta = 0.5;
  const auto psld = make_psld(problem, PSLDOptions{}.ddim_steps(50).eta(eta).omega(omega).gamma(gamma));
  auto generator = make_generator(3);
  const auto like = torch::empty({2, 2, 2, 2}, torch::kFloat64);
  const auto z_t = diffpost::detail::randn_like(like, generator);
  const auto noise = diffpost::detail::randn_like(like, generator);
  // Two measurements, one per sample: samples must not share their norms.
  const auto y =
      torch::cat({problem.y, problem.y + 0.3 * diffpost::detail::randn_like(problem.y, generator)});
  const int64_t index = 30;
  const auto result = PosteriorSampler(psld).step(problem.prior, z_t, y, index, noise, generator);

  // Closed form per sample (mu = 0): K = a S + (1 - a) I, z0 = J z with J = sqrt(a) S K^{-1}, eps = (z -
  // sqrt(a) z0) / sqrt(1 - a), DDIM z' = sqrt(a_prev) z0 + sqrt(1 - a_prev - s^2) eps + s n, and the gradient
  // J^T [omega (M D)^T r / |r| + gamma (E (I - P M) D - I)^T g / |g|] with r = M D z0 - y and
  // g = E (P y + (I - P M) D z0) - z0.
  const auto& schedule = psld.schedule();
  const double a = schedule.alphas_cumprod()[index];
  const double a_prev = schedule.alphas_cumprod_prev()[index];
  const double s = eta * std::sqrt((1 - a_prev) / (1 - a)) * std::sqrt(1 - a / a_prev);
  const auto identity8 = testing::Matrix::Identity(8, 8);
  const testing::Matrix cov = testing::to_eigen(problem.covariance);
  const testing::Matrix jacobian = std::sqrt(a) * cov * (a * cov + (1 - a) * identity8).inverse();
  const testing::Matrix d = testing::to_eigen(problem.codec.decoder_matrix(kPsldLatentShape));
  const testing::Matrix e =
      testing::dense_matrix([&](const torch::Tensor& x) { return problem.codec.encode(x); }, {3, 4, 4});
  const testing::Matrix m = testing::to_eigen(problem.op.matrix);
  const testing::Matrix p = testing::to_eigen(problem.op.pseudo_inverse_matrix);
  const testing::Matrix null_space = testing::Matrix::Identity(48, 48) - p * m;
  for (int64_t b = 0; b < 2; ++b) {
    const testing::Vector z = testing::to_eigen(z_t[b].reshape({-1}));
    const testing::Vector n = testing::to_eigen(noise[b].reshape({-1}));
    const testing::Vector yb = testing::to_eigen(y[b].reshape({-1}));
    const testing::Vector z0 = jacobian * z;
    const testing::Vector eps = (z - std::sqrt(a) * z0) / std::sqrt(1 - a);
    const testing::Vector ddim = std::sqrt(a_prev) * z0 + std::sqrt(1 - a_prev - s * s) * eps + s * n;
    const testing::Vector r = m * d * z0 - yb;
    const testing::Vector g = e * (p * yb + null_space * d * z0) - z0;
    const testing::Vector measurement_part = omega * (m * d).transpose() * r / r.norm();
    const testing::Vector gluing_part = gamma * (e * null_space * d - identity8).transpose() * g / g.norm();
    const testing::Vector expected = ddim - jacobian.transpose() * (measurement_part + gluing_part);
    const testing::Vector actual = testing::to_eigen(result.x_prev[b].reshape({-1}));
    INFO("sample ", b);
    CHECK((actual - expected).cwiseAbs().maxCoeff() < 1e-10);
    CHECK((testing::to_eigen(result.x0_hat[b].reshape({-1})) - z0).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(result.residual[b].item<double>() == doctest::Approx(r.norm()).epsilon(1e-12));
    // The gluing term moves the step: dropping it would fail the comparison above.
    CHECK((jacobian.transpose() * gluing_part).norm() > 1e-3);
  }
}

TEST_CASE("PSLD with gamma = 0 is latent DPS on the same DDIM steps, step for step") {
  auto problem = make_psld_problem(5, 0.05, 41);
  const double omega = 0.6;
  const auto options = PSLDOptions{}.ddim_steps(20).eta(0.7).omega(omega);
  const PosteriorSampler psld(make_psld(problem, PSLDOptions{options}.gamma(0.0)), 3);
  const PosteriorSampler dps(
      DPS<GaussianLikelihood, PsldThroughDecoder, DDIMSampler>(
          GaussianLikelihood(problem.sigma), PsldThroughDecoder(problem.op, problem.codec),
          psld.method().sampler(), DPSOptions{}.scale(omega)),
      3);
  const PosteriorSampler glued(make_psld(problem, PSLDOptions{options}.gamma(0.3)), 3);
  auto trajectory = [&](const auto& sampler) {
    std::vector<torch::Tensor> steps;
    auto generator = make_generator(9);
    sampler.sample(problem.prior, problem.y, kPsldLatentShape, generator,
                   [&](const StepInfo& info) { steps.push_back(info.x); });
    return steps;
  };
  const auto psld_steps = trajectory(psld);
  const auto dps_steps = trajectory(dps);
  const auto glued_steps = trajectory(glued);
  REQUIRE(psld_steps.size() == 20);
  REQUIRE(dps_steps.size() == 20);
  double worst = 0.0;
  for (size_t i = 0; i < psld_steps.size(); ++i)
    worst = std::max(worst, (psld_steps[i] - dps_steps[i]).abs().max().item<double>());
  INFO("largest difference between PSLD (gamma 0) and latent DPS iterates: ", worst);
  CHECK(worst < 1e-10);
  CHECK((glued_steps.back() - dps_steps.back()).abs().max().item<double>() > 1e-3);
  CHECK((psld.network_cost() == NetworkCost{20, 20}));
}

TEST_CASE("PSLD on the linear latent problem lands near the exact posterior mean and fits the measurement") {
  // PSLD, like DPS, is not an exact posterior sampler (a fixed step on a plain norm, no noise model), so the
  // bound is the one the DPS tests use: the sample mean must close at least half of the gap between the prior
  // mean and the exact posterior mean, and the decoded samples must fit y to within 3 noise levels. The step
  // on a plain norm does not shrink with the residual, so larger omega overshoots: omega 0.5 misses y by
  // 0.33.
  auto problem = make_psld_problem(5, 0.05, 51);
  const int64_t count = 64;
  // The official omega and gamma for the FFHQ LDM (the defaults) on 100 DDIM steps with eta 0. Measured: mean
  // 0.42 from the posterior mean (prior mean: 1.97), rms residual 0.084.
  const PosteriorSampler psld(make_psld(problem, PSLDOptions{}.ddim_steps(100)), count);
  auto generator = make_generator(13);
  const auto samples = psld.sample(problem.prior, problem.y, kPsldLatentShape, generator);
  REQUIRE(samples.sizes() == torch::IntArrayRef{count, 2, 2, 2});
  REQUIRE(samples.isfinite().all().item<bool>());
  const auto sample_mean = testing::to_eigen(samples.mean(0).reshape({-1}));
  const double psld_error = (sample_mean - problem.posterior.mean).norm();
  const double prior_error = problem.posterior.mean.norm();
  INFO("||PSLD mean - posterior mean|| = ", psld_error, ", ||prior mean - posterior mean|| = ", prior_error);
  CHECK(psld_error < 0.5 * prior_error);
  const auto residual = problem.op.forward(problem.codec.decode(samples)) - problem.y;
  const double rms = residual.square().mean().sqrt().item<double>();
  INFO("rms residual ", rms, " (sigma ", problem.sigma, ")");
  CHECK(rms < 3 * problem.sigma);
}

namespace {
template <class Op>
concept PsldAcceptsOperator = requires {
  typename PSLD<GaussianLikelihood, Op, testing::LinearAutoencoder>;
};
}  // namespace

static_assert(PosteriorStep<PsldMethod>);
static_assert(PsldAcceptsOperator<PsldDenseOperator>);
static_assert(PsldAcceptsOperator<InpaintingOperator>);
static_assert(!PsldAcceptsOperator<BlurOperator<Gaussian>>, "a blur has no pseudo-inverse for the gluing");
static_assert(!PsldAcceptsOperator<PhaseRetrievalOperator>);

TEST_CASE("bad PSLD input is an error that names the value and what was expected") {
  using testing::error_of;
  auto problem = make_psld_problem(5, 0.05, 61);
  CHECK(error_of([&] {
          make_psld(problem, PSLDOptions{}.omega(-1.0));
        }).find("PSLDOptions::omega must be a finite number >= 0, got -1") != std::string::npos);
  CHECK(error_of([&] {
          make_psld(problem, PSLDOptions{}.gamma(NAN));
        }).find("PSLDOptions::gamma must be a finite number >= 0") != std::string::npos);
  CHECK(error_of([&] {
          make_psld(problem, PSLDOptions{}.ddim_steps(2000));
        }).find("PSLDOptions::ddim_steps must be in [1, 1000] for a 1000-step model schedule, got 2000") !=
        std::string::npos);
  // A measurement of the wrong size is refused by the sampler's shape check on latents.
  const PosteriorSampler psld(make_psld(problem, PSLDOptions{}.ddim_steps(5)));
  auto generator = make_generator(1);
  CHECK(error_of([&] {
          psld.sample(problem.prior, torch::zeros({1, 7}, torch::kFloat64), kPsldLatentShape, generator);
        }).find("measurement y has shape [1, 7]") != std::string::npos);
}
