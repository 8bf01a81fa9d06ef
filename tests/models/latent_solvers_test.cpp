// End to end on the bundled latent prior (examples/prior/fashion_mnist_28_ldm.ckpt and .yaml,
// docs/model-card.md) read with load_latent_diffusion: LatentDAPS, PSLD and ReSample restore two unseen
// Fashion-MNIST test images from x2 super-resolution with Gaussian noise sigma 0.05, on latents, through the
// decoder and the pixel operator. The runs are short (LatentDAPS 10 levels, PSLD and ReSample 25 DDIM steps;
// about 11 s together), far from the methods' defaults: each must fit the measurement to within 3 sigma and
// reach the PSNR measured on these files less 1 dB (LatentDAPS 21.00 dB, PSLD 19.20 dB, ReSample 18.28 dB;
// the naive inverse 18.14 dB).
#include <diffpost/io.hpp>
#include <diffpost/methods.hpp>
#include <diffpost/metrics/psnr.hpp>
#include <diffpost/noise.hpp>
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

#include <chrono>
#include <filesystem>
#include <string>

using namespace diffpost;

namespace {

constexpr double kLatentSolverSigma = 0.05;

struct LatentSolverProblem {
  LatentDiffusion ldm;
  torch::Tensor truth;
  torch::Tensor y;
};

LatentSolverProblem latent_solver_problem(const SuperResolutionOperator& op) {
  const std::filesystem::path prior_dir = std::filesystem::path(DIFFPOST_SOURCE_DIR) / "examples/prior";
  auto ldm =
      load_latent_diffusion(prior_dir / "fashion_mnist_28_ldm.ckpt", prior_dir / "fashion_mnist_28_ldm.yaml");
  auto truth = read_state_dict(std::filesystem::path(DIFFPOST_TEST_DATA_DIR) /
                               "latent_prior/fashion_mnist_t10k_first8.pt")
                   .at("images")
                   .slice(0, 0, 2);
  auto generator = make_generator(5);
  auto y = GaussianLikelihood(kLatentSolverSigma).sample(op.forward(truth), generator);
  return {std::move(ldm), std::move(truth), std::move(y)};
}

struct LatentSolverOutcome {
  double psnr;
  double residual_rms;
};

LatentSolverOutcome latent_solver_outcome(const SuperResolutionOperator& op,
                                          const LatentSolverProblem& problem, const torch::Tensor& restored) {
  torch::NoGradGuard no_grad;
  const auto image = restored.clamp(-1.0, 1.0);
  return {psnr(image, problem.truth).mean().item<double>(),
          (op.forward(image) - problem.y).square().mean().sqrt().item<double>()};
}

template <PosteriorStep Method>
LatentSolverOutcome run_latent_solver(Method method, const SuperResolutionOperator& op,
                                      LatentSolverProblem& problem, uint64_t seed) {
  auto prior = problem.ldm.prior();
  PosteriorSampler sampler(std::move(method));
  auto generator = make_generator(seed);
  const auto start = std::chrono::steady_clock::now();
  const auto z0 = sampler.sample(prior.score_model(), problem.y, prior.latent_shape({1, 28, 28}), generator);
  MESSAGE(std::string(Method::method_name()), ": ",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s");
  torch::NoGradGuard no_grad;
  return latent_solver_outcome(op, problem, prior.decode(z0));
}

void check_latent_solver(const std::string& name, const LatentSolverOutcome& outcome, double naive_psnr,
                         double min_psnr) {
  MESSAGE(name, ": PSNR ", outcome.psnr, " dB (naive inverse ", naive_psnr, " dB), measurement residual rms ",
          outcome.residual_rms, " (sigma ", kLatentSolverSigma, ")");
  CHECK(outcome.psnr > min_psnr);
  CHECK(outcome.residual_rms < 3.0 * kLatentSolverSigma);
}

}  // namespace

TEST_CASE("LatentDAPS, PSLD and ReSample restore x2 super-resolution on the bundled latent prior") {
  const SuperResolutionOperator op(2);
  auto problem = latent_solver_problem(op);
  const GaussianLikelihood likelihood(kLatentSolverSigma);
  const auto prior = problem.ldm.prior();
  const double naive = latent_solver_outcome(op, problem, op.naive_inverse(problem.y)).psnr;

  const auto daps = run_latent_solver(LatentDAPS<GaussianLikelihood, SuperResolutionOperator, FirstStage>(
                                          likelihood, prior.through_decoder(op), prior.schedule(),
                                          DAPSOptions::latent().annealing_steps(10).langevin_steps(12)),
                                      op, problem, 1);
  check_latent_solver("LatentDAPS", daps, naive, 20.0);

  const auto psld = run_latent_solver(
      PSLD<GaussianLikelihood, SuperResolutionOperator, FirstStage>(
          likelihood, prior.through_decoder(op), prior.schedule(), PSLDOptions{}.ddim_steps(25).omega(1.0)),
      op, problem, 2);
  check_latent_solver("PSLD", psld, naive, 18.2);

  const auto resample =
      run_latent_solver(ReSample<GaussianLikelihood, SuperResolutionOperator, FirstStage>(
                            likelihood, prior.through_decoder(op), prior.schedule(),
                            ReSampleOptions{}.steps(25).pixel_iterations(200).latent_iterations(100)),
                        op, problem, 3);
  check_latent_solver("ReSample", resample, naive, 17.28);
}
