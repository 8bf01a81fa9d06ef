// A method made ready for one batch, behind one type. with_method compiles a sampler for every method,
// operator, noise model and sampler of the registries; the subcommands that run methods (restore, eval) call
// prepare_method instead, whose one instantiation for the tool's registries lives in prepared_method.cpp.
// The latent methods are made by prepare_latent_method (prepared_latent_method.cpp), which sees the operator
// only through the decoder, behind one erased type.
#pragma once

#include <diffpost/dps.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>

#include "methods.hpp"
#include "model.hpp"
#include "tasks.hpp"

namespace diffpost::cli {

/// A method's sampler for one batch: its step count, its network cost and its run.
template <class Model>
struct PreparedMethod {
  int64_t num_steps = 0;
  NetworkCost network_cost;
  /// sample(model, y, image_shape, generator, callback), as PosteriorSampler::sample.
  std::function<torch::Tensor(Model&, const torch::Tensor&, const Shape&, at::Generator&,
                              const StepCallback&)>
      sample;
};

/// with_method's sampler for these arguments as a PreparedMethod; throws what with_method throws.
template <class Model, class Registry = Methods, class AnyOp>
PreparedMethod<Model> prepare_method(const std::string& name, const MethodSettingsOf<Registry>& settings,
                                     const MethodRun& run, int64_t num_samples, const AnyOp& op,
                                     const AnyNoise& noise) {
  PreparedMethod<Model> prepared;
  with_method<Registry>(name, settings, run, num_samples, op, noise, [&](const auto& sampler) {
    prepared.num_steps = sampler.num_steps();
    prepared.network_cost = sampler.network_cost();
    prepared.sample = [sampler](Model& model, const torch::Tensor& y, const Shape& image_shape,
                                at::Generator& generator, const StepCallback& callback) {
      return sampler.sample(model, y, image_shape, generator, callback);
    };
  });
  return prepared;
}

/// A pixel-space operator behind one type, for the latent methods, which apply it to decoded latents only
/// (forward); each latent method is then compiled once per noise model rather than once per operator.
class ErasedOperator {
 public:
  template <ForwardOperator Op>
  explicit ErasedOperator(const Op& op) : ErasedOperator(std::make_shared<const Op>(op)) {}

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const { return forward_(x); }
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return measurement_shape_(image_shape);
  }

 protected:
  template <class Op>
  explicit ErasedOperator(const std::shared_ptr<const Op>& op)
      : forward_([op](const torch::Tensor& x) { return op->forward(x); }),
        measurement_shape_([op](const Shape& image_shape) { return op->measurement_shape(image_shape); }) {}

 private:
  std::function<torch::Tensor(const torch::Tensor&)> forward_;
  std::function<Shape(const Shape&)> measurement_shape_;
};

/// ErasedOperator with the adjoint and the pseudo-inverse of a PseudoInvertibleOperator (PSLD's gluing).
class ErasedPseudoInvertibleOperator : public ErasedOperator {
 public:
  template <PseudoInvertibleOperator Op>
  explicit ErasedPseudoInvertibleOperator(const Op& op)
      : ErasedPseudoInvertibleOperator(std::make_shared<const Op>(op)) {}

  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const { return adjoint_(y); }
  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const { return pseudo_inverse_(y); }

 private:
  template <class Op>
  explicit ErasedPseudoInvertibleOperator(const std::shared_ptr<const Op>& op)
      : ErasedOperator(op),
        adjoint_([op](const torch::Tensor& y) { return op->adjoint(y); }),
        pseudo_inverse_([op](const torch::Tensor& y) { return op->pseudo_inverse(y); }) {}

  std::function<torch::Tensor(const torch::Tensor&)> adjoint_;
  std::function<torch::Tensor(const torch::Tensor&)> pseudo_inverse_;
};

static_assert(ForwardOperator<ErasedOperator> && !LinearOperator<ErasedOperator>);
static_assert(PseudoInvertibleOperator<ErasedPseudoInvertibleOperator>);

/// The sampler of latent method `name` (a RunsOnLatents entry) for the batch operator `op` seen through
/// `first_stage`'s decoder, as a PreparedMethod whose `sample` takes the image shape, samples latents and
/// returns their decoding. Throws cannot_run where the method cannot take the operator or the noise, and a
/// UsageError for a pixel-space method.
template <class Model, class Registry = Methods, class AnyOp>
PreparedMethod<Model> prepare_latent_method(const std::string& name,
                                            const MethodSettingsOf<Registry>& settings, const MethodRun& run,
                                            int64_t num_samples, const AnyOp& op, const AnyNoise& noise,
                                            const FirstStage& first_stage) {
  PreparedMethod<Model> prepared;
  std::visit(
      [&](const auto& o, const auto& likelihood) {
        using Op = std::decay_t<decltype(o)>;
        using Noise = std::decay_t<decltype(likelihood)>;
        const bool found = with_entry(Registry{}, name, [&]<class Entry>() {
          if constexpr (!LatentEntry<Entry>) {
            throw UsageError(fmt::format("method {} works in pixel space, not on latents", name));
          } else if constexpr (!EntryRuns<Entry, Op, Noise>) {
            throw cannot_run(name, run.task, Entry::template unmet<Op, Noise>());
          } else {
            // The least the method needs of the operator: the erased type that offers it.
            using Erased = std::conditional_t<EntryRuns<Entry, ErasedOperator, Noise>, ErasedOperator,
                                              ErasedPseudoInvertibleOperator>;
            const PosteriorSampler sampler(
                Entry::make(std::get<typename Entry::Settings>(settings), run, likelihood,
                            ThroughDecoder<Erased, FirstStage>(Erased(o), first_stage)),
                num_samples);
            prepared.num_steps = sampler.num_steps();
            prepared.network_cost = sampler.network_cost();
            prepared.sample = [sampler, first_stage](Model& model, const torch::Tensor& y,
                                                     const Shape& image_shape, at::Generator& generator,
                                                     const StepCallback& callback) {
              const auto latent =
                  first_stage.latent_shape({1, image_shape[0], image_shape[1], image_shape[2]});
              const auto z = sampler.sample(model, y, {latent[1], latent[2], latent[3]}, generator, callback);
              torch::NoGradGuard no_grad;
              return first_stage.decode(z);
            };
          }
        });
        if (!found) throw unknown_method<Registry>(name);
      },
      op, noise);
  return prepared;
}

// The tool's registries and prior: compiled once, in prepared_method.cpp and prepared_latent_method.cpp.
extern template PreparedMethod<PriorNetwork> prepare_method<PriorNetwork, Methods, AnyOperator>(
    const std::string&, const MethodSettingsOf<Methods>&, const MethodRun&, int64_t, const AnyOperator&,
    const AnyNoise&);
extern template PreparedMethod<PriorNetwork> prepare_latent_method<PriorNetwork, Methods, AnyOperator>(
    const std::string&, const MethodSettingsOf<Methods>&, const MethodRun&, int64_t, const AnyOperator&,
    const AnyNoise&, const FirstStage&);

/// The method `name` prepared for `prior`: prepare_latent_method with a latent diffusion model's first
/// stage, else prepare_method.
inline PreparedMethod<PriorNetwork> prepare_for_prior(const Prior& prior, const std::string& name,
                                                      const MethodSettings& settings, const MethodRun& run,
                                                      int64_t num_samples, const AnyOperator& op,
                                                      const AnyNoise& noise) {
  if (prior.first_stage)
    return prepare_latent_method<PriorNetwork>(name, settings, run, num_samples, op, noise,
                                               *prior.first_stage);
  return prepare_method<PriorNetwork>(name, settings, run, num_samples, op, noise);
}

}  // namespace diffpost::cli
