// Singular value decompositions that factor over the axes of an image batch, the form the SVD of every
// decomposable diffpost operator takes: masks (diagonal), colorization (channels), super-resolution and
// separable blur (rows and columns).
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <optional>

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>

namespace diffpost {

/// A = U diag(s) V^T where U and V are Kronecker products of one orthogonal matrix per axis (channels, rows,
/// columns) of an image batch [B, C, H, W], times an optional diagonal sign on the measurement side.
///
/// Built from one matrix per axis, R_c [Cm, C], R_h [Hm, H], R_w [Wm, W] (any of them may be the identity),
/// of an operator that applies them axis by axis (A = R_c (x) R_h (x) R_w, a Kronecker product): each R = U_d
/// diag(s_d) V_d^T (thin on the measurement side, full on the image side), so that V^T x applies V_d^T along
/// every axis and the singular values are the outer product of the s_d, zero beyond the first Cm x Hm x Wm
/// components. Or built from a diagonal weight map (inpainting): V = I, s = |m|, U = diag(+-1) with the signs
/// of m. Spectral coordinates have the image batch's shape; measurement batches [B, Cm, Hm, Wm] enter and
/// leave them zero-padded to it. Satisfies SingularValueDecomposition.
class SeparableSVD {
 public:
  /// The SVD of the operator applying `factors[d]` ([m_d, n_d], float64, m_d <= n_d; undefined = identity)
  /// along axis d = channels, rows, columns of images [C, H, W] = `image_shape` (or [B, C, H, W]), with its
  /// tensors in `options`' dtype and device. The 1-D SVDs run once here, in float64 on the CPU.
  static SeparableSVD from_factors(const std::array<torch::Tensor, 3>& factors, const Shape& image_shape,
                                   const torch::TensorOptions& options) {
    SeparableSVD svd;
    const auto extents = image_extents(image_shape);
    auto singular = torch::ones({1, 1, 1, 1}, torch::kFloat64);
    for (size_t d = 0; d < 3; ++d) {
      auto& axis = svd.axes_[d];
      axis.image_length = extents[d];
      axis.measurement_length = extents[d];
      if (!factors[d].defined()) continue;
      const auto matrix = factors[d].detach().to(torch::kCPU, torch::kFloat64);
      TORCH_CHECK(matrix.dim() == 2 && matrix.size(1) == extents[d] && matrix.size(0) <= extents[d],
                  "SeparableSVD: the factor of axis ", d + 1, " must be [m, ", extents[d],
                  "] with m <= ", extents[d], ", got ", matrix.sizes());
      auto [u, s, vh] = at::linalg_svd(matrix, /*full_matrices=*/true);
      axis.measurement_length = matrix.size(0);
      axis.u = u.to(options);
      axis.v_transpose = vh.to(options);
      // Singular values along this axis, zero on the components beyond the measurement, shaped for axis d.
      std::vector<int64_t> shape{1, 1, 1, 1};
      shape[d + 1] = extents[d];
      singular = singular * torch::constant_pad_nd(s, {0, extents[d] - s.size(0)}, 0.0).view(shape);
    }
    svd.singular_values_ = singular.to(options);
    return svd;
  }

  /// The SVD of the diagonal operator y = m . x with weights `weights` ([H, W] or anything broadcastable
  /// against the image batch): V = I, s = |m|, U = diag(-1 where m < 0, else 1).
  static SeparableSVD diagonal(const torch::Tensor& weights, const Shape& image_shape,
                               const torch::TensorOptions& options) {
    SeparableSVD svd;
    const auto extents = image_extents(image_shape);
    for (size_t d = 0; d < 3; ++d) {
      svd.axes_[d].image_length = extents[d];
      svd.axes_[d].measurement_length = extents[d];
    }
    const auto m = weights.detach().to(options);
    svd.singular_values_ = m.abs();
    svd.signs_ =
        torch::where(m < 0, -torch::ones_like(m), torch::ones_like(m));  // orthogonal, also where m = 0
    return svd;
  }

  /// s, broadcastable against the image batch; zero on unmeasured components.
  [[nodiscard]] const torch::Tensor& singular_values() const noexcept { return singular_values_; }

  /// V^T x: image batch [B, C, H, W] -> spectral coordinates of the same shape.
  [[nodiscard]] torch::Tensor v_transpose(const torch::Tensor& x) const {
    auto c = x;
    for (size_t d = 0; d < 3; ++d) c = along(axes_[d].v_transpose, c, d);
    return c;
  }

  /// V c: spectral coordinates -> image batch.
  [[nodiscard]] torch::Tensor v(const torch::Tensor& c) const {
    auto x = c;
    for (size_t d = 0; d < 3; ++d) {
      if (axes_[d].v_transpose.defined()) x = along(axes_[d].v_transpose.t(), x, d);
    }
    return x;
  }

  /// U^T y: measurement batch [B, Cm, Hm, Wm] -> spectral coordinates [B, C, H, W], zero beyond the
  /// measurement.
  [[nodiscard]] torch::Tensor u_transpose(const torch::Tensor& y) const {
    auto c = signs_.defined() ? y * signs_ : y;
    for (size_t d = 0; d < 3; ++d) {
      if (axes_[d].u.defined()) c = along(axes_[d].u.t(), c, d);
    }
    return torch::constant_pad_nd(c, padding(), 0.0);
  }

  /// U c: spectral coordinates [B, C, H, W] -> measurement batch [B, Cm, Hm, Wm]; components beyond the
  /// measurement are dropped.
  [[nodiscard]] torch::Tensor u(const torch::Tensor& c) const {
    auto y = c.slice(1, 0, axes_[0].measurement_length)
                 .slice(2, 0, axes_[1].measurement_length)
                 .slice(3, 0, axes_[2].measurement_length);
    for (size_t d = 0; d < 3; ++d) y = along(axes_[d].u, y, d);
    return signs_.defined() ? y * signs_ : y;
  }

 private:
  struct Axis {
    torch::Tensor v_transpose;  ///< [n, n]; undefined = identity
    torch::Tensor u;            ///< [m, m]; undefined = identity
    int64_t image_length = 0;
    int64_t measurement_length = 0;
  };

  static std::array<int64_t, 3> image_extents(const Shape& image_shape) {
    TORCH_CHECK(image_shape.size() == 3 || image_shape.size() == 4,
                "SeparableSVD: expected an image shape [C, H, W] or [B, C, H, W], got ",
                c10::IntArrayRef(image_shape));
    const size_t first = image_shape.size() - 3;
    return {image_shape[first], image_shape[first + 1], image_shape[first + 2]};
  }

  /// `matrix` applied along axis d (0 = channels, 1 = rows, 2 = columns) of a [B, C, H, W] batch.
  static torch::Tensor along(const torch::Tensor& matrix, const torch::Tensor& x, size_t d) {
    if (!matrix.defined()) return x;
    switch (d) {
      case 0:
        return torch::einsum("ij,bjhw->bihw", {matrix, x});
      case 1:
        return torch::matmul(matrix, x);
      default:
        return torch::matmul(x, matrix.t());
    }
  }

  /// constant_pad_nd padding from the measurement extents to the image extents (last dimension first).
  [[nodiscard]] std::vector<int64_t> padding() const {
    return {0, axes_[2].image_length - axes_[2].measurement_length,
            0, axes_[1].image_length - axes_[1].measurement_length,
            0, axes_[0].image_length - axes_[0].measurement_length};
  }

  std::array<Axis, 3> axes_;
  torch::Tensor singular_values_;
  torch::Tensor signs_;  ///< measurement-side signs of a diagonal operator; undefined = +1
};

static_assert(SingularValueDecomposition<SeparableSVD>);

namespace detail {

/// The SVDs an operator has built, one per image size, device and dtype, shared by its copies.
using SVDCache = std::shared_ptr<ConstantCache<SeparableSVD>>;

/// A new, empty SVD cache.
inline SVDCache make_svd_cache() {
  return std::make_shared<ConstantCache<SeparableSVD>>();
}

/// The cache key of an operator's SVD for image batches of `image_shape` ([C, H, W] or [B, C, H, W]; the
/// batch size does not change the decomposition) in `options`' device and dtype.
inline ConstantKey svd_key(const Shape& image_shape, const torch::TensorOptions& options) {
  const auto first = image_shape.size() > 3 ? image_shape.end() - 3 : image_shape.begin();
  return {"svd", Shape(first, image_shape.end()), options};
}

}  // namespace detail

}  // namespace diffpost
