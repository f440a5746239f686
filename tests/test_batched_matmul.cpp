// batched_matmul on the CPU (ops/batched_matmul.h) against a plain loop over the same strided
// views, for every unit-stride layout, broadcast operands and extent-1 dims; and its errors.
#include <gtest/gtest.h>

#include <random>

#include "batched_matmul_cases.h"
#include "core/error.h"
#include "ops/batched_matmul.h"

using namespace dseek;
using dseek::test::layout;
using dseek::test::ViewCase;

namespace {

Tensor uniform(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return Tensor::from_vector(v, {n});
}

}  // namespace

TEST(BatchedMatmul, StridedViewsMatchPlainLoops) {
  std::mt19937 rng(21);
  for (const ViewCase& v : test::view_cases()) {
    int64_t na = 0, nb = 0, nc = 0;
    const ops::MatrixStrides sa = layout(v.a, v.batch, v.m, v.k, v.a_shared, &na);
    const ops::MatrixStrides sb = layout(v.b, v.batch, v.n, v.k, v.b_shared, &nb);
    const ops::MatrixStrides sc = layout(v.c, v.batch, v.m, v.n, false, &nc);
    const Tensor a = uniform(na, rng), b = uniform(nb, rng);
    const Tensor want = test::reference(v, a, sa, b, sb, sc, nc);
    const Tensor c = Tensor::poisoned({nc}, DType::F32, Device::CPU);
    ops::batched_matmul(a, sa, b, sb, c, sc, v.batch, v.m, v.n, v.k);
    const std::vector<float> got = c.to_vector(), ref = want.to_vector();
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      worst = std::isfinite(got[i]) ? std::max(worst, double(std::abs(got[i] - ref[i]))) : INFINITY;
    EXPECT_LT(worst, 1e-5 * double(v.k)) << v.batch << "x" << v.m << "x" << v.n << "x" << v.k;
  }
}

TEST(BatchedMatmul, BadViewsAreErrors) {
  std::mt19937 rng(22);
  const Tensor a = uniform(24, rng), b = uniform(24, rng), c = Tensor::zeros({16});
  // A correct call: batch 1, [4, 6] · [4, 6]ᵀ.
  ops::batched_matmul(a, {0, 6, 1}, b, {0, 6, 1}, c, {0, 4, 1}, 1, 4, 4, 6);
  auto error = [&](ops::MatrixStrides sa, ops::MatrixStrides sc, int64_t m, int64_t n) {
    try {
      ops::batched_matmul(a, sa, b, {0, 6, 1}, c, sc, 1, m, n, 6);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error({0, 6, 2}, {0, 4, 1}, 4, 4).find("a strides"), std::string::npos);  // no unit
  EXPECT_NE(error({0, 7, 1}, {0, 4, 1}, 4, 4).find("inside a"), std::string::npos);   // past end
  EXPECT_NE(error({0, 6, 1}, {0, 2, 1}, 4, 4).find("covering c"), std::string::npos);  // overlap
  EXPECT_NE(error({0, 6, 1}, {0, 4, 1}, 4, 3).find("c has 16"), std::string::npos);  // size
}
