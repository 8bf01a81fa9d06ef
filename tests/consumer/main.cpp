#include <diffpost/dps.hpp>

#include <cstdio>

// Runs a 10-step DPS on an analytic prior so that linking and running the whole header set is exercised.
int main() {
  auto schedule = diffpost::DiffusionSchedule::linear().respaced("10");
  diffpost::GaussianPrior prior(torch::zeros({1, 1, 4, 4}), torch::ones({1, 1, 4, 4}),
                                diffpost::DiffusionSchedule::linear());
  diffpost::DPS<diffpost::GaussianLikelihood, diffpost::IdentityOperator> dps(
      diffpost::IdentityOperator{}, diffpost::GaussianLikelihood(0.05), diffpost::DDPMSampler(schedule));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0);
  auto y = torch::zeros({1, 1, 4, 4});
  auto x = dps.sample(prior, y, generator);
  std::printf("consumer ran DPS: output %lld elements, finite %d\n", static_cast<long long>(x.numel()),
              static_cast<int>(torch::isfinite(x).all().item<bool>()));
  return torch::isfinite(x).all().item<bool>() ? 0 : 1;
}
