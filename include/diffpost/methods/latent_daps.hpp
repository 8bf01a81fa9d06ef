// LatentDAPS (Zhang, Chu, Berner, Meng, Anandkumar & Song, "Improving Diffusion Inverse Problem Solving with
// Decoupled Noise Annealing", CVPR 2025; official code zhangbingliang2019/DAPS, `LatentDAPS` in
// sampler.py): DAPS run on the latents of a latent diffusion model, the measurement seen through the decoder.
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/methods/daps.hpp>
#include <diffpost/models/latent.hpp>

namespace diffpost {

/// LatentDAPS: `DAPS` whose variable is the latent z and whose operator is `ThroughDecoder`, A(D(z)). The
/// official `LatentDAPS.sample` is `DAPS.sample` with the operator wrapped in `LatentWrapper` (A(D(z))) and
/// the start, x0 estimates and chain all in latent space, so diffpost runs the same `DAPS` on latents; what
/// the latent version changes is its settings, `DAPSOptions::latent()`:
///   1. x0_hat: the probability-flow ODE on z from the level's sigma to 0.001 in 2 Euler steps;
///   2. the chain on z0: damped HMC (`DAPSChain::hmc`, the official `mc_algo: hmc`) on
///      log p(z) = -||y - A(D(z))||^2 / tau^2 - ||z - z0_hat||^2 / (2 sigma^2), whose data gradient (taken
///      through the decoder by autograd) is clamped entrywise to [-1, 1] before the 1 / tau^2, as
///      `LatentWrapper.gradient` does (`gradient_clamp`);
///   3. z_{t'} = z0 + sigma' n at the next level; the result is the last z0, to be decoded by the caller.
/// Cost per level: the ODE's network evaluations (`network_evaluations`), and `langevin_steps` decoder
/// forward and backward passes (the chain's gradients); the network is never differentiated.
///
/// Where diffpost differs from the official code:
///   - Timesteps. The official `VPPrecond` feeds the LDM the continuous timestep 999 t(sigma), t(sigma) the
///     inverse of ADM's VP schedule (beta_min 0.1, beta_d 19.9), which is not the LDM's schedule (betas
///     linspace(sqrt 0.0015, sqrt 0.0195, 1000)^2): at the preset's levels the LDM is told a timestep whose
///     own sigma is up to several times the level's (docs/methods.md has the table). diffpost rounds each
///     sigma to the nearest timestep of the schedule the model was trained on (pass the checkpoint's own
///     schedule), so the network sees the noise level it was trained for; levels that round to the same
///     timestep merge.
///   - The ODE ends at the schedule's step 0 (sigma 0.039 on the FFHQ LDM), not at sigma 0.001: the last
///     Euler step's end is a timestep like every other.
///   - The start is z_T ~ N(0, I) on the VP scale (standard deviation sqrt(1 + sigma_max^2) = 10.05 on the VE
///     scale); the official start has standard deviation sigma_max = 10.
///   - The official `LatentWrapper.loss` casts the decoded image to float32 before the operator; diffpost
///     computes in the latents' dtype (the same for float32 runs).
///   - A chain that produces NaN stops with an error naming the step (`PosteriorSampler`'s divergence check);
///     the official chain returns zeros for the whole batch and goes on.
///   - The official loop decodes x0_hat, z0 and z_t at every level for its logs; diffpost decodes nothing
///     (`prior.decode(z0)` at the end).
///
///   const auto prior = LatentPrior(FirstStage(vae), unet, schedule);
///   PosteriorSampler daps(LatentDAPS<GaussianLikelihood, SuperResolutionOperator, FirstStage>(
///       GaussianLikelihood(0.05), prior.through_decoder(sr), prior.schedule(), DAPSOptions::latent()));
///   auto x0 = prior.decode(daps.sample(prior.score_model(), y, prior.latent_shape({3, 256, 256}), gen));
template <NoiseModel Likelihood, ForwardOperator Operator, Autoencoder Codec>
using LatentDAPS = DAPS<Likelihood, ThroughDecoder<Operator, Codec>>;

}  // namespace diffpost
