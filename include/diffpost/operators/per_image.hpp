// A batch of measurements each made with its own operator: every image of a batch with its own mask, motion
// kernel or random draw, as in any evaluation where masks are drawn per image.
#pragma once

#include <torch/torch.h>
#include <diffpost/concepts.hpp>

#include <cstdint>
#include <utility>
#include <vector>

namespace diffpost {

namespace detail {

/// Applies `f(parts[i], rows of part i)` to the `repeats` consecutive rows of each part of `batch` and
/// concatenates the results; the batch must hold parts.size() x repeats rows. `caller` names the type in the
/// error.
template <class Part, class F>
torch::Tensor apply_per_part(const std::vector<Part>& parts, int64_t repeats, const torch::Tensor& batch,
                             F&& f, const char* caller) {
  const auto expected = static_cast<int64_t>(parts.size()) * repeats;
  TORCH_CHECK(batch.dim() >= 1 && batch.size(0) == expected, caller, ": a batch of ",
              batch.dim() >= 1 ? batch.size(0) : 0, " rows, but its ", parts.size(), " operator(s) apply to ",
              repeats, " row(s) each, ", expected, " in all");
  std::vector<torch::Tensor> results;
  results.reserve(parts.size());
  for (size_t i = 0; i < parts.size(); ++i)
    results.push_back(f(parts[i], batch.narrow(0, static_cast<int64_t>(i) * repeats, repeats)));
  return torch::cat(results, 0);
}

}  // namespace detail

/// The SingularValueDecomposition of a PerImageOperator: each part's own SVD on that part's rows, so that
/// methods working in spectral coordinates (DDRM, and the exact data steps of DiffPIR, DDNM+ and PiGDM) see
/// every image's own mask or kernel.
template <SingularValueDecomposition SVD>
class PerImageSVD {
 public:
  PerImageSVD(std::vector<SVD> parts, int64_t repeats) : parts_(std::move(parts)), repeats_(repeats) {
    TORCH_CHECK(!parts_.empty() && repeats_ >= 1,
                "PerImageSVD needs at least one part and repeats >= 1, got ", parts_.size(),
                " part(s) and repeats ", repeats_);
    std::vector<torch::Tensor> values;
    for (const auto& part : parts_) {
      auto s = part.singular_values();
      std::vector<int64_t> shape(4 - static_cast<size_t>(s.dim()), 1);
      shape.insert(shape.end(), s.sizes().begin(), s.sizes().end());
      s = s.reshape(shape);
      values.push_back(s.expand({repeats_, s.size(1), s.size(2), s.size(3)}));
    }
    singular_values_ = torch::cat(values, 0);
  }

  /// The parts' singular values, one [repeats, ...] block per part: [B, C, H, W].
  [[nodiscard]] const torch::Tensor& singular_values() const noexcept { return singular_values_; }
  [[nodiscard]] torch::Tensor v_transpose(const torch::Tensor& x) const {
    return apply(x, [](const SVD& svd, const torch::Tensor& rows) { return svd.v_transpose(rows); });
  }
  [[nodiscard]] torch::Tensor v(const torch::Tensor& c) const {
    return apply(c, [](const SVD& svd, const torch::Tensor& rows) { return svd.v(rows); });
  }
  [[nodiscard]] torch::Tensor u_transpose(const torch::Tensor& y) const {
    return apply(y, [](const SVD& svd, const torch::Tensor& rows) { return svd.u_transpose(rows); });
  }
  [[nodiscard]] torch::Tensor u(const torch::Tensor& c) const {
    return apply(c, [](const SVD& svd, const torch::Tensor& rows) { return svd.u(rows); });
  }

 private:
  template <class F>
  torch::Tensor apply(const torch::Tensor& batch, F&& f) const {
    return detail::apply_per_part(parts_, repeats_, batch, std::forward<F>(f), "PerImageSVD");
  }

  std::vector<SVD> parts_;
  int64_t repeats_;
  torch::Tensor singular_values_;
};

/// A different operator for every image of a batch, each applied to `repeats` consecutive rows (the
/// posterior samples of one measurement, as PosteriorSampler lays them out): row r uses operator r /
/// repeats. A ForwardOperator, with the naive inverse, adjoint, pseudo-inverse and SVD that `Op` has, so it
/// is a LinearOperator, PseudoInvertibleOperator or DecomposableOperator when `Op` is one. All operators must
/// map images of one shape to measurements of one shape.
template <ForwardOperator Op>
class PerImageOperator {
 public:
  explicit PerImageOperator(std::vector<Op> operators, int64_t repeats = 1)
      : operators_(std::move(operators)), repeats_(repeats) {
    TORCH_CHECK(!operators_.empty(), "PerImageOperator needs at least one operator, got none");
    TORCH_CHECK(repeats_ >= 1, "PerImageOperator: repeats must be >= 1, got ", repeats_);
  }

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    return apply(x, [](const Op& op, const torch::Tensor& rows) { return op.forward(rows); });
  }

  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const requires HasNaiveInverse<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& rows) { return op.naive_inverse(rows); });
  }

  [[nodiscard]] torch::Tensor adjoint(const torch::Tensor& y) const requires HasAdjoint<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& rows) { return op.adjoint(rows); });
  }

  [[nodiscard]] torch::Tensor pseudo_inverse(const torch::Tensor& y) const requires HasPseudoInverse<Op> {
    return apply(y, [](const Op& op, const torch::Tensor& rows) { return op.pseudo_inverse(rows); });
  }

  /// Each operator's SVD for its rows of image batches shaped `image_shape` [B, C, H, W].
  [[nodiscard]] auto svd(const Shape& image_shape, const torch::TensorOptions& options) const requires
      HasSingularValueDecomposition<Op> {
    Shape part_shape = image_shape;
    part_shape.at(0) = repeats_;
    using SVD = decltype(operators_.front().svd(part_shape, options));
    std::vector<SVD> parts;
    parts.reserve(operators_.size());
    for (const auto& op : operators_) parts.push_back(op.svd(part_shape, options));
    return PerImageSVD<SVD>(std::move(parts), repeats_);
  }

  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    return operators_.front().measurement_shape(image_shape);
  }

  /// The operators, one per image.
  [[nodiscard]] const std::vector<Op>& operators() const noexcept { return operators_; }
  /// Rows per operator.
  [[nodiscard]] int64_t repeats() const noexcept { return repeats_; }

  /// The same operators with each applied to `repeats` rows.
  [[nodiscard]] PerImageOperator repeated(int64_t repeats) const {
    return PerImageOperator(operators_, repeats);
  }

 private:
  template <class F>
  torch::Tensor apply(const torch::Tensor& batch, F&& f) const {
    return detail::apply_per_part(operators_, repeats_, batch, std::forward<F>(f), "PerImageOperator");
  }

  std::vector<Op> operators_;
  int64_t repeats_;
};

}  // namespace diffpost
