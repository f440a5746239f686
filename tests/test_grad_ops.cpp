// Backward passes of linear, silu_mul, rms_norm, embedding and softmax against central finite
// differences (tests/gradcheck.h), on awkward shapes (1, 3, 7, 19), with poisoned gradient buffers,
// accumulation that must add, and stored weight dtypes (bf16/f16 weights get f32 gradients).
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "gradcheck.h"
#include "ops/activation.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/softmax.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::check_gradients;
using dseek::testing::GradReport;
using dseek::testing::has_non_finite;
using dseek::testing::max_abs_diff;
using dseek::testing::nonzero_tensor;

namespace {

constexpr double kTol = 2e-2;

// a + b elementwise (for checking accumulation).
Tensor add(const Tensor& a, const Tensor& b) {
  std::vector<float> av = a.to_vector(), bv = b.to_vector();
  for (size_t i = 0; i < av.size(); ++i) av[i] += bv[i];
  return Tensor::from_vector(av, a.shape());
}

}  // namespace

TEST(Grad, LinearMatchesFiniteDifferences) {
  std::mt19937 rng(11);
  for (int64_t T : {1, 3, 7, 19}) {  // T ≤ 4 runs the GEMV forward, larger the GEMM one
    for (auto [in, out] : {std::pair<int64_t, int64_t>{1, 3}, {7, 19}, {19, 7}}) {
      Tensor x = nonzero_tensor({T, in}, rng);
      Tensor w = nonzero_tensor({out, in}, rng);
      Tensor b = nonzero_tensor({out}, rng);
      Tensor r = nonzero_tensor({T, out}, rng);
      Tensor dx = Tensor::poisoned(x.shape()), dw = Tensor::poisoned(w.shape()),
             db = Tensor::poisoned(b.shape());
      ops::linear_backward_into(x, w, r, &dx, &dw, &db, /*accumulate=*/false);
      const GradReport rep = check_gradients([&] { return ops::linear(x, w, &b); }, r,
                                             {{"x", x, dx}, {"w", w, dw}, {"b", b, db}});
      EXPECT_LE(rep.worst, kTol) << "T=" << T << " in=" << in << " out=" << out << " " << rep.where;

      // The returning form gives the same; accumulation adds to what is there.
      const ops::LinearGrads g = ops::linear_backward(x, w, r, /*with_bias=*/true);
      EXPECT_EQ(max_abs_diff(g.dx, dx), 0.0);
      EXPECT_EQ(max_abs_diff(g.dweight, dw), 0.0);
      EXPECT_EQ(max_abs_diff(g.dbias, db), 0.0);
      Tensor ax = nonzero_tensor(x.shape(), rng), aw = nonzero_tensor(w.shape(), rng),
             ab = nonzero_tensor(b.shape(), rng);
      const Tensor ex = add(ax, dx), ew = add(aw, dw), eb = add(ab, db);
      ops::linear_backward_into(x, w, r, &ax, &aw, &ab, /*accumulate=*/true);
      EXPECT_LE(max_abs_diff(ax, ex), 1e-5);
      EXPECT_LE(max_abs_diff(aw, ew), 1e-5);
      EXPECT_LE(max_abs_diff(ab, eb), 1e-5);
    }
  }
}

TEST(Grad, LinearStoredWeightDtypesAndSkippedGradients) {
  std::mt19937 rng(12);
  // in = 16411 makes the bf16/f16 dx path convert W in several row blocks (64 rows each).
  for (auto [T, in, out] : {std::tuple<int64_t, int64_t, int64_t>{3, 19, 7}, {5, 16411, 70}}) {
    Tensor x = nonzero_tensor({T, in}, rng);
    Tensor r = nonzero_tensor({T, out}, rng);
    for (DType dt : {DType::BF16, DType::F16}) {
      Tensor w = nonzero_tensor({out, in}, rng).to(dt);
      const ops::LinearGrads ref = ops::linear_backward(x, w.to_f32(), r);
      const ops::LinearGrads g = ops::linear_backward(x, w, r);
      EXPECT_EQ(g.dweight.dtype(), DType::F32);
      EXPECT_LE(max_abs_diff(g.dx, ref.dx), 1e-4) << dtype_name(dt) << " in=" << in;
      EXPECT_LE(max_abs_diff(g.dweight, ref.dweight), 1e-5) << dtype_name(dt);
      EXPECT_FALSE(g.dbias.defined());
    }
  }
  // A strided weight (rows of a wider matrix) and leading batch dimensions; null skips a gradient.
  Tensor wide = nonzero_tensor({7, 30}, rng);
  Tensor w = wide.slice(1, 4, 23);
  Tensor x = nonzero_tensor({2, 3, 19}, rng);
  Tensor r = nonzero_tensor({2, 3, 7}, rng);
  Tensor dx = Tensor::poisoned(x.shape());
  ops::linear_backward_into(x, w, r, &dx, nullptr, nullptr, false);
  const ops::LinearGrads ref =
      ops::linear_backward(x.reshape({6, 19}), w.contiguous(), r.reshape({6, 7}));
  EXPECT_LE(max_abs_diff(dx.reshape({6, 19}), ref.dx), 1e-6);
  EXPECT_THROW(ops::linear_backward(x, w, nonzero_tensor({2, 3, 6}, rng)), Error);
  Tensor bad = Tensor::poisoned({19, 7});
  EXPECT_THROW(ops::linear_backward_into(x, w, r, nullptr, &bad, nullptr, false), Error);
  // dW into bf16 (train::ParamSet::bf16_matrix_grads): the f32 dW rounded once, from the old
  // value when accumulating; an f16 dW is an error.
  const Tensor start = nonzero_tensor({7, 19}, rng).to(DType::BF16);
  for (bool accumulate : {false, true}) {
    Tensor dw32 = accumulate ? start.to(DType::F32) : Tensor::poisoned({7, 19});
    Tensor dw16 = accumulate ? start.clone() : Tensor::poisoned({7, 19}, DType::BF16);
    ops::linear_backward_into(x, w, r, nullptr, &dw32, nullptr, accumulate);
    ops::linear_backward_into(x, w, r, nullptr, &dw16, nullptr, accumulate);
    EXPECT_EQ(dw16.to(DType::F32).to_vector(), dw32.to(DType::BF16).to(DType::F32).to_vector())
        << (accumulate ? "accumulated" : "overwritten");
  }
  Tensor f16 = Tensor::zeros({7, 19}, DType::F16);
  EXPECT_THROW(ops::linear_backward_into(x, w, r, nullptr, &f16, nullptr, false), Error);
}

TEST(Grad, SiluMulMatchesFiniteDifferences) {
  std::mt19937 rng(13);
  for (int64_t n : {1, 3, 7, 19}) {
    Tensor g = nonzero_tensor({n, 3}, rng, 4.0f);
    Tensor u = nonzero_tensor({n, 3}, rng, 2.0f);
    Tensor r = nonzero_tensor({n, 3}, rng);
    const ops::SiluMulGrads grads = ops::silu_mul_backward(g, u, r);
    const GradReport rep =
        check_gradients([&] { return ops::silu_mul(g, u); }, r,
                        {{"gate", g, grads.dgate}, {"up", u, grads.dup}}, 1e-2f, 64);
    EXPECT_LE(rep.worst, kTol) << "n=" << n << " " << rep.where;
  }
  EXPECT_THROW(ops::silu_mul_backward(nonzero_tensor({3}, rng), nonzero_tensor({3}, rng),
                                      nonzero_tensor({4}, rng)),
               Error);
}

TEST(Grad, RmsNormMatchesFiniteDifferences) {
  std::mt19937 rng(14);
  for (int64_t T : {1, 3, 7}) {
    for (int64_t D : {1, 7, 19}) {
      Tensor x = nonzero_tensor({T, D}, rng, 2.0f);
      Tensor w = nonzero_tensor({D}, rng);
      Tensor r = nonzero_tensor({T, D}, rng);
      // D = 1 makes y ≈ w·sign(x) with gradients ~eps: a larger eps keeps them measurable.
      const double eps = D == 1 ? 0.5 : 1e-6;
      Tensor dx = Tensor::poisoned(x.shape()), dw = Tensor::poisoned(w.shape());
      ops::rms_norm_backward_into(x, w, eps, r, dx, &dw, /*accumulate_dweight=*/false);
      const GradReport rep = check_gradients([&] { return ops::rms_norm(x, w, eps); }, r,
                                             {{"x", x, dx}, {"w", w, dw}}, 3e-3f);
      EXPECT_LE(rep.worst, kTol) << "T=" << T << " D=" << D << " " << rep.where;
      Tensor acc = nonzero_tensor(w.shape(), rng);
      const Tensor expect = add(acc, dw);
      Tensor dx2 = Tensor::poisoned(x.shape());
      ops::rms_norm_backward_into(x, w, eps, r, dx2, &acc, /*accumulate_dweight=*/true);
      EXPECT_LE(max_abs_diff(acc, expect), 1e-5);
      EXPECT_EQ(max_abs_diff(dx2, dx), 0.0);
    }
  }
  // A bf16 weight gives the gradients of its f32 value; a strided input those of its copy.
  Tensor big = nonzero_tensor({5, 40}, rng);
  Tensor x = big.slice(1, 3, 22);
  Tensor w = nonzero_tensor({19}, rng).to(DType::BF16);
  Tensor r = nonzero_tensor({5, 19}, rng);
  const ops::RmsNormGrads a = ops::rms_norm_backward(x, w, 1e-5, r);
  const ops::RmsNormGrads b = ops::rms_norm_backward(x.contiguous(), w.to_f32(), 1e-5, r);
  EXPECT_EQ(max_abs_diff(a.dx, b.dx), 0.0);
  EXPECT_EQ(max_abs_diff(a.dweight, b.dweight), 0.0);
  EXPECT_THROW(ops::rms_norm_backward(x, w, 1e-5, nonzero_tensor({5, 18}, rng)), Error);
}

TEST(Grad, EmbeddingScatterAddsRepeatedIds) {
  std::mt19937 rng(15);
  for (int64_t D : {1, 3, 19}) {
    Tensor table = nonzero_tensor({7, D}, rng);
    const std::vector<int32_t> ids = {3, 0, 3, 6, 3, 1};  // 3 repeats; 2, 4, 5 never looked up
    Tensor r = nonzero_tensor({int64_t(ids.size()), D}, rng);
    const Tensor dt = ops::embedding_backward(ids, r, 7);
    const GradReport rep = check_gradients([&] { return ops::embedding(table, ids); }, r,
                                           {{"table", table, dt}}, 1e-2f, 1000);
    EXPECT_LE(rep.worst, 1e-4) << "D=" << D << " " << rep.where;
    // Accumulation adds to the existing rows.
    Tensor acc = nonzero_tensor({7, D}, rng);
    const Tensor expect = add(acc, dt);
    ops::embedding_backward_accumulate(ids, r, acc);
    EXPECT_LE(max_abs_diff(acc, expect), 1e-6);
  }
  Tensor r = nonzero_tensor({2, 3}, rng);
  EXPECT_THROW(ops::embedding_backward({0, 7}, r, 7), Error);
  EXPECT_THROW(ops::embedding_backward({0}, r, 7), Error);
}

TEST(Grad, SoftmaxMatchesFiniteDifferences) {
  std::mt19937 rng(16);
  for (int64_t T : {1, 3, 7}) {
    for (int64_t n : {1, 3, 19}) {
      Tensor x = nonzero_tensor({T, n}, rng, 3.0f);
      Tensor r = nonzero_tensor({T, n}, rng);
      const Tensor dx = ops::softmax_backward(ops::softmax(x), r);
      EXPECT_FALSE(has_non_finite(dx));
      const GradReport rep =
          check_gradients([&] { return ops::softmax(x); }, r, {{"x", x, dx}}, 1e-2f, 64);
      EXPECT_LE(rep.worst, kTol) << "T=" << T << " n=" << n << " " << rep.where;
    }
  }
  EXPECT_THROW(ops::softmax_backward(nonzero_tensor({2, 3}, rng), nonzero_tensor({3, 2}, rng)),
               Error);
}
