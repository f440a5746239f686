// linear on CUDA (cuBLASLt) against the CPU op: forward with and without bias, dx / dW / dbias
// overwritten and accumulated, strided weights, decode (T = 1 to 8: the weight-streaming GEMV for
// bf16, gemv.cu) and odd shapes.
//
// Tolerance of a GEMM over K terms. The CPU reference gets the same act-rounded inputs, so what
// differs is (1) the order of the f32 accumulation and (2) the rounding of a bf16 output.
// (1) The rounding errors of a K-term f32 sum grow with its partial sums, about sqrt(k)·σ for
// random terms of rms σ; added up as a random walk they give about u·K·σ/sqrt(2) (u = 2^-24) on
// each side. Allowed: 16·u·K·σ. For K = 7168 and products of uniform [-1, 1] inputs (σ = 1/3)
// that is 2.3e-3 against outputs of typical size sqrt(K)·σ ≈ 28 (the H200 run showed 8.5e-5); a
// dropped term (~0.3), a wrong index, or TF32 inputs (2^-11 relative per product, ~0.02 over
// K = 7168) are far outside it.
//
// (2) A bf16 output is one round-to-nearest of the f32 result: relative error at most 2^-8. f32
// outputs get a relative 1e-6 for the roundings of beta·C + result.
#include <cmath>

#include "backend/backend_harness.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/swiglu.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/gemv.h"
#endif

namespace dseek::backend_test {
namespace {

struct Case {
  int64_t T, in, out, ldw;
  bool bias;
};

const std::vector<Case> kCases = {
    {1, 7, 5, 7, true},                // tiny decode
    {3, 64, 33, 64, false},            // T = 3, odd out
    {3, 37, 19, 40, true},             // odd sizes, strided weight rows
    {1, 2048, 1408, 2048, true},       // decode through a real projection
    {8, 2048, 576, 2048, false},       // the most rows the decode GEMV takes (gemv.h)
    {5, 1032, 37, 1032 + 8, true},     // GEMV: a partial k-pass, odd out, strided rows
    {9, 512, 64, 512, false},          // one row too many for the GEMV: cuBLASLt
    {257, 2048, 1408, 2048, false},    // prefill / training shape
    {64, 7168, 2048, 7168 + 64, true}  // V3 hidden size, weight rows ldw > in apart
};

// rms of one term: a product of two uniform [-1, 1] inputs, or one such input (the bias gradient).
constexpr double kProductRms = 1.0 / 3.0;
const double kInputRms = 1.0 / std::sqrt(3.0);

// See the header comment: a sum of K terms of rms sigma, written in out_dtype.
Tolerance gemm_tolerance(int64_t K, double sigma, DType out_dtype) {
  const double u = std::ldexp(1.0, -24);
  return {16 * u * double(K) * sigma + 1e-7, out_dtype == DType::BF16 ? std::ldexp(1.0, -8) : 1e-6};
}

// The weight as the GPU op sees it: rows ldw apart (a column slice of a wider matrix).
Tensor strided_weight(const Tensor& full, int64_t in, DType act) {
  return on_gpu(full, act).slice(1, 0, in);
}

// Poisons the CUDA pool: outputs the op allocates next are likely carved from this NaN block, so a
// kernel that leaves elements unwritten shows up as NaN rather than as a stale correct value.
void poison_pool(const Shape& shape, DType dtype) {
  (void)Tensor::poisoned(shape, dtype, Device::CUDA);
}

std::vector<float> plus(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  return x;
}

TEST(BackendOps, Linear) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (DType act : kActDtypes) {
    for (const Case& c : kCases) {
      const Tensor x = rand({c.T, c.in}, rng), w_full = rand({c.out, c.ldw}, rng);
      // The bias in act (what a model stores); the epilogue adds it as is.
      const Tensor b = rounded(rand({c.out}, rng), act);
      const Tensor w_ref = rounded(w_full, act).slice(1, 0, c.in).contiguous();
      const Tensor want = ops::linear(rounded(x, act), w_ref, c.bias ? &b : nullptr);
      poison_pool({c.T, c.out}, act);
      const Tensor bg = on_gpu(b, act);
      const Tensor got =
          ops::linear(on_gpu(x, act), strided_weight(w_full, c.in, act), c.bias ? &bg : nullptr);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("linear", {c.T, c.in, c.out}, act, want, got,
                   gemm_tolerance(c.in, kProductRms, act));
    }
  }
}

// A bias stored in another dtype than the activations (f32 bias, bf16 GEMM) is converted to act
// for the epilogue: one more bf16 rounding of the bias (≤ 2^-8·|b|) on top of the GEMM tolerance.
TEST(BackendOps, LinearBiasInAnotherDtype) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(22);
  const int64_t T = 5, in = 96, out = 40;
  const Tensor x = rand({T, in}, rng), w = rand({out, in}, rng), b = rand({out}, rng);
  for (DType act : kActDtypes) {
    const Tensor want = ops::linear(rounded(x, act), rounded(w, act), &b);
    const Tensor bg = on_gpu(b);  // f32 whatever act is
    const Tensor got = ops::linear(on_gpu(x, act), on_gpu(w, act), &bg);
    Tolerance tol = gemm_tolerance(in, kProductRms, act);
    if (act == DType::BF16) tol.abs += std::ldexp(1.0, -8);
    expect_close("linear f32 bias", {T, in, out}, act, want, got, tol);
  }
}

// A router's logits: f32 out of activations in act and an f32 weight. Few bf16 rows take the
// widening kernel (gemv.h: T ≤ 8, in a multiple of 4), the rest a conversion and cuBLASLt;
// V2-Lite's (2048 → 64) and V3's (7168 → 256) routers, an in of 4k + 2 (no kernel), T = 9.
TEST(BackendOps, LinearWidened) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(24);
  struct WidenedCase {
    int64_t T, in, out;
  };
  for (DType act : kActDtypes) {
    for (const WidenedCase& c :
         {WidenedCase{1, 2048, 64}, WidenedCase{8, 7168, 256}, WidenedCase{3, 100, 5},
          WidenedCase{2, 102, 7}, WidenedCase{9, 2048, 64}}) {
      const Tensor x = rand({c.T, c.in}, rng), w = rand({c.out, c.in}, rng);
      const Tensor want = ops::linear(rounded(x, act), w);
      poison_pool({c.T, c.out}, DType::F32);
      const Tensor got = ops::linear_widened(on_gpu(x, act), on_gpu(w));
      EXPECT_EQ(got.dtype(), DType::F32);
      expect_close("linear_widened", {c.T, c.in, c.out}, act, want, got,
                   gemm_tolerance(c.in, kProductRms, DType::F32));
    }
  }
}

// The down projection over a stacked gate_up product [T, 2I]: the CPU's silu_mul then linear
// against the GPU's one kernel (bf16, T ≤ 8, aligned rows: h computed as the kernel reads it) or
// its two ops; on the GPU the fused kernel gives the same bits as its silu_mul then linear (the
// same rounding of h, then the same GEMV for T ≤ 8), with h made once a block in shared memory
// (where it fits) or recomputed by every warp.
TEST(BackendOps, LinearSwiglu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  struct SwigluCase {
    int64_t T, I, out;
    bool bias;
  };
  for (DType act : kActDtypes) {
    for (const SwigluCase& c : {SwigluCase{1, 2816, 2048, false}, SwigluCase{8, 1408, 100, true},
                                SwigluCase{3, 1028, 17, false}, SwigluCase{9, 256, 64, true},
                                SwigluCase{2, 20, 8, false}}) {
      const Tensor gu = rand({c.T, 2 * c.I}, rng, 3.0f);
      const Tensor w = rounded(rand({c.out, c.I}, rng, 1.0f / std::sqrt(float(c.I))), act);
      const Tensor b = rounded(rand({c.out}, rng), act);
      const Tensor gu_c = rounded(gu, act);
      const Tensor want = ops::linear_swiglu(gu_c, w, c.bias ? &b : nullptr);
      const Tensor gu_g = on_gpu(gu, act), w_g = on_gpu(w, act), b_g = on_gpu(b, act);
      poison_pool({c.T, c.out}, act);
      const Tensor got = ops::linear_swiglu(gu_g, w_g, c.bias ? &b_g : nullptr);
      expect_close("linear_swiglu", {c.T, c.I, c.out}, act, want, got);
      const Tensor two_ops =
          ops::linear(ops::silu_mul(gu_g.slice(1, 0, c.I), gu_g.slice(1, c.I, 2 * c.I)), w_g,
                      c.bias ? &b_g : nullptr);
      EXPECT_EQ(got.to_vector(), two_ops.to_vector())
          << "fused and two-op GPU results differ at T " << c.T << " I " << c.I;
#ifdef DSEEK_HAS_CUDA
      // The kernel that recomputes h in every warp (h not made once a block): the same bits.
      ops::cuda::set_gemv_swiglu_shared(false);
      const Tensor recomputed = ops::linear_swiglu(gu_g, w_g, c.bias ? &b_g : nullptr);
      ops::cuda::set_gemv_swiglu_shared(true);
      EXPECT_EQ(got.to_vector(), recomputed.to_vector())
          << "h in shared memory and recomputed differ at T " << c.T << " I " << c.I;
#endif
    }
  }
}

TEST(BackendOps, LinearBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(23);
  for (DType act : kActDtypes) {
    for (const Case& c : kCases) {
      for (bool accumulate : {false, true}) {
        const Shape shape{c.T, c.in, c.out};
        const Tensor x = rand({c.T, c.in}, rng), w_full = rand({c.out, c.ldw}, rng),
                     dy = rand({c.T, c.out}, rng);
        const Tensor w_ref = rounded(w_full, act).slice(1, 0, c.in).contiguous();
        const ops::LinearGrads want =
            ops::linear_backward(rounded(x, act), w_ref, rounded(dy, act), true);
        // Starting values: NaN when overwriting (any element left unwritten shows), known random
        // values when accumulating (the result must be start + gradient).
        const Tensor dx0 = rounded(rand({c.T, c.in}, rng), act), dw0 = rand({c.out, c.in}, rng),
                     db0 = rand({c.out}, rng);
        Tensor dx =
            accumulate ? on_gpu(dx0, act) : Tensor::poisoned({c.T, c.in}, act, Device::CUDA);
        Tensor dw =
            accumulate ? on_gpu(dw0) : Tensor::poisoned({c.out, c.in}, DType::F32, Device::CUDA);
        Tensor db = accumulate ? on_gpu(db0) : Tensor::poisoned({c.out}, DType::F32, Device::CUDA);
        ops::linear_backward_into(on_gpu(x, act), strided_weight(w_full, c.in, act),
                                  on_gpu(dy, act), &dx, &dw, c.bias ? &db : nullptr, accumulate);
        const std::string mode = accumulate ? " (+=)" : "";
        expect_close("linear_backward dx" + mode, shape, act,
                     accumulate ? Tensor::from_vector(plus(want.dx, dx0), {c.T, c.in}) : want.dx,
                     dx, gemm_tolerance(c.out, kProductRms, act));
        // dW is f32 whatever act is: only the accumulation order differs.
        expect_close(
            "linear_backward dw" + mode, shape, act,
            accumulate ? Tensor::from_vector(plus(want.dweight, dw0), {c.out, c.in}) : want.dweight,
            dw, gemm_tolerance(c.T, kProductRms, DType::F32));
        // dW into bf16 (train::ParamSet::bf16_matrix_grads): the f32 sum rounded once — within
        // bf16's rounding of the f32 result.
        const Tensor dw0_16 = rounded(dw0, DType::BF16);
        Tensor dw16 = accumulate ? on_gpu(dw0_16, DType::BF16)
                                 : Tensor::poisoned({c.out, c.in}, DType::BF16, Device::CUDA);
        ops::linear_backward_into(on_gpu(x, act), strided_weight(w_full, c.in, act),
                                  on_gpu(dy, act), nullptr, &dw16, nullptr, accumulate);
        ASSERT_EQ(dw16.dtype(), DType::BF16);
        const Tolerance bf16_dw = gemm_tolerance(c.T, kProductRms, DType::BF16);
        if (!(accumulate && act == DType::BF16)) {
          expect_close("linear_backward dw into bf16" + mode, shape, act,
                       accumulate ? Tensor::from_vector(plus(want.dweight, dw0_16), {c.out, c.in})
                                  : want.dweight,
                       dw16, bf16_dw);
        } else {
          // Accumulating over bf16 inputs (cuBLASLt with a bf16 C and D, beta 1), an H100 gave
          // results up to a bf16 unit from the f32 sum, and relative errors of 1 where the old
          // value and the new sum nearly cancel: the new sum is rounded to bf16 before the old
          // value is added, as PyTorch's bf16 .grad += does. So: within half a bf16 unit of the
          // new sum plus half a unit of the result.
          const std::vector<float> fresh = want.dweight.to_vector(), old = dw0_16.to_vector(),
                                   got = dw16.to_vector();
          int64_t bad = 0;
          for (size_t i = 0; i < got.size(); ++i) {
            const double sum = double(old[i]) + double(fresh[i]);
            const double bound =
                bf16_dw.abs + bf16_dw.rel * (1.0 + 0x1p-7) * (std::fabs(fresh[i]) + std::fabs(sum));
            if (!(std::fabs(double(got[i]) - sum) <= bound)) ++bad;
          }
          EXPECT_EQ(bad, 0) << "linear_backward dw into bf16 (+=) " << shape_str(shape) << ": "
                            << bad << " of " << got.size() << " out of tolerance";
        }
        if (c.bias)
          expect_close(
              "linear_backward dbias" + mode, shape, act,
              accumulate ? Tensor::from_vector(plus(want.dbias, db0), {c.out}) : want.dbias, db,
              gemm_tolerance(c.T, kInputRms, DType::F32));
      }
    }
  }
}

// The allocating form returns dx in act on the GPU and f32 parameter gradients.
TEST(BackendOps, LinearBackwardAllocates) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(24);
  const Tensor x = rand({9, 24}, rng), w = rand({10, 24}, rng), dy = rand({9, 10}, rng);
  for (DType act : kActDtypes) {
    const ops::LinearGrads want =
        ops::linear_backward(rounded(x, act), rounded(w, act), rounded(dy, act), true);
    const ops::LinearGrads got =
        ops::linear_backward(on_gpu(x, act), on_gpu(w, act), on_gpu(dy, act), true);
    EXPECT_EQ(got.dx.dtype(), act);
    EXPECT_EQ(got.dweight.dtype(), DType::F32);
    EXPECT_EQ(got.dbias.dtype(), DType::F32);
    EXPECT_TRUE(got.dx.is_cuda() && got.dweight.is_cuda() && got.dbias.is_cuda());
    expect_close("linear_backward() dx", {9, 24, 10}, act, want.dx, got.dx,
                 gemm_tolerance(10, kProductRms, act));
    expect_close("linear_backward() dw", {9, 24, 10}, act, want.dweight, got.dweight,
                 gemm_tolerance(9, kProductRms, DType::F32));
    expect_close("linear_backward() db", {9, 24, 10}, act, want.dbias, got.dbias,
                 gemm_tolerance(9, kInputRms, DType::F32));
  }
}

// Empty sums: no tokens (dW, dbias are zero) and no input features (y is the bias).
TEST(BackendOps, LinearEmpty) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  for (DType act : kActDtypes) {
    const Tensor w = on_gpu(rand({6, 8}, rng), act);
    Tensor x = Tensor::empty({0, 8}, act, Device::CUDA),
           dy = Tensor::empty({0, 6}, act, Device::CUDA);
    EXPECT_EQ(ops::linear(x, w).shape(), (Shape{0, 6}));
    Tensor dw = Tensor::poisoned({6, 8}, DType::F32, Device::CUDA);
    Tensor db = Tensor::poisoned({6}, DType::F32, Device::CUDA);
    ops::linear_backward_into(x, w, dy, nullptr, &dw, &db, false);
    expect_close("linear_backward T=0 dw", {0, 8, 6}, act, Tensor::zeros({6, 8}), dw, {0, 0});
    expect_close("linear_backward T=0 db", {0, 8, 6}, act, Tensor::zeros({6}), db, {0, 0});

    const Tensor b = rounded(rand({6}, rng), act);
    const Tensor bg = on_gpu(b, act);
    const Tensor y = ops::linear(Tensor::empty({3, 0}, act, Device::CUDA),
                                 Tensor::empty({6, 0}, act, Device::CUDA), &bg);
    std::vector<float> want;
    for (int t = 0; t < 3; ++t)
      for (float v : b.to_vector()) want.push_back(v);
    expect_close("linear in=0 (bias only)", {3, 0, 6}, act, Tensor::from_vector(want, {3, 6}), y,
                 {0, 0});
  }
}

TEST(BackendOps, LinearWeightDtypeMustMatch) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(26);
  const Tensor x = on_gpu(rand({2, 8}, rng), DType::BF16), w = on_gpu(rand({3, 8}, rng));
  try {
    ops::linear(x, w);
    FAIL() << "bf16 x with an f32 weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must equal the activation dtype"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ops::linear(x, rand({3, 8}, rng).to(DType::BF16)), Error);  // weight on the CPU
}

}  // namespace
}  // namespace dseek::backend_test
