// The one instantiation of prepare_latent_method for the tool's registries and prior (see
// prepared_method.hpp).
#include "prepared_method.hpp"

namespace diffpost::cli {

template PreparedMethod<PriorNetwork> prepare_latent_method<PriorNetwork, Methods, AnyOperator>(
    const std::string&, const MethodSettingsOf<Methods>&, const MethodRun&, int64_t, const AnyOperator&,
    const AnyNoise&, const FirstStage&);

}  // namespace diffpost::cli
