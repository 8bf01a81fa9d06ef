// PerImageOperator: a batch whose images each have their own operator (mask, kernel), and its SVD.
#include <diffpost/operators.hpp>
#include <diffpost/random.hpp>
#include "support/doctest_with_torch.hpp"

#include <vector>

using namespace diffpost;
using torch::Tensor;

namespace {

/// Two different random masks on 5 x 4 images, each used for `repeats` rows.
PerImageOperator<InpaintingOperator> two_masks(int64_t repeats) {
  auto generator = make_generator(3);
  std::vector<InpaintingOperator> masks{InpaintingOperator(RandomPixelMask{}.fraction(0.5), 5, 4, generator),
                                        InpaintingOperator(RandomPixelMask{}.fraction(0.5), 5, 4, generator)};
  return PerImageOperator<InpaintingOperator>(std::move(masks), repeats);
}

double max_difference(const Tensor& a, const Tensor& b) {
  return (a - b).abs().max().item<double>();
}

}  // namespace

TEST_CASE("each image's rows go through that image's own operator") {
  const auto op = two_masks(2);
  REQUIRE_FALSE(torch::equal(op.operators()[0].mask(), op.operators()[1].mask()));
  const auto x = torch::randn({4, 3, 5, 4}, torch::kFloat64);
  const auto y = op.forward(x);
  for (int64_t row = 0; row < 4; ++row) {
    const auto& own = op.operators()[static_cast<size_t>(row / 2)];
    CHECK(torch::equal(y.narrow(0, row, 1), own.forward(x.narrow(0, row, 1))));
  }
  CHECK(op.measurement_shape({4, 3, 5, 4}) == Shape{4, 3, 5, 4});
  CHECK(
      torch::equal(op.naive_inverse(y).narrow(0, 2, 2), op.operators()[1].naive_inverse(y.narrow(0, 2, 2))));
  // The same operators for one row each.
  CHECK(op.repeated(1).repeats() == 1);
  CHECK(op.repeated(1).forward(x.narrow(0, 0, 2)).sizes() == torch::IntArrayRef{2, 3, 5, 4});
}

TEST_CASE("the adjoint, pseudo-inverse and SVD are each image's own") {
  const auto op = two_masks(1);
  const auto x = torch::randn({2, 1, 5, 4}, torch::kFloat64);
  const auto y = torch::randn({2, 1, 5, 4}, torch::kFloat64);
  // <A x, y> = <x, A^T y>, for the batch as a whole.
  CHECK((op.forward(x) * y).sum().item<double>() ==
        doctest::Approx((x * op.adjoint(y)).sum().item<double>()).epsilon(1e-12));
  // A A^+ A = A.
  CHECK(max_difference(op.forward(op.pseudo_inverse(op.forward(x))), op.forward(x)) < 1e-12);
  // A = U diag(s) V^T and A^T = V diag(s) U^T, with each image's own singular values.
  const auto svd = op.svd({2, 1, 5, 4}, x.options());
  const auto s = svd.singular_values();
  CHECK(s.size(0) == 2);
  CHECK_FALSE(torch::equal(s[0], s[1]));
  CHECK(max_difference(svd.u(s * svd.v_transpose(x)), op.forward(x)) < 1e-12);
  CHECK(max_difference(svd.v(s * svd.u_transpose(y)), op.adjoint(y)) < 1e-12);
  CHECK(max_difference(svd.v(svd.v_transpose(x)), x) < 1e-12);
}

TEST_CASE("a batch of the wrong size, or no operator at all, is an error that says why") {
  const auto op = two_masks(2);
  CHECK_THROWS_WITH_AS(
      op.forward(torch::zeros({3, 1, 5, 4})),
      doctest::Contains("a batch of 3 rows, but its 2 operator(s) apply to 2 row(s) each, 4 in all"),
      c10::Error);
  CHECK_THROWS_WITH_AS(PerImageOperator<IdentityOperator>({}), doctest::Contains("at least one operator"),
                       c10::Error);
  CHECK_THROWS_WITH_AS(PerImageOperator<IdentityOperator>({IdentityOperator{}}, 0),
                       doctest::Contains("repeats must be >= 1, got 0"), c10::Error);
}
