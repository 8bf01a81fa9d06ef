// A short ReSample run of diffpost against the reference sampler (soominkwon/resample, `resample_sampling`
// with its `PosteriorSampling` conditioning) on the same tiny score model, decoder, encoder, operator, start
// and resampling noise. tests/data/resample/README.md says how the reference data were made.
#include <diffpost/dps.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/methods/resample.hpp>
#include "support/doctest_with_torch.hpp"

#include "support/tensors.hpp"

#include <string>

#include <fmt/format.h>

using namespace diffpost;

namespace {

// eps(z, t) = W2 tanh(W1 z + B1 t / 1000), 1 x 1 convolutions, as the fixture's stand-in for the LDM UNet.
struct ResampleTinyScoreModel {
  torch::Tensor w1, b1, w2;
  torch::Tensor operator()(const torch::Tensor& z, const torch::Tensor& t) const {
    const auto time = (t.to(z.scalar_type()) / 1000).view({-1, 1, 1, 1});
    const auto h = torch::einsum("kc,bchw->bkhw", {w1, z}) + b1.view({1, -1, 1, 1}) * time;
    return torch::einsum("ck,bkhw->bchw", {w2, torch::tanh(h)});
  }
  [[nodiscard]] bool learns_variance() const noexcept { return false; }
};
static_assert(ScoreModel<ResampleTinyScoreModel>);

// decode(z) = nearest x2 upsampling of tanh(MIX z); encode(x) = ENC (2 x 2 average pooling of x).
struct ResampleTinyCodec {
  torch::Tensor mix, enc;
  [[nodiscard]] torch::Tensor decode(const torch::Tensor& z) const {
    return torch::tanh(torch::einsum("oc,bchw->bohw", {mix, z}))
        .repeat_interleave(2, 2)
        .repeat_interleave(2, 3);
  }
  [[nodiscard]] torch::Tensor encode(const torch::Tensor& x) const {
    return torch::einsum("co,bohw->bchw", {enc, torch::avg_pool2d(x, 2)});
  }
  [[nodiscard]] Shape image_shape(const Shape& s) const { return {s[0], mix.size(0), 2 * s[2], 2 * s[3]}; }
  [[nodiscard]] Shape latent_shape(const Shape& s) const { return {s[0], enc.size(0), s[2] / 2, s[3] / 2}; }
};
static_assert(Autoencoder<ResampleTinyCodec>);

// y = A x on flattened images.
struct ResampleDenseReferenceOperator {
  torch::Tensor matrix;
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    return x.reshape({x.size(0), -1}).matmul(matrix.t());
  }
  [[nodiscard]] Shape measurement_shape(const Shape& s) const { return {s[0], matrix.size(0)}; }
};

}  // namespace

TEST_CASE("a short ReSample run matches the reference's resample_sampling step for step") {
  using testing::relative_error;
  const auto reference = read_state_dict(std::string(DIFFPOST_TEST_DATA_DIR) + "/resample/reference_run.pt");
  ResampleTinyScoreModel model{reference.at("W1"), reference.at("B1"), reference.at("W2")};
  const ResampleTinyCodec codec{reference.at("MIX"), reference.at("ENC")};
  LdmModelConfig config;  // ffhq-ldm-vq-4.yaml's schedule
  config.linear_start = 0.0015;
  config.linear_end = 0.0195;
  // 50 DDIM steps (timesteps 1, 21, ..., 981): consistency at steps 30 and 20 (pixel) and 10 (latent); the
  // fixture capped both optimisations at 20 iterations.
  const PosteriorSampler sampler(
      ReSample<GaussianLikelihood, ResampleDenseReferenceOperator, ResampleTinyCodec>(
          GaussianLikelihood(0.01), ThroughDecoder(ResampleDenseReferenceOperator{reference.at("A")}, codec),
          config.schedule(), ReSampleOptions{}.steps(50).pixel_iterations(20).latent_iterations(20)));
  const auto& method = sampler.method();
  const auto& y = reference.at("y");
  auto generator = make_generator(0);  // ReSample draws nothing beyond the step's given noise
  auto x = reference.at("x_T");
  int64_t checkpoint = 0;
  for (int64_t index = 49; index >= 0; --index) {
    CAPTURE(index);
    const bool consistency = method.is_consistency_step(index);
    const auto noise = consistency ? reference.at(fmt::format("noise_{}", checkpoint)) : torch::zeros_like(x);
    x = sampler.step(model, x, y, index, noise, generator).x_prev;
    if (consistency) {
      CAPTURE(checkpoint);
      const double error = relative_error(x, reference.at(fmt::format("resampled_{}", checkpoint)));
      INFO("relative error after resampling: ", error);
      CHECK(error < 1e-5);
      ++checkpoint;
    }
  }
  CHECK(checkpoint == 3);
  const double error = relative_error(x, reference.at("z"));
  INFO("relative error of the result: ", error);
  CHECK(error < 1e-5);
}
