// add_inplace (the residual add) against a double-precision reference: awkward sizes, a strided
// x, x aliasing y, and the errors.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "ops/activation.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

TEST(OpsActivation, AddInplaceMatchesReference) {
  std::mt19937 rng(12);
  for (int64_t rows : {1, 7, 19}) {
    for (int64_t D : {1, 7, 111}) {
      Tensor y = random_tensor({rows, D}, DType::F32, rng, 3.0f);
      // x is a transposed view, so the op must gather it in logical order.
      const Tensor xt = random_tensor({D, rows}, DType::F32, rng, 3.0f);
      const Tensor x = xt.transpose(0, 1);
      const std::vector<float> yv = y.to_vector(), xv = x.to_vector();
      std::vector<double> ref(yv.size());
      for (size_t i = 0; i < ref.size(); ++i) ref[i] = double(yv[i]) + double(xv[i]);
      ops::add_inplace(y, x);
      EXPECT_LE(max_abs_diff(y, ref), 1e-6) << rows << "x" << D;
    }
  }
  Tensor y = random_tensor({3, 5}, DType::F32, rng);
  const std::vector<float> before = y.to_vector();
  ops::add_inplace(y, y);  // x aliasing y doubles it
  std::vector<double> twice(before.begin(), before.end());
  for (double& v : twice) v *= 2;
  EXPECT_EQ(max_abs_diff(y, twice), 0.0);

  EXPECT_THROW(ops::add_inplace(y, Tensor::zeros({5, 3})), Error);
  Tensor yt = y.transpose(0, 1);
  EXPECT_THROW(ops::add_inplace(yt, Tensor::zeros({5, 3})), Error);  // y not contiguous
  Tensor yb = y.to(DType::BF16);
  EXPECT_THROW(ops::add_inplace(yb, Tensor::zeros({3, 5}, DType::BF16)), Error);  // bf16 on a CPU
  Tensor undefined;
  EXPECT_THROW(ops::add_inplace(undefined, y), Error);
}
