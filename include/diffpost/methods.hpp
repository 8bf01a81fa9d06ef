// Umbrella header: every posterior sampling method.
#pragma once

#include <diffpost/methods/daps.hpp>
#include <diffpost/methods/data_fidelity.hpp>
#include <diffpost/methods/ddnm.hpp>
#include <diffpost/methods/ddrm.hpp>
#include <diffpost/methods/diffpir.hpp>
#include <diffpost/methods/dps.hpp>
#include <diffpost/methods/latent_daps.hpp>
#include <diffpost/methods/mcg.hpp>
#include <diffpost/methods/pigdm.hpp>
#include <diffpost/methods/projection.hpp>
#include <diffpost/methods/psld.hpp>
#include <diffpost/methods/resample.hpp>
#include <diffpost/methods/score_ald.hpp>
#include <diffpost/methods/sdedit.hpp>
#include <diffpost/methods/unconditional.hpp>
