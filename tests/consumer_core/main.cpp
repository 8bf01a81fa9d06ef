#include <diffpost/dps.hpp>

#include <cstdio>

// DPS on a motion-blurred image under the analytic Gaussian prior, built against diffpost::core alone.
int main() {
  using namespace diffpost;
  auto generator = make_generator(0);
  GaussianPrior prior(torch::zeros({1, 8, 8}), torch::full({1, 8, 8}, 0.5), DiffusionSchedule::linear());
  BlurOperator<Motion> blur(Motion{}.size(5).intensity(0.5), generator);
  PosteriorSampler dps(DPS<GaussianLikelihood, BlurOperator<Motion>>(
      GaussianLikelihood(0.05), blur, DDPMSampler(DiffusionSchedule::linear().respaced("10")),
      DPSOptions{}.scale(0.3)));
  auto truth = prior.sample(1, generator).to(torch::kFloat32);
  auto y = GaussianLikelihood(0.05).sample(blur.forward(truth), generator);
  auto x = dps.sample(prior, y, {1, 8, 8}, generator);
  const bool finite = torch::isfinite(x).all().item<bool>();
  std::printf("core consumer ran DPS: %lld values, finite %d\n", static_cast<long long>(x.numel()),
              static_cast<int>(finite));
  return finite ? 0 : 1;
}
