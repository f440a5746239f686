// linear and silu_mul against naive double-precision references, on awkward shapes, every weight
// dtype, both the GEMV (decode) and the sgemm (prefill) paths.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/swiglu.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

namespace {

// Reference on the weight as stored (rounded to its dtype), accumulated in double.
std::vector<double> linear_ref(const Tensor& x, const Tensor& w, const Tensor* b) {
  const std::vector<float> xv = x.to_vector(), wv = w.to_vector();
  const int64_t in = w.size(1), out = w.size(0), T = x.numel() / in;
  std::vector<double> y(size_t(T * out));
  std::vector<float> bv = b ? b->to_vector() : std::vector<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? bv[size_t(o)] : 0.0;
      for (int64_t i = 0; i < in; ++i)
        acc += double(xv[size_t(t * in + i)]) * wv[size_t(o * in + i)];
      y[size_t(t * out + o)] = acc;
    }
  return y;
}

}  // namespace

TEST(OpsLinear, MatchesReferenceAllDtypesAndPaths) {
  std::mt19937 rng(7);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t T : {1, 2, 3, 4, 5, 7, 19}) {
      for (auto [in, out] :
           {std::pair<int64_t, int64_t>{1, 1}, {7, 19}, {19, 7}, {111, 33}, {64, 130}}) {
        Tensor x = random_tensor({T, in}, DType::F32, rng);
        Tensor w = random_tensor({out, in}, dt, rng);
        Tensor b = random_tensor({out}, DType::BF16, rng);
        for (const Tensor* bias : std::vector<const Tensor*>{nullptr, &b}) {
          Tensor y = ops::linear(x, w, bias);
          ASSERT_EQ(y.shape(), (Shape{T, out}));
          double err = max_abs_diff(y, linear_ref(x, w, bias));
          EXPECT_LE(err, 1e-5 * std::sqrt(double(in)) + 1e-6)
              << dtype_name(dt) << " T=" << T << " in=" << in << " out=" << out;
        }
      }
    }
  }
}

TEST(OpsLinear, StridedWeightRowsAndLeadingDims) {
  std::mt19937 rng(3);
  Tensor full = random_tensor({40, 37}, DType::BF16, rng);
  Tensor w = full.slice(0, 5, 29);   // contiguous rows
  Tensor w2 = full.slice(1, 3, 30);  // rows of stride 37, 27 columns
  Tensor x = random_tensor({2, 3, 27}, DType::F32, rng);
  for (int64_t T : {1, 6}) {
    Tensor xs = x.reshape({6, 27}).slice(0, 0, T);
    Tensor y = ops::linear(xs, w2);
    EXPECT_LE(max_abs_diff(y, linear_ref(xs, w2.contiguous(), nullptr)), 1e-5);
  }
  Tensor y3 = ops::linear(x, w2);
  EXPECT_EQ(y3.shape(), (Shape{2, 3, 40}));
  EXPECT_LE(max_abs_diff(y3, linear_ref(x, w2.contiguous(), nullptr)), 1e-5);
  Tensor xw = random_tensor({1, 37}, DType::F32, rng);
  EXPECT_LE(max_abs_diff(ops::linear(xw, w), linear_ref(xw, w.contiguous(), nullptr)), 1e-5);
}

TEST(OpsLinear, RejectsBadInput) {
  std::mt19937 rng(1);
  Tensor x = random_tensor({2, 8}, DType::F32, rng);
  EXPECT_THROW(ops::linear(x, random_tensor({3, 9}, DType::F32, rng)), Error);
  EXPECT_THROW(ops::linear(x.to(DType::BF16), random_tensor({3, 8}, DType::F32, rng)), Error);
  EXPECT_THROW(ops::linear(x, random_tensor({3, 8}, DType::F32, rng).to(DType::I32)), Error);
  Tensor bad_bias = random_tensor({4}, DType::F32, rng);
  EXPECT_THROW(ops::linear(x, random_tensor({3, 8}, DType::F32, rng), &bad_bias), Error);
  try {
    ops::linear(x, random_tensor({3, 9}, DType::F32, rng));
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[linear]", 0), 0u) << e.what();
  }
}

// A router's logits: bf16 activations widened to f32 before the product, with an f32 or a bf16
// weight; the same bits as widening first, and f32 out. Bad shapes name the op.
TEST(OpsLinear, WidenedEqualsLinearOfWidenedInput) {
  std::mt19937 rng(12);
  const Tensor x = random_tensor({3, 40}, DType::F32, rng).to(DType::BF16);
  for (DType wt : {DType::F32, DType::BF16}) {
    const Tensor w = random_tensor({6, 40}, wt, rng);
    const Tensor got = ops::linear_widened(x, w);
    EXPECT_EQ(got.dtype(), DType::F32);
    EXPECT_EQ(got.to_vector(), ops::linear(x.to(DType::F32), w).to_vector());
  }
  EXPECT_THROW(ops::linear_widened(x, random_tensor({6, 41}, DType::F32, rng)), Error);
}

// linear_swiglu on the CPU is silu_mul of gu's halves, then linear: the same bits; a gate_up of
// the wrong width names the op.
TEST(OpsLinear, SwigluEqualsSiluMulThenLinear) {
  std::mt19937 rng(13);
  const Tensor gu = random_tensor({3, 2 * 24}, DType::F32, rng, 3.0f);
  const Tensor w = random_tensor({5, 24}, DType::F32, rng), b = random_tensor({5}, DType::F32, rng);
  const Tensor h = ops::silu_mul(gu.slice(1, 0, 24), gu.slice(1, 24, 48));
  EXPECT_EQ(ops::linear_swiglu(gu, w, &b).to_vector(), ops::linear(h, w, &b).to_vector());
  try {
    ops::linear_swiglu(random_tensor({3, 47}, DType::F32, rng), w);
    FAIL() << "a gate_up of 47 columns for 24 weight columns was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[linear_swiglu]"), std::string::npos) << e.what();
  }
}

TEST(OpsActivation, SiluMulMatchesReference) {
  std::mt19937 rng(11);
  for (int64_t n : {1, 7, 19, 111, 70000}) {
    Tensor g = random_tensor({n}, DType::F32, rng, 4.0f), u = random_tensor({n}, DType::F32, rng);
    Tensor out = ops::silu_mul(g, u);
    std::vector<float> gv = g.to_vector(), uv = u.to_vector();
    std::vector<double> ref(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i)
      ref[i] = gv[i] / (1.0 + std::exp(-double(gv[i]))) * uv[i];
    EXPECT_LE(max_abs_diff(out, ref), 1e-5);
  }
  EXPECT_THROW(ops::silu_mul(Tensor::zeros({3}), Tensor::zeros({4})), Error);
}
