// LatentDAPS: its samples against the exact Gaussian posterior over latents (a linear autoencoder, a Gaussian
// latent prior, a linear operator through the decoder), with Langevin and with the official damped HMC; the
// official latent preset's levels and cost on the FFHQ LDM's schedule; and the table of docs/methods.md that
// compares diffpost's sigma -> timestep rounding with the official code's ADM mapping; and one level's HMC
// chain against the official MCMCSampler on the same inputs and draws (tests/data/latent_daps/README.md).
#include <diffpost/dps.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/methods/latent_daps.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/linear_autoencoder.hpp"
#include "support/subsample_problem.hpp"
#include "support/tensors.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using namespace diffpost;
using testing::LinearAutoencoder;
using testing::SubsampleOperator;

namespace {

using LatentSubsampleDAPS = LatentDAPS<GaussianLikelihood, SubsampleOperator, LinearAutoencoder>;

// A Gaussian prior over 2 x 3 x 3 latents, decoded by a linear autoencoder (1 image channel, factor 2) to
// 6 x 6 images of which every other pixel is measured with Gaussian noise: the posterior over z is Gaussian,
// with A D as the measurement matrix.
struct LatentProblem {
  LinearAutoencoder codec;
  GaussianPrior prior;
  torch::Tensor y;
  testing::Posterior posterior;
  double sigma;
};

LatentProblem make_latent_problem(double sigma, uint64_t seed) {
  auto codec = LinearAutoencoder::random(1, 2, 2, seed);
  auto generator = make_generator(seed + 1);
  const auto mean = 0.2 * at::randn({2, 3, 3}, generator, torch::kFloat64);
  // Correlated channels (0.5) and positions (squared exponential over the 3 x 3 grid).
  const auto channels = torch::tensor({{1.0, 0.5}, {0.5, 1.0}}, torch::kFloat64);
  const auto covariance = torch::kron(channels, testing::smooth_covariance(3, 3, 0.35, 1.5));
  auto prior = GaussianPrior::with_covariance(mean, covariance, DiffusionSchedule::linear());
  const auto z_true = prior.sample(1, generator);
  const SubsampleOperator pixels;
  auto y = GaussianLikelihood(sigma).sample(pixels.forward(codec.decode(z_true)), generator);
  const auto decoder = testing::to_eigen(codec.decoder_matrix({2, 3, 3}));
  const auto a = testing::dense_matrix([&](const torch::Tensor& x) { return pixels.forward(x); }, {1, 6, 6});
  auto posterior =
      testing::gaussian_posterior(testing::to_eigen(mean.reshape({-1})), testing::to_eigen(covariance),
                                  a * decoder, testing::to_eigen(y.reshape({-1})), sigma);
  return {std::move(codec), std::move(prior), std::move(y), std::move(posterior), sigma};
}

// Draws `count` LatentDAPS samples and compares them with the exact posterior over latents: the largest
// error of a coordinate's mean in standard errors, and the mean ratio of sample to posterior spread.
struct LatentAgreement {
  double worst_mean;    // standard errors
  double spread_ratio;  // sample over posterior standard deviation, averaged over coordinates
};

LatentAgreement latent_daps_agreement(LatentProblem& problem, const DAPSOptions& options, uint64_t seed) {
  const int64_t count = 64;
  PosteriorSampler daps(
      LatentSubsampleDAPS(GaussianLikelihood(problem.sigma), {SubsampleOperator{}, problem.codec},
                          DiffusionSchedule::linear(), options),
      count);
  auto generator = make_generator(seed);
  const auto samples = daps.sample(problem.prior, problem.y, {2, 3, 3}, generator).reshape({count, -1});
  const auto mean = testing::to_eigen(samples.mean(0));
  const auto spread = testing::to_eigen(samples.std(0));
  const auto& posterior = problem.posterior;
  const int64_t dim = posterior.mean.size();
  double worst_mean = 0.0, spread_ratio = 0.0;
  for (int64_t i = 0; i < dim; ++i) {
    const double stddev = std::sqrt(posterior.covariance(i, i));
    worst_mean = std::max(
        worst_mean, std::abs(mean(i) - posterior.mean(i)) / (stddev / std::sqrt(static_cast<double>(count))));
    spread_ratio += spread(i) / stddev / static_cast<double>(dim);
  }
  return {worst_mean, spread_ratio};
}

// The FFHQ LDM's schedule (ffhq-ldm-vq-4.yaml: linear_start 0.0015, linear_end 0.0195, 1000 steps), as ldm's
// make_beta_schedule("linear") builds it: linspace of the square roots, squared.
DiffusionSchedule latent_daps_ffhq_ldm_schedule() {
  std::vector<double> betas(1000);
  const double first = std::sqrt(0.0015), last = std::sqrt(0.0195);
  for (int64_t i = 0; i < 1000; ++i) {
    const double root = first + (last - first) * static_cast<double>(i) / 999.0;
    betas[i] = root * root;
  }
  return DiffusionSchedule(std::move(betas));
}

// The official code's timestep for a VE sigma (model/precond.py, VPPrecond): c_noise = (M - 1) t(sigma) with
// t the inverse of ADM's continuous VP schedule, beta_min 0.1 and beta_d 19.9, M = 1000.
double latent_daps_reference_timestep(double sigma) {
  const double beta_min = 0.1, beta_d = 19.9;
  return 999.0 * (std::sqrt(beta_min * beta_min + 2.0 * beta_d * std::log1p(sigma * sigma)) - beta_min) /
         beta_d;
}

// The tiny decoder of tests/data/latent_daps (README there): conv3x3(silu(conv3x3(nearest x2 upsampling of
// z))) from 3-channel latents to 3-channel images, computed in the latents' dtype and then rounded to float32
// and back, as the official LatentWrapper.loss casts the decoded image with `.float()` (a no-op for float32
// latents; for float64 latents both sides round the image, and its gradient, identically). The encoder, which
// the Autoencoder concept asks for and the chain never calls, is 2 x 2 average pooling.
class LatentDapsChainDecoder {
 public:
  explicit LatentDapsChainDecoder(const StateDict& weights)
      : w1_(weights.at("w1")), b1_(weights.at("b1")), w2_(weights.at("w2")), b2_(weights.at("b2")) {}

  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const {
    namespace F = torch::nn::functional;
    const auto upsampled = F::interpolate(
        z, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest));
    const auto hidden =
        torch::silu(torch::conv2d(upsampled, w1_.to(z.dtype()), b1_.to(z.dtype()), {1, 1}, {1, 1}));
    return torch::conv2d(hidden, w2_.to(z.dtype()), b2_.to(z.dtype()), {1, 1}, {1, 1})
        .to(torch::kFloat)
        .to(z.dtype());
  }

  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const { return torch::avg_pool2d(x, 2); }

  [[nodiscard]] Shape image_shape(const Shape& latent_shape) const {
    TORCH_CHECK(latent_shape.size() == 4 && latent_shape[1] == 3,
                "LatentDapsChainDecoder: latents [B, 3, h, w]");
    return {latent_shape[0], 3, 2 * latent_shape[2], 2 * latent_shape[3]};
  }

  [[nodiscard]] Shape latent_shape(const Shape& image_shape) const {
    TORCH_CHECK(
        image_shape.size() == 4 && image_shape[1] == 3 && image_shape[2] % 2 == 0 && image_shape[3] % 2 == 0,
        "LatentDapsChainDecoder: images [B, 3, 2h, 2w]");
    return {image_shape[0], 3, image_shape[2] / 2, image_shape[3] / 2};
  }

 private:
  torch::Tensor w1_, b1_, w2_, b2_;
};
static_assert(Autoencoder<LatentDapsChainDecoder>);

// A score model that predicts eps = 0: on a one-step schedule with beta 0.75 (abar = 1/4), Tweedie's estimate
// is x_t / sqrt(abar) = 2 x_t exactly, so the level's z0_hat is the fixture's z0_hat bit for bit and the
// comparison isolates the chain.
struct LatentDapsZeroNoiseModel {
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& /*t*/) const {
    return torch::zeros_like(x_t);
  }
  [[nodiscard]] bool learns_variance() const { return false; }
};
static_assert(ScoreModel<LatentDapsZeroNoiseModel>);

}  // namespace

TEST_CASE("LatentDAPS samples have the exact latent posterior's mean and spread when tau matches the noise") {
  // As DAPS's pixel test: Tweedie's x0_hat (one ODE step), tau = sqrt(2) sigma_y, annealing down to 0.01;
  // here on latents, the measurement through the decoder (no clamp: the chain's target is then exact).
  auto problem = make_latent_problem(0.05, 81);
  const auto options =
      DAPSOptions{}.sigma_min(0.01).ode_steps(1).step_size(5e-4).tau(std::sqrt(2.0) * problem.sigma);
  const auto agreement = latent_daps_agreement(problem, options, 82);
  INFO("Langevin: largest mean error ", agreement.worst_mean, " standard errors; mean spread ratio ",
       agreement.spread_ratio);
  CHECK(agreement.worst_mean < 4.0);
  CHECK(agreement.spread_ratio > 0.85);
  CHECK(agreement.spread_ratio < 1.15);
}

TEST_CASE("LatentDAPS with the official damped HMC samples the exact latent posterior too") {
  auto problem = make_latent_problem(0.05, 81);
  // HMC's velocity carries the chain further per step: half the levels and half the steps of the Langevin
  // test suffice (a quarter of its cost).
  const auto options = DAPSOptions{}
                           .annealing_steps(100)
                           .langevin_steps(50)
                           .sigma_min(0.01)
                           .ode_steps(1)
                           .chain(DAPSChain::hmc)
                           .momentum(0.86)
                           .step_size(5e-4)
                           .tau(std::sqrt(2.0) * problem.sigma);
  const auto agreement = latent_daps_agreement(problem, options, 83);
  INFO("HMC: largest mean error ", agreement.worst_mean, " standard errors; mean spread ratio ",
       agreement.spread_ratio);
  CHECK(agreement.worst_mean < 4.0);
  CHECK(agreement.spread_ratio > 0.85);
  CHECK(agreement.spread_ratio < 1.15);
}

TEST_CASE("LatentDAPS's HMC step is the official update, and the gradient clamp bounds the data term") {
  // One level, two chain steps by hand on the same draws: v = m v + h s + sqrt(2 (1 - m)) n, z += h v.
  auto problem = make_latent_problem(0.05, 84);
  const double clamp = 0.05, momentum = 0.6, tau = 0.3;
  const auto options = DAPSOptions{}
                           .annealing_steps(1)
                           .sigma_max(0.5)
                           .sigma_min(0.4)
                           .ode_steps(1)
                           .chain(DAPSChain::hmc)
                           .momentum(momentum)
                           .langevin_steps(2)
                           .step_size(1e-2)
                           .tau(tau)
                           .gradient_clamp(clamp);
  const LatentSubsampleDAPS method(GaussianLikelihood(problem.sigma), {SubsampleOperator{}, problem.codec},
                                   DiffusionSchedule::linear(), options);
  REQUIRE(method.schedule().num_steps() == 1);
  PosteriorSampler daps(method);
  auto generator = make_generator(85);
  const auto z_t = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  const auto noise = at::randn({1, 2, 3, 3}, generator, torch::kFloat64);
  auto step_generator = make_generator(86);
  const auto result = daps.step(problem.prior, z_t, problem.y, 0, noise, step_generator);

  // By hand: Tweedie's estimate at the level's timestep, then the chain with the same generator's draws.
  const auto& model_schedule = method.model_schedule();
  const int64_t level = method.ode_path(0).front();
  const double sigma = model_schedule.sqrt_recipm1_alphas_cumprod()[level];
  const double abar = model_schedule.alphas_cumprod()[level];
  const auto eps = problem.prior(z_t, torch::full({1}, level, torch::kLong));
  const auto tweedie = (z_t - std::sqrt(1.0 - abar) * eps) / std::sqrt(abar);
  // One Euler step of the ODE: to the path's end on the VE scale, x0 + sigma_end eps.
  const double sigma_end = model_schedule.sqrt_recipm1_alphas_cumprod()[method.ode_path(0).back()];
  const auto z0_hat = method.ode_path(0).size() == 1 ? tweedie : tweedie + sigma_end * eps;
  CHECK(torch::allclose(result.x0_hat, z0_hat, 1e-10, 1e-12));
  auto replay = make_generator(86);
  auto velocity = at::randn({1, 2, 3, 3}, replay, torch::kFloat64);
  auto z = z0_hat.clone();
  const double h = std::sqrt(method.langevin_step_size(0));
  bool clamped = false;
  for (int k = 0; k < 2; ++k) {
    auto leaf = z.detach().requires_grad_(true);
    auto misfit = (SubsampleOperator{}.forward(problem.codec.decode(leaf)) - problem.y).square().sum();
    auto gradient = torch::autograd::grad({misfit}, {leaf})[0];
    clamped = clamped || (gradient.abs() > clamp).any().item<bool>();
    const auto score = (z0_hat - z) / (sigma * sigma) - gradient.clamp(-clamp, clamp) / (tau * tau);
    velocity = momentum * velocity + h * score +
               std::sqrt(2.0 * (1.0 - momentum)) * at::randn({1, 2, 3, 3}, replay, torch::kFloat64);
    z = z + h * velocity;
  }
  CHECK(clamped);  // the clamp was active, so the comparison tests it
  // The last level re-noises to sigma 0: the step returns z0 itself.
  CHECK(torch::allclose(result.x_prev, z, 1e-10, 1e-12));
}

TEST_CASE("DAPS refuses a momentum outside [0, 1) and a negative gradient clamp") {
  const auto codec = LinearAutoencoder::random(1, 2, 2, 87);
  const auto make = [&](const DAPSOptions& options) {
    return LatentSubsampleDAPS(GaussianLikelihood(0.05), {SubsampleOperator{}, codec},
                               DiffusionSchedule::linear(), options);
  };
  CHECK_THROWS_WITH_AS(make(DAPSOptions::latent().momentum(1.0)),
                       doctest::Contains("DAPSOptions::momentum must be in [0, 1), got 1"), c10::Error);
  CHECK_THROWS_WITH_AS(make(DAPSOptions::latent().gradient_clamp(-1.0)),
                       doctest::Contains("DAPSOptions::gradient_clamp must be >= 0 (0 = no clamp), got -1"),
                       c10::Error);
}

TEST_CASE("LatentDAPS's official preset on the FFHQ LDM's schedule: levels, ODE paths and cost") {
  const auto ldm = latent_daps_ffhq_ldm_schedule();
  const auto options = DAPSOptions::latent();
  CHECK(options.chain() == DAPSChain::hmc);
  CHECK(options.langevin_steps() == 24);
  CHECK(options.gradient_clamp() == 1.0);
  const auto codec = LinearAutoencoder::random(1, 2, 2, 88);
  const LatentSubsampleDAPS daps(GaussianLikelihood(0.05), {SubsampleOperator{}, codec}, ldm, options);
  const auto& levels = daps.schedule();
  const auto cost = PosteriorSampler(daps).network_cost();
  INFO("levels ", levels.num_steps(), ", network evaluations ", cost.forwards);
  // 50 EDM levels from sigma 10 to 0.1 (rho 7), all on distinct LDM timesteps (737 down to 7).
  CHECK(levels.num_steps() == 50);
  CHECK(levels.model_timestep(levels.num_steps() - 1) == 737);
  CHECK(levels.model_timestep(0) == 7);
  const auto sigma_of = [&](int64_t step) { return ldm.sqrt_recipm1_alphas_cumprod()[step]; };
  CHECK(std::abs(std::log(sigma_of(daps.ode_path(levels.num_steps() - 1).front()) / 10.0)) < 0.01);
  int64_t evaluations = 0;
  for (int64_t i = 0; i < levels.num_steps(); ++i) {
    const auto& path = daps.ode_path(i);
    CHECK(path.back() == 0);  // sigma 0.001 is below the LDM's first step (0.039): the ODE ends at step 0
    CHECK(path.size() <= 3);
    evaluations += std::max<int64_t>(1, static_cast<int64_t>(path.size()) - 1);
  }
  CHECK((cost == NetworkCost{evaluations, 0}));
  // Not the official 100: where the ODE's midpoint rounds to the level's own step or to step 0, the
  // step is shared (an independent count in Python gave 86 for these settings).
  CHECK(evaluations == 86);
  // HMC's step size decays from 1.35e-4 to about 1.35e-4 x 0.023 over the levels.
  CHECK(daps.langevin_step_size(levels.num_steps() - 1) == doctest::Approx(1.35e-4));
}

TEST_CASE("sigma -> timestep on the FFHQ LDM: diffpost's rounding against the official ADM mapping") {
  // For each level of the latent preset: the timestep diffpost runs (the LDM step nearest in log sigma), and
  // the official code's continuous timestep 999 t_ADM(sigma) with the sigma the LDM and ADM really have there
  // (at the nearest integer timestep). Printed as docs/methods.md's table.
  const auto ldm = latent_daps_ffhq_ldm_schedule();
  const auto adm = DiffusionSchedule::linear();
  const int64_t levels = 50;
  std::string table =
      "| level | sigma | diffpost t | LDM sigma(t) | official t | LDM sigma(official t) | ratio | ADM "
      "sigma(official t) |\n|---|---|---|---|---|---|---|---|\n";
  double worst_diffpost = 0.0, worst_adm = 0.0, smallest_ratio = INFINITY, largest_ratio = 0.0;
  for (int64_t k = 0; k < levels; ++k) {
    // EDM's rho = 7 spacing of 51 points from 10 to 0.1 (the last replaced by 0 and not run).
    const double r = static_cast<double>(k) / static_cast<double>(levels);
    const double sigma =
        std::pow(std::pow(10.0, 1.0 / 7) + r * (std::pow(0.1, 1.0 / 7) - std::pow(10.0, 1.0 / 7)), 7);
    const int64_t ours = ldm.nearest_step(sigma);
    const double ours_sigma = ldm.sqrt_recipm1_alphas_cumprod()[ours];
    const double official = latent_daps_reference_timestep(sigma);
    const auto official_step = static_cast<int64_t>(std::lround(official));
    const double official_ldm = ldm.sqrt_recipm1_alphas_cumprod()[official_step];
    const double official_adm = adm.sqrt_recipm1_alphas_cumprod()[official_step];
    worst_diffpost = std::max(worst_diffpost, std::abs(std::log(ours_sigma / sigma)));
    worst_adm = std::max(worst_adm, std::abs(std::log(official_adm / sigma)));
    smallest_ratio = std::min(smallest_ratio, official_ldm / sigma);
    largest_ratio = std::max(largest_ratio, official_ldm / sigma);
    char row[200];
    std::snprintf(row, sizeof row, "| %lld | %.4g | %lld | %.4g | %.1f | %.4g | %.2f | %.4g |\n",
                  static_cast<long long>(k), sigma, static_cast<long long>(ours), ours_sigma, official,
                  official_ldm, official_ldm / sigma, official_adm);
    table += row;
  }
  MESSAGE(table);
  INFO("largest |log| error: diffpost ", worst_diffpost, ", official on ADM ", worst_adm,
       "; LDM sigma over the level's at the official timestep from ", smallest_ratio, " to ", largest_ratio);
  CHECK(worst_diffpost < 0.05);  // within half an LDM step of every level
  CHECK(worst_adm < 0.05);       // the official mapping is right for the ADM schedule it was made for
  // and off for the LDM: too little noise at the top (0.68 x at sigma 10), twice too much at the bottom.
  CHECK(smallest_ratio < 0.7);
  CHECK(largest_ratio > 1.9);
}

TEST_CASE(
    "LatentDAPS's HMC chain on one level matches the official MCMCSampler (mc_algo hmc) step for step") {
  // The official chain (cores/mcmc.py MCMCSampler.sample, LatentWrapper with its [-1, 1] gradient clamp,
  // Inpainting) ran 24 steps from z0_hat on a tiny random decoder, with torch.manual_seed(seed) before the
  // velocity and the per-step draws; diffpost's DAPS::correct draws the same numbers from a CPU generator
  // seeded alike. tests/data/latent_daps/README.md says how the reference data were made.
  const auto reference =
      read_state_dict(std::filesystem::path(DIFFPOST_TEST_DATA_DIR) / "latent_daps" / "reference_chain.pt");
  const auto number = [&](const char* key) { return reference.at(key).item<double>(); };
  // The official LatentDAPS chain settings, as DAPSOptions::latent() has them, are the ones the reference
  // ran.
  const auto options = DAPSOptions::latent().annealing_steps(1).sigma_max(2.0).sigma_min(1.0).ode_steps(1);
  REQUIRE(options.langevin_steps() == reference.at("num_steps").item<int64_t>());
  REQUIRE(options.step_size() == number("lr"));
  REQUIRE(options.tau() == number("tau"));
  REQUIRE(options.momentum() == number("momentum"));
  REQUIRE(options.gradient_clamp() == 1.0);

  using ChainDAPS = LatentDAPS<GaussianLikelihood, InpaintingOperator, LatentDapsChainDecoder>;
  const ChainDAPS method(GaussianLikelihood(0.05),
                         {InpaintingOperator(reference.at("mask")), LatentDapsChainDecoder(reference)},
                         DiffusionSchedule(std::vector<double>{0.75}), options);
  REQUIRE(method.schedule().num_steps() == 1);
  REQUIRE(method.ode_path(0).size() == 1);  // Tweedie's estimate at the level's own step
  // The first of one level: the full step size (the official get_lr(0)); sigma sqrt(3) as the reference's.
  REQUIRE(method.langevin_step_size(0) == number("lr"));
  REQUIRE(method.model_schedule().sqrt_recipm1_alphas_cumprod()[0] == number("sigma"));
  const PosteriorSampler daps(method);
  LatentDapsZeroNoiseModel model;

  for (const auto dtype : {torch::kFloat32, torch::kFloat64}) {
    const bool single = dtype == torch::kFloat32;
    CAPTURE(single);
    const auto z0_hat = reference.at("z0_hat").to(dtype);
    const auto z_t = 0.5 * z0_hat;
    const auto y = reference.at("y").to(dtype);
    auto generator = make_generator(static_cast<uint64_t>(reference.at("seed").item<int64_t>()));
    const auto result = daps.step(model, z_t, y, 0, torch::zeros_like(z_t), generator);
    REQUIRE(torch::equal(result.x0_hat, z0_hat));
    // One level only: the step re-noises to sigma 0, so x_prev is the chain's last z0.
    const auto& expected = reference.at(single ? "z0_float32" : "z0_float64");
    REQUIRE((result.x_prev.scalar_type() == expected.scalar_type()));
    const double max_abs = (result.x_prev - expected).abs().max().item<double>();
    const double relative = testing::relative_error(result.x_prev, expected);
    MESSAGE("LatentDAPS HMC chain (24 steps) vs the official MCMCSampler, ", single ? "float32" : "float64",
            ": max abs error ", max_abs, ", relative ", relative, " (max |z0| ",
            expected.abs().max().item<double>(), ", moved ", (expected - z0_hat).abs().max().item<double>(),
            " from z0_hat)");
    CHECK(relative <= (single ? 1e-5 : 1e-10));
  }
}
