#include <diffpost/dps.hpp>
#include <diffpost/io.hpp>

#include <cstdio>
#include <filesystem>

// Deblurs a tiny image under an analytic prior with DPS, and writes and reads back a checkpoint, so that
// linking and running the core and the io headers (zlib, yaml-cpp, stb, header-only fmt) is exercised.
int main() {
  using namespace diffpost;
  install_caching_cpu_allocator();
  auto generator = make_generator(0);
  GaussianPrior prior(torch::zeros({1, 8, 8}), torch::full({1, 8, 8}, 0.5), DiffusionSchedule::linear());
  BlurOperator<Motion> blur(Motion{}.size(5).intensity(0.5), generator);
  PosteriorSampler dps(DPS<GaussianLikelihood, BlurOperator<Motion>>(
      GaussianLikelihood(0.05), blur, DDPMSampler(DiffusionSchedule::linear().respaced("10")),
      DPSOptions{}.scale(0.3)));
  auto y = GaussianLikelihood(0.05).sample(blur.forward(prior.sample(1, generator).to(torch::kFloat32)),
                                           generator);
  auto x = dps.sample(prior, y, {1, 8, 8}, generator);
  const bool finite = torch::isfinite(x).all().item<bool>();
  const bool cached = caching_cpu_allocator_installed() && CachingCpuAllocator::instance().owns(x.data_ptr());
  std::printf(
      "consumer ran DPS<GaussianLikelihood, BlurOperator<Motion>>: %lld values, finite %d, memory from "
      "the caching allocator %d\n",
      static_cast<long long>(x.numel()), static_cast<int>(finite), static_cast<int>(cached));
  const auto path = std::filesystem::temp_directory_path() / "diffpost-consumer-checkpoint.pt";
  StateDict state;
  state.insert("x", x);
  save_state_dict(state, path, SaveOptions{}.overwrite(true));
  const bool round_trip = torch::equal(read_state_dict(path).at("x"), x);
  std::filesystem::remove(path);
  std::printf("checkpoint round trip %d\n", static_cast<int>(round_trip));
  return finite && cached && round_trip ? 0 : 1;
}
