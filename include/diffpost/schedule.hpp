// The variance-preserving (DDPM) noise schedule and everything derived from it, in float64 as the reference
// computes it, with the reference's timestep respacing.
#pragma once

#include <torch/torch.h>

#include <diffpost/detail/text.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace diffpost {

/// A discrete VP diffusion: betas beta_1..beta_N and all coefficients that DDPM / DDIM sampling and DPS use.
///
/// Index i runs over the steps of this schedule (0 = least noisy). A respaced schedule keeps a subset of the
/// original steps and recomputes betas as `1 - abar_i / abar_prev` (Nichol & Dhariwal 2021, section 4); the
/// network still receives the original integer timestep, `model_timestep(i)`.
class DiffusionSchedule {
 public:
  /// Builds a schedule from betas in (0, 1]; `timestep_map` gives the original timestep of each step
  /// (empty = identity).
  explicit DiffusionSchedule(std::vector<double> betas, std::vector<int64_t> timestep_map = {})
      : betas_(std::move(betas)), timestep_map_(std::move(timestep_map)) {
    TORCH_CHECK(!betas_.empty(), "DiffusionSchedule: needs at least one beta, got none");
    for (size_t i = 0; i < betas_.size(); ++i) {
      TORCH_CHECK(betas_[i] > 0.0 && betas_[i] <= 1.0, "DiffusionSchedule: beta[", i, "] = ", betas_[i],
                  " is outside (0, 1]");
    }
    if (timestep_map_.empty()) {
      timestep_map_.resize(betas_.size());
      for (size_t i = 0; i < betas_.size(); ++i) timestep_map_[i] = static_cast<int64_t>(i);
    }
    TORCH_CHECK(timestep_map_.size() == betas_.size(), "DiffusionSchedule: timestep_map has ",
                timestep_map_.size(), " entries but there are ", betas_.size(), " betas");
    derive_coefficients();
  }

  /// Linear betas `linspace(beta_start, beta_end, N)` scaled by 1000 / N as the reference does (Ho et al.
  /// 2020).
  static DiffusionSchedule linear(int64_t num_timesteps = 1000, double beta_start = 1e-4,
                                  double beta_end = 0.02) {
    TORCH_CHECK(num_timesteps >= 1, "DiffusionSchedule::linear: num_timesteps must be >= 1, got ",
                num_timesteps);
    const double scale = 1000.0 / static_cast<double>(num_timesteps);
    const double start = scale * beta_start;
    const double end = scale * beta_end;
    std::vector<double> betas(static_cast<size_t>(num_timesteps));
    // numpy.linspace: start + i * step, with the last point set to `end` exactly.
    const double step = num_timesteps == 1 ? 0.0 : (end - start) / static_cast<double>(num_timesteps - 1);
    for (int64_t i = 0; i < num_timesteps; ++i) {
      betas[i] = num_timesteps == 1 ? start : start + static_cast<double>(i) * step;
    }
    if (num_timesteps > 1) betas.back() = end;
    return DiffusionSchedule(std::move(betas));
  }

  /// Cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar(t) = cos^2((t/N + 0.008) / 1.008 * pi/2),
  /// betas clipped at 0.999.
  static DiffusionSchedule cosine(int64_t num_timesteps = 1000) {
    TORCH_CHECK(num_timesteps >= 1, "DiffusionSchedule::cosine: num_timesteps must be >= 1, got ",
                num_timesteps);
    auto alpha_bar = [](double t) {
      const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2.0);
      return c * c;
    };
    std::vector<double> betas(static_cast<size_t>(num_timesteps));
    for (int64_t i = 0; i < num_timesteps; ++i) {
      const double t1 = static_cast<double>(i) / static_cast<double>(num_timesteps);
      const double t2 = static_cast<double>(i + 1) / static_cast<double>(num_timesteps);
      betas[i] = std::min(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999);
    }
    return DiffusionSchedule(std::move(betas));
  }

  /// The original steps kept by a respacing spec, as the reference's `space_timesteps` chooses them:
  /// "N" (N evenly spaced steps), "a,b,c" (the schedule cut into equal sections with a, b, c steps each),
  /// or "ddimN" (a constant integer stride giving exactly N steps). Empty spec keeps every step.
  static std::vector<int64_t> spaced_timesteps(int64_t num_timesteps, std::string_view spec) {
    std::set<int64_t> kept;
    if (spec.empty()) {
      for (int64_t i = 0; i < num_timesteps; ++i) kept.insert(i);
      return {kept.begin(), kept.end()};
    }
    if (spec.starts_with("ddim")) {
      const int64_t desired = parse_count(spec.substr(4), spec);
      for (int64_t stride = 1; stride < num_timesteps; ++stride) {
        if ((num_timesteps + stride - 1) / stride == desired) {
          for (int64_t t = 0; t < num_timesteps; t += stride) kept.insert(t);
          return {kept.begin(), kept.end()};
        }
      }
      TORCH_CHECK(false, "respacing '", spec, "': no integer stride gives exactly ", desired,
                  " steps out of ", num_timesteps, "; choose a count such as ", num_timesteps / 4,
                  " or use a plain count '", desired, "'");
    }
    std::vector<int64_t> section_counts;
    for (const auto piece : detail::split_commas(spec)) section_counts.push_back(parse_count(piece, spec));
    const auto sections = static_cast<int64_t>(section_counts.size());
    const int64_t size_per = num_timesteps / sections;
    const int64_t extra = num_timesteps % sections;
    int64_t start_index = 0;
    for (int64_t s = 0; s < sections; ++s) {
      const int64_t size = size_per + (s < extra ? 1 : 0);
      const int64_t count = section_counts[s];
      TORCH_CHECK(count <= size, "respacing '", spec, "': section ", s, " asks for ", count,
                  " steps but has only ", size, " of the schedule's ", num_timesteps, " timesteps");
      const double stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
      double position = 0.0;
      for (int64_t k = 0; k < count; ++k) {
        // Python's round() rounds half to even; nearbyint does too in the default rounding mode.
        kept.insert(start_index + static_cast<int64_t>(std::nearbyint(position)));
        position += stride;
      }
      start_index += size;
    }
    return {kept.begin(), kept.end()};
  }

  /// This schedule restricted to the steps `spaced_timesteps(num_steps(), spec)` keeps, with betas recomputed
  /// so that abar at each kept step is unchanged. Respacing a respaced schedule composes the timestep maps.
  [[nodiscard]] DiffusionSchedule respaced(std::string_view spec) const {
    return restricted_to(spaced_timesteps(num_steps(), spec));
  }

  /// This schedule restricted to the given steps (indices of this schedule, strictly increasing), with betas
  /// recomputed as `1 - abar_i / abar_prev` so that abar at each kept step is unchanged (Nichol & Dhariwal
  /// 2021, section 4). For step sequences no respacing spec describes, such as DiffPIR's quadratic spacing
  /// or DAPS's annealing levels.
  [[nodiscard]] DiffusionSchedule restricted_to(const std::vector<int64_t>& kept) const {
    TORCH_CHECK(!kept.empty(), "DiffusionSchedule::restricted_to: keep at least one step, got none");
    std::vector<double> new_betas;
    std::vector<int64_t> new_map;
    double last_alpha_cumprod = 1.0;
    for (size_t k = 0; k < kept.size(); ++k) {
      check_index(kept[k]);
      TORCH_CHECK(k == 0 || kept[k] > kept[k - 1],
                  "DiffusionSchedule::restricted_to: steps must be strictly increasing, got ", kept[k - 1],
                  " then ", kept[k]);
      new_betas.push_back(1.0 - alphas_cumprod_[kept[k]] / last_alpha_cumprod);
      last_alpha_cumprod = alphas_cumprod_[kept[k]];
      new_map.push_back(timestep_map_[kept[k]]);
    }
    return DiffusionSchedule(std::move(new_betas), std::move(new_map));
  }

  /// Number of steps N of this (possibly respaced) schedule.
  [[nodiscard]] int64_t num_steps() const noexcept { return static_cast<int64_t>(betas_.size()); }

  /// The original integer timestep the network receives at step `index` (`rescale_timesteps: False`).
  [[nodiscard]] int64_t model_timestep(int64_t index) const {
    check_index(index);
    return timestep_map_[index];
  }

  [[nodiscard]] const std::vector<int64_t>& timestep_map() const noexcept { return timestep_map_; }
  [[nodiscard]] const std::vector<double>& betas() const noexcept { return betas_; }
  [[nodiscard]] const std::vector<double>& alphas() const noexcept { return alphas_; }
  /// abar_i = prod_{j <= i} (1 - beta_j).
  [[nodiscard]] const std::vector<double>& alphas_cumprod() const noexcept { return alphas_cumprod_; }
  /// abar_{i-1}, with abar_{-1} = 1.
  [[nodiscard]] const std::vector<double>& alphas_cumprod_prev() const noexcept {
    return alphas_cumprod_prev_;
  }
  [[nodiscard]] const std::vector<double>& sqrt_alphas_cumprod() const noexcept {
    return sqrt_alphas_cumprod_;
  }
  [[nodiscard]] const std::vector<double>& sqrt_one_minus_alphas_cumprod() const noexcept {
    return sqrt_one_minus_alphas_cumprod_;
  }
  /// sqrt(1 / abar_i), the x_t coefficient of x0_hat (Ho et al. eq. 15).
  [[nodiscard]] const std::vector<double>& sqrt_recip_alphas_cumprod() const noexcept {
    return sqrt_recip_alphas_cumprod_;
  }
  /// sqrt(1 / abar_i - 1), the eps coefficient of x0_hat.
  [[nodiscard]] const std::vector<double>& sqrt_recipm1_alphas_cumprod() const noexcept {
    return sqrt_recipm1_alphas_cumprod_;
  }
  /// Variance of q(x_{i-1} | x_i, x_0): beta_i (1 - abar_{i-1}) / (1 - abar_i) (Ho et al. eq. 7).
  [[nodiscard]] const std::vector<double>& posterior_variance() const noexcept { return posterior_variance_; }
  /// log of posterior_variance with the zero at i = 0 replaced by the value at i = 1.
  [[nodiscard]] const std::vector<double>& posterior_log_variance_clipped() const noexcept {
    return posterior_log_variance_clipped_;
  }
  /// x_0 coefficient of the posterior mean: beta_i sqrt(abar_{i-1}) / (1 - abar_i).
  [[nodiscard]] const std::vector<double>& posterior_mean_coef1() const noexcept {
    return posterior_mean_coef1_;
  }
  /// x_t coefficient of the posterior mean: (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i).
  [[nodiscard]] const std::vector<double>& posterior_mean_coef2() const noexcept {
    return posterior_mean_coef2_;
  }

  /// Throws a c10::Error naming the index and the valid range when `index` is not a step of this schedule.
  void check_index(int64_t index) const {
    TORCH_CHECK(index >= 0 && index < num_steps(), "step index ", index, " is outside this schedule's [0, ",
                num_steps(), "); a ", num_steps(), "-step schedule has indices 0 ... ", num_steps() - 1);
  }

  /// Gathers `coefficients[indices[b]]` into a [B, 1, ..., 1] tensor broadcastable against `like`, with its
  /// dtype and device (the reference's `_extract_into_tensor`). Used where a batch mixes timesteps, as in
  /// training.
  [[nodiscard]] static torch::Tensor gather(const std::vector<double>& coefficients,
                                            const torch::Tensor& indices, const torch::Tensor& like) {
    TORCH_CHECK(indices.dim() == 1, "gather: indices must be 1-D [B], got shape ", indices.sizes());
    auto table = torch::tensor(coefficients, torch::TensorOptions().dtype(torch::kFloat64));
    auto values =
        table.to(like.device()).index_select(0, indices.to(like.device(), torch::kLong)).to(like.dtype());
    std::vector<int64_t> shape(static_cast<size_t>(std::max<int64_t>(like.dim(), 1)), 1);
    shape[0] = indices.size(0);
    return values.view(shape);
  }

  /// The step whose noise-to-signal ratio sqrt(1 / abar - 1) (the noise level sigma of x_t / sqrt(abar), on
  /// the variance-exploding scale) is nearest to `sigma` in log scale; step 0 for sigma = 0. An image
  /// corrupted as x + sigma n is the diffusion state x_t / sqrt(abar) at that step.
  [[nodiscard]] int64_t nearest_step(double sigma) const {
    TORCH_CHECK(sigma >= 0.0 && !std::isnan(sigma), "noise level sigma must be >= 0, got ", sigma);
    int64_t best = 0;
    double best_error = INFINITY;
    for (int64_t i = 0; i < num_steps(); ++i) {
      const double error = std::abs(std::log(sqrt_recipm1_alphas_cumprod_[i]) - std::log(sigma));
      if (error < best_error) {
        best_error = error;
        best = i;
      }
    }
    return best;
  }

 private:
  static int64_t parse_count(std::string_view text, std::string_view spec) {
    int64_t value = 0;
    const auto* end = text.data() + text.size();
    const auto result = std::from_chars(text.data(), end, value);
    TORCH_CHECK(result.ec == std::errc() && result.ptr == end && value >= 1, "respacing '", spec,
                "': expected a positive step count, an a,b,c section list or ddimN, but '", text,
                "' is not a positive integer");
    return value;
  }

  void derive_coefficients() {
    const size_t n = betas_.size();
    alphas_.resize(n);
    alphas_cumprod_.resize(n);
    alphas_cumprod_prev_.resize(n);
    sqrt_alphas_cumprod_.resize(n);
    sqrt_one_minus_alphas_cumprod_.resize(n);
    sqrt_recip_alphas_cumprod_.resize(n);
    sqrt_recipm1_alphas_cumprod_.resize(n);
    posterior_variance_.resize(n);
    posterior_log_variance_clipped_.resize(n);
    posterior_mean_coef1_.resize(n);
    posterior_mean_coef2_.resize(n);
    double running = 1.0;
    for (size_t i = 0; i < n; ++i) {
      alphas_[i] = 1.0 - betas_[i];
      alphas_cumprod_prev_[i] = running;
      running *= alphas_[i];
      alphas_cumprod_[i] = running;
    }
    for (size_t i = 0; i < n; ++i) {
      const double abar = alphas_cumprod_[i];
      const double abar_prev = alphas_cumprod_prev_[i];
      sqrt_alphas_cumprod_[i] = std::sqrt(abar);
      sqrt_one_minus_alphas_cumprod_[i] = std::sqrt(1.0 - abar);
      sqrt_recip_alphas_cumprod_[i] = std::sqrt(1.0 / abar);
      sqrt_recipm1_alphas_cumprod_[i] = std::sqrt(1.0 / abar - 1.0);
      posterior_variance_[i] = betas_[i] * (1.0 - abar_prev) / (1.0 - abar);
      posterior_mean_coef1_[i] = betas_[i] * std::sqrt(abar_prev) / (1.0 - abar);
      posterior_mean_coef2_[i] = (1.0 - abar_prev) * std::sqrt(alphas_[i]) / (1.0 - abar);
    }
    for (size_t i = 0; i < n; ++i) {
      // The posterior variance is 0 at the first step; the reference substitutes the next step's value.
      // A one-step schedule has no next step; its only posterior variance is 0, so use beta instead.
      const double variance = i > 0 ? posterior_variance_[i] : (n > 1 ? posterior_variance_[1] : betas_[0]);
      posterior_log_variance_clipped_[i] = std::log(variance);
    }
  }

  std::vector<double> betas_;
  std::vector<int64_t> timestep_map_;
  std::vector<double> alphas_, alphas_cumprod_, alphas_cumprod_prev_, sqrt_alphas_cumprod_,
      sqrt_one_minus_alphas_cumprod_, sqrt_recip_alphas_cumprod_, sqrt_recipm1_alphas_cumprod_,
      posterior_variance_, posterior_log_variance_clipped_, posterior_mean_coef1_, posterior_mean_coef2_;
};

}  // namespace diffpost
