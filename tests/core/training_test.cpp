// Training objectives and weight averaging against closed forms: the Gaussian KL, the tanh normal CDF
// against std::erf, the discretized Gaussian likelihood against exact bin masses, the variational-bound
// terms at their known zeros and values, the stop-gradient of the hybrid loss, and the EMA update rule.
#include <diffpost/random.hpp>
#include <diffpost/schedule.hpp>
#include <diffpost/training/ema.hpp>
#include <diffpost/training/losses.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cmath>

namespace {

double normal_cdf(double x) {
  return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
}

torch::Tensor scalar(double v) {
  return torch::tensor({v}, torch::kFloat64);
}

}  // namespace

TEST_CASE("normal_kl matches the closed form of two univariate Gaussians") {
  // KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2.
  const double m1 = 0.3, s1 = 0.7, m2 = -1.1, s2 = 1.9;
  const double expected = std::log(s2 / s1) + (s1 * s1 + (m1 - m2) * (m1 - m2)) / (2 * s2 * s2) - 0.5;
  const auto kl =
      diffpost::normal_kl(scalar(m1), scalar(2 * std::log(s1)), scalar(m2), scalar(2 * std::log(s2)));
  CHECK(kl.item<double>() == doctest::Approx(expected).epsilon(1e-12));
  CHECK(diffpost::normal_kl(scalar(m1), scalar(0.4), scalar(m1), scalar(0.4)).item<double>() ==
        doctest::Approx(0.0).epsilon(1e-15));
}

TEST_CASE("approx_standard_normal_cdf is within 2e-4 of the exact CDF") {
  const auto x = torch::linspace(-6.0, 6.0, 1201, torch::kFloat64);
  const auto approx = diffpost::approx_standard_normal_cdf(x);
  double worst = 0.0;
  for (int64_t i = 0; i < x.size(0); ++i)
    worst = std::max(worst, std::abs(approx[i].item<double>() - normal_cdf(x[i].item<double>())));
  CHECK(worst < 2e-4);
  CHECK(worst > 1e-5);  // it is an approximation, not erf: the reference's loss values depend on that
}

TEST_CASE("discretized_gaussian_log_likelihood is the log mass of the 8-bit bin") {
  const double mean = 0.1, sigma = 0.05, half_bin = 1.0 / 255.0;
  auto exact_log_mass = [&](double x) {
    const double hi = x > 0.999 ? 1.0 : normal_cdf((x + half_bin - mean) / sigma);
    const double lo = x < -0.999 ? 0.0 : normal_cdf((x - half_bin - mean) / sigma);
    return std::log(hi - lo);
  };
  for (double x : {0.1, 0.12, 0.05}) {
    CAPTURE(x);
    const auto got =
        diffpost::discretized_gaussian_log_likelihood(scalar(x), scalar(mean), scalar(std::log(sigma)));
    // The tanh CDF differs from erf by < 2e-4 in probability; relative to bin masses of ~0.03 here.
    CHECK(got.item<double>() == doctest::Approx(exact_log_mass(x)).epsilon(1e-2));
  }
  // Lowest bin: all mass below -1 + 1/255.
  CHECK(diffpost::discretized_gaussian_log_likelihood(scalar(-1.0), scalar(-0.98), scalar(std::log(0.02)))
            .item<double>() ==
        doctest::Approx(std::log(normal_cdf((-1.0 + half_bin + 0.98) / 0.02))).epsilon(1e-2));
  // Edge bins: x = 1 far below the mean still has almost all mass above -> log ~ 0 at x = 1 for mean 1.
  CHECK(diffpost::discretized_gaussian_log_likelihood(scalar(1.0), scalar(1.5), scalar(std::log(0.01)))
            .item<double>() == doctest::Approx(0.0).epsilon(1e-9));
  // Floor: a bin 40 sigma away has probability floored at 1e-12.
  CHECK(diffpost::discretized_gaussian_log_likelihood(scalar(0.0), scalar(0.8), scalar(std::log(0.02)))
            .item<double>() == doctest::Approx(std::log(1e-12)));
}

TEST_CASE("vlb_terms_bits vanishes for the true noise and the posterior variance, and is the KL otherwise") {
  const auto schedule = diffpost::DiffusionSchedule::linear();
  auto generator = diffpost::make_generator(3);
  const auto x0 = at::rand({3, 1, 4, 4}, generator, torch::kFloat64) * 2 - 1;
  const auto noise = at::randn({3, 1, 4, 4}, generator, torch::kFloat64);
  const auto t = torch::tensor({1, 500, 999}, torch::kLong);
  const auto x_t = q_sample(schedule, x0, t, noise);
  // eps = the true noise gives x0_hat = x0, so the model mean is the posterior mean; v = -1 selects the
  // clipped posterior log-variance, exact for t >= 1: KL = 0.
  const auto zero = diffpost::vlb_terms_bits(schedule, x0, x_t, t, noise, torch::full_like(x0, -1.0));
  CHECK(zero.abs().max().item<double>() < 1e-9);
  // v = +1 selects log beta_t: KL = 0.5 (-1 + log beta - log pv + pv / beta) nats per dimension.
  const auto large = diffpost::vlb_terms_bits(schedule, x0, x_t, t, noise, torch::ones_like(x0));
  for (int i = 0; i < 3; ++i) {
    const auto k = t[i].item<int64_t>();
    const double beta = schedule.betas()[k], pv = schedule.posterior_variance()[k];
    const double nats = 0.5 * (-1 + std::log(beta) - std::log(pv) + pv / beta);
    CHECK(large[i].item<double>() == doctest::Approx(nats / std::log(2.0)).epsilon(1e-9));
  }
  // t = 0: the decoder term -log p(x0 | x1) in bits, with the model mean equal to x0 and sigma^2 = post_var_1
  // (the clipped value at 0).
  const auto t0 = torch::zeros({3}, torch::kLong);
  const auto x1 = q_sample(schedule, x0, t0, noise);
  const auto decoder = diffpost::vlb_terms_bits(schedule, x0, x1, t0, noise, torch::full_like(x0, -1.0));
  const auto log_scale = torch::full_like(x0, 0.5 * schedule.posterior_log_variance_clipped()[0]);
  const auto expected =
      -diffpost::mean_flat(diffpost::discretized_gaussian_log_likelihood(x0, x0, log_scale)) / std::log(2.0);
  CHECK(torch::allclose(decoder, expected, 1e-9, 1e-12));
}

TEST_CASE("diffusion_loss: L_simple for eps-only output, hybrid with the mean gradient stopped in the vlb") {
  const auto schedule = diffpost::DiffusionSchedule::linear();
  auto generator = diffpost::make_generator(5);
  const auto x0 = at::rand({2, 1, 3, 3}, generator, torch::kFloat64) * 2 - 1;
  const auto noise = at::randn({2, 1, 3, 3}, generator, torch::kFloat64);
  const auto t = torch::tensor({10, 700}, torch::kLong);
  const auto x_t = q_sample(schedule, x0, t, noise);

  const auto eps_only = at::randn({2, 1, 3, 3}, generator, torch::kFloat64);
  const auto simple = diffpost::diffusion_loss(schedule, eps_only, x0, x_t, t, noise);
  CHECK(torch::allclose(simple.loss, (noise - eps_only).pow(2).flatten(1).mean(1)));
  CHECK(simple.vlb.abs().max().item<double>() == 0.0);

  auto output = at::randn({2, 2, 3, 3}, generator, torch::kFloat64).requires_grad_(true);
  const auto hybrid = diffpost::diffusion_loss(schedule, output, x0, x_t, t, noise);
  CHECK(torch::allclose(hybrid.loss, hybrid.mse + 1.0 * hybrid.vlb));  // lambda T = 0.001 * 1000
  hybrid.loss.sum().backward();
  // The eps half gets only the L_simple gradient: d/d eps of mean (noise - eps)^2 = 2 (eps - noise) / 9.
  const auto eps = output.detach().narrow(1, 0, 1);
  CHECK(torch::allclose(output.grad().narrow(1, 0, 1), 2.0 * (eps - noise) / 9.0, 1e-9, 1e-12));
  CHECK(output.grad().narrow(1, 1, 1).abs().sum().item<double>() > 0.0);  // the variance half learns
}

TEST_CASE("EMA decay warms up and ema_update moves the average by (1 - decay)") {
  CHECK(diffpost::ema_decay_at(0, 0.999) == doctest::Approx(0.1));
  CHECK(diffpost::ema_decay_at(90, 0.999) == doctest::Approx(0.91));
  CHECK(diffpost::ema_decay_at(100000, 0.999) == doctest::Approx(0.999));
  torch::nn::Linear model(2, 1), average(2, 1);
  {
    torch::NoGradGuard no_grad;
    model->weight.fill_(1.0);
    model->bias.fill_(2.0);
    average->weight.fill_(0.0);
    average->bias.fill_(0.0);
  }
  diffpost::ema_update(*average, *model, 0.75);
  CHECK(average->weight.min().item<double>() == doctest::Approx(0.25));
  CHECK(average->bias.item<double>() == doctest::Approx(0.5));
  torch::nn::Linear other(3, 1);
  CHECK_THROWS_AS(diffpost::ema_update(*average, *other, 0.5), c10::Error);
}
