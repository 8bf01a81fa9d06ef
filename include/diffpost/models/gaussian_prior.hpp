// An analytic diffusion prior: data x_0 ~ N(mu, Sigma). Its noise prediction under the VP forward process is
// exact, so every sampler and method can be checked against closed forms.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>
#include <diffpost/detail/random.hpp>
#include <diffpost/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace diffpost {

/// The exact eps-prediction of a Gaussian data distribution N(mu, Sigma) over images of shape [C, H, W].
///
/// Under x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, x_t is Gaussian with covariance abar Sigma + (1 - abar)
/// I, and E[eps | x_t] = sqrt(1 - abar) (abar Sigma + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu). Sigma is kept
/// as its eigendecomposition U diag(lambda) U^T, so the inverse is a diagonal scaling in the
/// eigenbasis. The schedule is the un-respaced one whose integer timesteps the samplers pass in. Satisfies
/// ScoreModel.
class GaussianPrior {
 public:
  /// Independent pixels: mean and standard deviation tensors of the image shape [C, H, W] or [1, C, H, W].
  GaussianPrior(const torch::Tensor& mean, const torch::Tensor& stddev, DiffusionSchedule schedule)
      : schedule_(std::move(schedule)) {
    image_shape_ = image_shape_of(mean, "mean");
    TORCH_CHECK(stddev.numel() == mean.numel(), "GaussianPrior: stddev has ", stddev.numel(),
                " elements but mean has ", mean.numel(), "; give one standard deviation per pixel");
    TORCH_CHECK((stddev >= 0).all().item<bool>(), "GaussianPrior: stddev must be non-negative");
    mean_ = mean.detach().to(torch::kFloat64).reshape({-1}).cpu();
    eigenvalues_ = stddev.detach().to(torch::kFloat64).reshape({-1}).cpu().square();
    init_tables();
  }

  /// Correlated pixels: `covariance` is a symmetric positive semi-definite [D, D] matrix, D = C*H*W, in
  /// row-major pixel order of the [C, H, W] mean.
  static GaussianPrior with_covariance(const torch::Tensor& mean, const torch::Tensor& covariance,
                                       DiffusionSchedule schedule) {
    const int64_t dim = mean.numel();
    TORCH_CHECK(covariance.dim() == 2 && covariance.size(0) == dim && covariance.size(1) == dim,
                "GaussianPrior::with_covariance: covariance must be [", dim, ", ", dim, "] for a mean of ",
                dim, " elements, got ", covariance.sizes());
    const auto sigma = covariance.detach().to(torch::kFloat64).cpu().contiguous();
    const auto asymmetry = (sigma - sigma.t()).abs().max().item<double>();
    const auto largest_entry = sigma.abs().max().item<double>();
    TORCH_CHECK(asymmetry <= 1e-9 * std::max(1.0, largest_entry),
                "GaussianPrior::with_covariance: covariance is not symmetric (max |S - S^T| = ", asymmetry,
                ")");
    auto [eigenvalues, eigenvectors] = at::linalg_eigh(sigma);  // ascending eigenvalues, orthonormal columns
    const auto smallest = eigenvalues.min().item<double>();
    TORCH_CHECK(
        smallest >= -1e-9 * std::max(1.0, eigenvalues.max().item<double>()),
        "GaussianPrior::with_covariance: covariance is not positive semi-definite (smallest eigenvalue ",
        smallest, ")");
    GaussianPrior prior(mean, torch::ones_like(mean), std::move(schedule));
    prior.eigenvectors_ = eigenvectors.contiguous();
    prior.eigenvalues_ = eigenvalues.clamp_min(0.0);
    return prior;
  }

  /// eps_hat(x_t, t) for x_t [B, C, H, W] and original integer timesteps t [B].
  torch::Tensor operator()(const torch::Tensor& x_t, const torch::Tensor& t) const {
    auto [centered, abar] = centered_input(x_t, t);
    auto scaled = apply_inverse_marginal_covariance(centered, abar);
    return (abar.neg().add(1.0).sqrt() * scaled).view(x_t.sizes());
  }

  /// An eps-only model: no learned variance channels.
  [[nodiscard]] bool learns_variance() const noexcept { return false; }

  /// E[x_0 | x_t] = mu + sqrt(abar) Sigma (abar Sigma + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu), the exact
  /// Tweedie denoiser, computed without going through eps.
  [[nodiscard]] torch::Tensor posterior_mean_x0(const torch::Tensor& x_t, const torch::Tensor& t) const {
    auto [centered, abar] = centered_input(x_t, t);
    auto lambda = eigenvalues_.to(x_t.options());
    torch::Tensor result;
    if (eigenvectors_.defined()) {
      auto u = eigenvectors_.to(x_t.options());
      auto coordinates = centered.matmul(u);
      result = (coordinates * lambda / (abar * lambda + (1.0 - abar))).matmul(u.t());
    } else {
      result = centered * lambda / (abar * lambda + (1.0 - abar));
    }
    return (mean_.to(x_t.options()) + abar.sqrt() * result).view(x_t.sizes());
  }

  /// `count` independent draws from N(mu, Sigma), shaped [count, C, H, W], in float64 unless `options` says
  /// else.
  [[nodiscard]] torch::Tensor sample(int64_t count, at::Generator& generator,
                                     torch::TensorOptions options = torch::kFloat64) const {
    auto like = torch::empty({count, mean_.numel()}, options);
    auto z = detail::randn_like(like, generator) * eigenvalues_.to(like.options()).sqrt();
    if (eigenvectors_.defined()) z = z.matmul(eigenvectors_.to(like.options()).t());
    std::vector<int64_t> shape{count};
    shape.insert(shape.end(), image_shape_.begin(), image_shape_.end());
    return (z + mean_.to(like.options())).view(shape);
  }

  /// The prior mean [C, H, W], float64.
  [[nodiscard]] torch::Tensor mean() const { return mean_.view(image_shape_); }
  /// The prior covariance [D, D], float64.
  [[nodiscard]] torch::Tensor covariance() const {
    if (!eigenvectors_.defined()) return torch::diag(eigenvalues_);
    return eigenvectors_.matmul(torch::diag(eigenvalues_)).matmul(eigenvectors_.t());
  }
  [[nodiscard]] const Shape& image_shape() const noexcept { return image_shape_; }
  [[nodiscard]] const DiffusionSchedule& schedule() const noexcept { return schedule_; }

 private:
  static Shape image_shape_of(const torch::Tensor& mean, const char* what) {
    TORCH_CHECK(mean.dim() == 3 || (mean.dim() == 4 && mean.size(0) == 1), "GaussianPrior: ", what,
                " must be [C, H, W] or [1, C, H, W], got ", mean.sizes());
    auto sizes = mean.sizes().vec();
    if (sizes.size() == 4) sizes.erase(sizes.begin());
    return sizes;
  }

  void init_tables() { alphas_cumprod_ = torch::tensor(schedule_.alphas_cumprod(), torch::kFloat64); }

  // (x_t - sqrt(abar) mu) flattened to [B, D], and abar as [B, 1], in x_t's dtype and device.
  [[nodiscard]] std::pair<torch::Tensor, torch::Tensor> centered_input(const torch::Tensor& x_t,
                                                                       const torch::Tensor& t) const {
    TORCH_CHECK(x_t.dim() == 4 && x_t.sizes().slice(1).vec() == image_shape_,
                "GaussianPrior: x_t must be [B, ", image_shape_[0], ", ", image_shape_[1], ", ",
                image_shape_[2], "], got ", x_t.sizes());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x_t.size(0), "GaussianPrior: timesteps must be [", x_t.size(0),
                "], got shape ", t.sizes());
    auto abar = alphas_cumprod_.to(x_t.device())
                    .index_select(0, t.to(x_t.device(), torch::kLong))
                    .to(x_t.scalar_type())
                    .unsqueeze(1);
    auto flat = x_t.reshape({x_t.size(0), -1});
    return {flat - abar.sqrt() * mean_.to(x_t.options()), abar};
  }

  // (abar Sigma + (1 - abar) I)^{-1} applied to each row of `centered`.
  [[nodiscard]] torch::Tensor apply_inverse_marginal_covariance(const torch::Tensor& centered,
                                                                const torch::Tensor& abar) const {
    auto lambda = eigenvalues_.to(centered.options());
    auto inverse_variance = 1.0 / (abar * lambda + (1.0 - abar));
    if (!eigenvectors_.defined()) return centered * inverse_variance;
    auto u = eigenvectors_.to(centered.options());
    return (centered.matmul(u) * inverse_variance).matmul(u.t());
  }

  DiffusionSchedule schedule_;
  Shape image_shape_;
  torch::Tensor mean_;          // [D], float64
  torch::Tensor eigenvalues_;   // [D], float64
  torch::Tensor eigenvectors_;  // [D, D], float64; undefined for independent pixels
  torch::Tensor alphas_cumprod_;
};

static_assert(ScoreModel<GaussianPrior>);

}  // namespace diffpost
