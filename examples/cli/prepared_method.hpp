// A method made ready for one batch, behind one type. with_method compiles a sampler for every method,
// operator, noise model and sampler of the registries; the subcommands that run methods (restore, eval) call
// prepare_method instead, whose one instantiation for the tool's registries lives in prepared_method.cpp.
#pragma once

#include <diffpost/dps.hpp>

#include <cstdint>
#include <functional>
#include <string>

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

// The tool's registries and prior: compiled once, in prepared_method.cpp.
extern template PreparedMethod<PriorNetwork> prepare_method<PriorNetwork, Methods, AnyOperator>(
    const std::string&, const MethodSettingsOf<Methods>&, const MethodRun&, int64_t, const AnyOperator&,
    const AnyNoise&);

}  // namespace diffpost::cli
