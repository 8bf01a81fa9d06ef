// Kernel Inception Distance (Binkowski, Sutherland, Arbel & Gretton, "Demystifying MMD GANs", ICLR 2018): the
// unbiased estimate of the squared maximum mean discrepancy between two feature sets under the cubic
// polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets, as torch-fidelity computes it
// (toshas/torch-fidelity, metric_kid.py: 100 subsets of 1000, mean and standard deviation over subsets).
// Unlike the Frechet distance its expectation does not depend on the number of samples, which makes it the
// better figure for the 100-image test sets of restoration papers (docs/metrics.md).
#pragma once

#include <torch/torch.h>

#include <diffpost/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace diffpost {

/// Parameters of `kernel_inception_distance`; the defaults are torch-fidelity's (`kid_subsets` 100,
/// `kid_subset_size` 1000, `kid_degree` 3, `kid_gamma` None = 1/D, `kid_coef0` 1, `rng_seed` 2020).
struct KidOptions {
  TORCH_ARG(int64_t, subsets) = 100;       ///< number of random subsets averaged
  TORCH_ARG(int64_t, subset_size) = 1000;  ///< samples per subset from each set (capped at the smaller set)
  TORCH_ARG(uint64_t, seed) = 2020;        ///< seed of the CPU generator that draws the subsets
  TORCH_ARG(int64_t, degree) = 3;          ///< kernel degree
  TORCH_ARG(double, gamma) = 0.0;          ///< kernel scale; 0 means 1 / D
  TORCH_ARG(double, coef0) = 1.0;          ///< kernel offset
};

/// The result of `kernel_inception_distance`.
struct KidResult {
  double mean = 0.0;        ///< mean of the per-subset MMD^2 estimates (the KID)
  double std = 0.0;         ///< their standard deviation (numpy's np.std, divided by the number of subsets)
  int64_t subset_size = 0;  ///< samples per subset actually used
  int64_t subsets = 0;      ///< number of subsets
};

namespace detail {

/// The polynomial kernel matrix (gamma x y^T + coef0)^degree of rows `x` [N, D] and `y` [M, D], float64.
inline torch::Tensor polynomial_kernel(const torch::Tensor& x, const torch::Tensor& y, int64_t degree,
                                       double gamma, double coef0) {
  return (x.matmul(y.t()) * gamma + coef0).pow(degree);
}

/// The unbiased MMD^2 from the three kernel matrices of sets of sizes m and n (Gretton et al. 2012, eq. 3):
///   sum_{i != j} k(a_i, a_j) / (m(m-1)) + sum_{i != j} k(b_i, b_j) / (n(n-1)) - 2 sum_{i,j} k(a_i, b_j) /
///   (mn).
inline double unbiased_mmd2(const torch::Tensor& k_aa, const torch::Tensor& k_bb, const torch::Tensor& k_ab) {
  const auto m = static_cast<double>(k_aa.size(0));
  const auto n = static_cast<double>(k_bb.size(0));
  const double within_a = (k_aa.sum() - k_aa.diagonal().sum()).item<double>() / (m * (m - 1.0));
  const double within_b = (k_bb.sum() - k_bb.diagonal().sum()).item<double>() / (n * (n - 1.0));
  const double across = k_ab.sum().item<double>() / (m * n);
  return within_a + within_b - 2.0 * across;
}

/// Checks a feature set [N >= 2, D >= 1] of finite real values and returns it on the CPU in float64.
inline torch::Tensor kid_features(const torch::Tensor& features, const char* name) {
  TORCH_CHECK(features.defined() && features.dim() == 2, "kernel_inception_distance: expected ", name,
              " [N, D] (one feature vector per row), got ",
              features.defined() ? c10::str("shape ", features.sizes()) : std::string("an undefined tensor"));
  TORCH_CHECK(features.size(0) >= 2 && features.size(1) >= 1, "kernel_inception_distance: ", name,
              " of shape ", features.sizes(), " need at least 2 samples of dimension >= 1");
  TORCH_CHECK(!at::isComplexType(features.scalar_type()) && features.scalar_type() != torch::kBool,
              "kernel_inception_distance: expected real-valued ", name, ", got ", features.scalar_type());
  auto values = features.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  TORCH_CHECK(torch::isfinite(values).all().item<bool>(), "kernel_inception_distance: ", name, " of shape ",
              features.sizes(), " contain NaN or infinite values");
  return values;
}

}  // namespace detail

/// The unbiased MMD^2 between the feature sets `features_a` [N, D] and `features_b` [M, D] (N, M >= 2) under
/// the polynomial kernel k(x, y) = (gamma x.y + coef0)^degree (gamma 0 means 1 / D): one KID subset term,
/// computed in float64 on the CPU. It is 0 in expectation when both sets come from one distribution, so a
/// single value can be slightly negative.
inline double polynomial_mmd2_unbiased(const torch::Tensor& features_a, const torch::Tensor& features_b,
                                       int64_t degree = 3, double gamma = 0.0, double coef0 = 1.0) {
  const auto a = detail::kid_features(features_a, "features_a");
  const auto b = detail::kid_features(features_b, "features_b");
  TORCH_CHECK(a.size(1) == b.size(1), "polynomial_mmd2_unbiased: feature dimensions differ: shapes ",
              features_a.sizes(), " and ", features_b.sizes());
  TORCH_CHECK(degree >= 1, "polynomial_mmd2_unbiased: degree must be >= 1, got ", degree);
  const double scale = gamma > 0.0 ? gamma : 1.0 / static_cast<double>(a.size(1));
  return detail::unbiased_mmd2(detail::polynomial_kernel(a, a, degree, scale, coef0),
                               detail::polynomial_kernel(b, b, degree, scale, coef0),
                               detail::polynomial_kernel(a, b, degree, scale, coef0));
}

/// Kernel Inception Distance between the feature sets `features_a` [N, D] and `features_b` [M, D] (any device
/// and real dtype; computed on the CPU in float64): `options.subsets()` times, draw m = min(subset_size, N,
/// M) rows of each set without replacement (a CPU generator seeded with `options.seed()`, so the result is
/// reproducible) and compute polynomial_mmd2_unbiased of the two subsets; return the mean and the standard
/// deviation of those estimates. With m = N = M every subset is the whole set, so the standard deviation is
/// 0. torch-fidelity draws its subsets with numpy's generator, so its figures differ from these by the
/// subset sampling only (its standard deviation says by how much). Throws c10::Error naming the shapes or
/// the option that does not fit.
inline KidResult kernel_inception_distance(const torch::Tensor& features_a, const torch::Tensor& features_b,
                                           const KidOptions& options = {}) {
  const auto a = detail::kid_features(features_a, "features_a");
  const auto b = detail::kid_features(features_b, "features_b");
  TORCH_CHECK(a.size(1) == b.size(1), "kernel_inception_distance: feature dimensions differ: shapes ",
              features_a.sizes(), " and ", features_b.sizes(), "; both sets must come from the same network");
  TORCH_CHECK(options.subsets() >= 1, "kernel_inception_distance: subsets must be >= 1, got ",
              options.subsets());
  TORCH_CHECK(options.subset_size() >= 2, "kernel_inception_distance: subset_size must be >= 2, got ",
              options.subset_size());
  TORCH_CHECK(options.degree() >= 1, "kernel_inception_distance: degree must be >= 1, got ",
              options.degree());
  const int64_t n = a.size(0), m_total = b.size(0);
  const int64_t m = std::min({options.subset_size(), n, m_total});
  const double gamma = options.gamma() > 0.0 ? options.gamma() : 1.0 / static_cast<double>(a.size(1));

  // Up to 4096 samples a side, the kernel matrices of the whole sets (at most 128 MiB each) are computed once
  // and each subset reads its block; beyond, each subset computes its own.
  constexpr int64_t kWholeKernelLimit = 4096;
  const bool whole = n <= kWholeKernelLimit && m_total <= kWholeKernelLimit;
  torch::Tensor k_aa, k_bb, k_ab;
  if (whole) {
    k_aa = detail::polynomial_kernel(a, a, options.degree(), gamma, options.coef0());
    k_bb = detail::polynomial_kernel(b, b, options.degree(), gamma, options.coef0());
    k_ab = detail::polynomial_kernel(a, b, options.degree(), gamma, options.coef0());
  }
  auto generator = make_generator(options.seed());
  const auto index_options = torch::TensorOptions().dtype(torch::kLong);
  std::vector<double> estimates;
  estimates.reserve(static_cast<size_t>(options.subsets()));
  for (int64_t s = 0; s < options.subsets(); ++s) {
    const auto ia = torch::randperm(n, generator, index_options).narrow(0, 0, m);
    const auto ib = torch::randperm(m_total, generator, index_options).narrow(0, 0, m);
    if (whole) {
      estimates.push_back(detail::unbiased_mmd2(k_aa.index_select(0, ia).index_select(1, ia),
                                                k_bb.index_select(0, ib).index_select(1, ib),
                                                k_ab.index_select(0, ia).index_select(1, ib)));
    } else {
      const auto sa = a.index_select(0, ia), sb = b.index_select(0, ib);
      estimates.push_back(
          detail::unbiased_mmd2(detail::polynomial_kernel(sa, sa, options.degree(), gamma, options.coef0()),
                                detail::polynomial_kernel(sb, sb, options.degree(), gamma, options.coef0()),
                                detail::polynomial_kernel(sa, sb, options.degree(), gamma, options.coef0())));
    }
  }
  KidResult result;
  result.subset_size = m;
  result.subsets = options.subsets();
  double sum = 0.0;
  for (const double e : estimates) sum += e;
  result.mean = sum / static_cast<double>(estimates.size());
  double squares = 0.0;
  for (const double e : estimates) squares += (e - result.mean) * (e - result.mean);
  result.std = std::sqrt(squares / static_cast<double>(estimates.size()));
  return result;
}

}  // namespace diffpost
