// FP8 quantisation (1×128 tiles, 128×128 blocks) and the block-scaled FP8 GEMM on the CPU:
// dequantisation error within E4M3's bound, scale edge cases, the GEMM against an f64 reference
// of the same quantised operands and against the unquantised product within the E4M3 bound, and
// linear_fp8 against ops::linear on the dequantised weight.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <array>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/error.h"
#include "ops/fp8.h"
#include "model/safetensors.h"
#include "ops/linear.h"

namespace dseek {
namespace {

using ops::Fp8Layout;
using ops::Fp8Tensor;

// E4M3 keeps 3 mantissa bits: a normal value rounds with relative error ≤ 2^-4; below the
// smallest normal (2^-6, in units of the scale) the spacing is 2^-9, so the absolute error is
// ≤ 2^-10·s. Plus a few f32 roundings (x/s and q·s): 2^-22 relative is ample.
double e4m3_error_bound(double x, double s) {
  return std::max(std::ldexp(std::abs(x), -4), std::ldexp(s, -10)) + std::ldexp(std::abs(x), -22);
}

// Uniform [-1, 1] with a few outliers of magnitude up to 1000 and rows of very different sizes, so
// tiles get scales many orders of magnitude apart.
Tensor outlier_data(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 199);
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float row_scale = std::ldexp(1.0f, int(r % 7) * 3 - 9);  // 2^-9 .. 2^9
    for (int64_t c = 0; c < cols; ++c) {
      float x = u(rng) * row_scale;
      if (pick(rng) == 0) x *= 1000.0f;
      v[size_t(r * cols + c)] = x;
    }
  }
  return Tensor::from_vector(v, {rows, cols});
}

float scale_at(const Fp8Tensor& q, int64_t r, int64_t c) {
  const int64_t tr = q.layout == Fp8Layout::Tile1x128 ? 1 : 128;
  return q.scale.data<float>()[(r / tr) * q.scale.size(1) + c / 128];
}

TEST(Fp8Quantize, DequantisationErrorWithinE4M3Bound) {
  std::mt19937 rng(41);
  for (Fp8Layout layout : {Fp8Layout::Tile1x128, Fp8Layout::Block128x128}) {
    for (bool pow2 : {false, true}) {
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
               {1, 7}, {3, 128}, {5, 300}, {130, 257}, {257, 129}}) {
        const Tensor x = outlier_data(rows, cols, rng);
        const Fp8Tensor q = ops::quantize_fp8(x, layout, pow2, "x");
        ASSERT_EQ(q.scale.shape(), ops::fp8_scale_shape(rows, cols, layout));
        const Tensor y = ops::dequantize_fp8(q);
        const std::vector<float> xv = x.to_vector(), yv = y.to_vector();
        const uint8_t* codes = q.data.data<uint8_t>();
        int64_t bad = 0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const size_t i = size_t(r * cols + c);
            const double s = scale_at(q, r, c);
            if (std::abs(double(yv[i]) - xv[i]) > e4m3_error_bound(xv[i], s)) ++bad;
            EXPECT_NE(codes[i] & 0x7f, 0x7f) << "NaN code at " << r << "," << c;
          }
        EXPECT_EQ(bad, 0) << rows << "x" << cols << " pow2 " << pow2;
        // Each tile's largest magnitude lands on ±448 (or, with power-of-two scales, within a
        // factor of two below it); the scale of a power-of-two tile has no mantissa bits.
        const int64_t tr = layout == Fp8Layout::Tile1x128 ? 1 : 128;
        for (int64_t t = 0; t < q.scale.numel(); ++t) {
          const int64_t r0 = (t / q.scale.size(1)) * tr, c0 = (t % q.scale.size(1)) * 128;
          float amax = 0;
          for (int64_t r = r0; r < std::min(rows, r0 + tr); ++r)
            for (int64_t c = c0; c < std::min(cols, c0 + 128); ++c)
              amax = std::max(amax, std::abs(xv[size_t(r * cols + c)]));
          const float s = q.scale.data<float>()[t];
          if (pow2) {
            int e = 0;
            EXPECT_EQ(std::frexp(s, &e), 0.5f) << "scale " << s << " not a power of two";
            EXPECT_GE(double(s) * 448.0, amax);
            EXPECT_LT(double(s) * 224.0, amax);
          } else {
            EXPECT_EQ(s, amax / 448.0f) << "tile " << t;
          }
        }
      }
    }
  }
}

TEST(Fp8Quantize, AllZeroTileGetsScaleOneAndZeroCodes) {
  std::vector<float> v(2 * 256, 0.0f);
  for (int c = 128; c < 256; ++c) v[size_t(c)] = 0.5f;  // row 0: tile 1 non-zero
  const Tensor x = Tensor::from_vector(v, {2, 256});
  const Fp8Tensor q = ops::quantize_fp8(x, Fp8Layout::Tile1x128, false, "x");
  const float* s = q.scale.data<float>();
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_EQ(s[1], 0.5f / 448.0f);
  EXPECT_EQ(s[2], 1.0f);
  EXPECT_EQ(s[3], 1.0f);
  for (int c = 0; c < 128; ++c) EXPECT_EQ(q.data.data<uint8_t>()[c], 0);
  EXPECT_EQ(q.data.data<uint8_t>()[128], 0x7e);  // 0.5 is the amax: ±448
  const Fp8Tensor b = ops::quantize_fp8(Tensor::zeros({130, 3}), Fp8Layout::Block128x128, true, "z");
  EXPECT_EQ(b.scale.to_vector(), std::vector<float>({1.0f, 1.0f}));
  const std::vector<float> back = ops::dequantize_fp8(b).to_vector();
  for (float f : back) EXPECT_EQ(f, 0.0f);
}

TEST(Fp8Quantize, HugeOutlierAndTinyTiles) {
  // One 1e30 among values near 1: the scale follows the outlier, the small values flush to (near)
  // zero but stay within the absolute bound 2^-10·s; the outlier itself is kept to 2^-4.
  std::vector<float> v(128, 1.0f);
  v[5] = 1e30f;
  v[6] = -3e29f;
  const Fp8Tensor q =
      ops::quantize_fp8(Tensor::from_vector(v, {1, 128}), Fp8Layout::Tile1x128, false, "x");
  const std::vector<float> back = ops::dequantize_fp8(q).to_vector();
  const double s = q.scale.data<float>()[0];
  EXPECT_EQ(float(s), 1e30f / 448.0f);
  for (size_t i = 0; i < v.size(); ++i)
    EXPECT_LE(std::abs(double(back[i]) - v[i]), e4m3_error_bound(v[i], s)) << i;
  EXPECT_EQ(q.data.data<uint8_t>()[5], 0x7e);  // the amax maps to +448
  // A tile of subnormal floats: amax/448 is below FLT_MIN, so the scale is FLT_MIN.
  std::vector<float> tiny(8, 1e-40f);
  tiny[3] = -2e-40f;
  const Fp8Tensor t =
      ops::quantize_fp8(Tensor::from_vector(tiny, {1, 8}), Fp8Layout::Tile1x128, true, "tiny");
  EXPECT_EQ(t.scale.data<float>()[0], std::numeric_limits<float>::min());
  const std::vector<float> tb = ops::dequantize_fp8(t).to_vector();
  for (size_t i = 0; i < tiny.size(); ++i)
    EXPECT_LE(std::abs(double(tb[i]) - tiny[i]), e4m3_error_bound(tiny[i], double(std::numeric_limits<float>::min()))) << i;
}

TEST(Fp8Quantize, NonFiniteInputIsAnErrorNamingTheTensor) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> v(300, 0.25f);
    v[170] = bad;
    const Tensor x = Tensor::from_vector(v, {2, 150});
    for (Fp8Layout layout : {Fp8Layout::Tile1x128, Fp8Layout::Block128x128}) {
      try {
        ops::quantize_fp8(x, layout, false, "layers.3.mlp.up_proj input");
        FAIL() << "no error for " << bad;
      } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("[quantize_fp8] 'layers.3.mlp.up_proj input'"), std::string::npos) << m;
        EXPECT_NE(m.find("row 1, column 20"), std::string::npos) << m;
      }
    }
  }
}

// Σ_k over exact f64 products of the dequantised operands: what the FP8 GEMM approximates in f32.
std::vector<double> reference_gemm(const Tensor& a, const Tensor& w) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  const std::vector<float> av = a.to_vector(), wv = w.to_vector();
  std::vector<double> y(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(av[size_t(m * K + k)]) * wv[size_t(n * K + k)];
      y[size_t(m * N + n)] = s;
    }
  return y;
}

TEST(Fp8Gemm, MatchesF64ReferenceAndStaysWithinTheE4M3Bound) {
  std::mt19937 rng(42);
  for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{
           {1, 7, 5}, {3, 128, 64}, {17, 300, 130}, {64, 1024, 257}, {5, 129, 128}}) {
    const Tensor x = outlier_data(M, K, rng), w = outlier_data(N, K, rng);
    const Fp8Tensor qa = ops::quantize_fp8(x, Fp8Layout::Tile1x128, false, "x");
    const Fp8Tensor qw = ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w");
    const Tensor y = ops::fp8_gemm(qa, qw);
    ASSERT_EQ(y.shape(), Shape({M, N}));
    // 1) Against the exact product of the quantised operands: only f32 summation error, bounded
    //    by K·2^-24·Σ|a·w| (per-block sums of ≤128 terms, then ≤ K/128 promotions).
    const Tensor xa = ops::dequantize_fp8(qa), wa = ops::dequantize_fp8(qw);
    const std::vector<double> exact = reference_gemm(xa, wa);
    // 2) Against the unquantised product: per term |x·w − x̃·w̃| ≤ |x|e_w + |w|e_x + e_x·e_w.
    const std::vector<double> truth = reference_gemm(x, w);
    const std::vector<float> yv = y.to_vector(), xv = x.to_vector(), wv = w.to_vector();
    const std::vector<float> xq = xa.to_vector(), wq = wa.to_vector();
    int64_t bad_exact = 0, bad_truth = 0;
    double worst = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double abs_sum = 0, bound = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double xk = xv[size_t(m * K + k)], wk = wv[size_t(n * K + k)];
          abs_sum += std::abs(double(xq[size_t(m * K + k)]) * wq[size_t(n * K + k)]);
          const double ex = e4m3_error_bound(xk, scale_at(qa, m, k));
          const double ew = e4m3_error_bound(wk, scale_at(qw, n, k));
          bound += std::abs(xk) * ew + std::abs(wk) * ex + ex * ew;
        }
        const size_t i = size_t(m * N + n);
        const double d_exact = std::abs(yv[i] - exact[i]);
        if (d_exact > double(K + 8) * std::ldexp(abs_sum, -24)) ++bad_exact;
        const double d_truth = std::abs(yv[i] - truth[i]);
        if (d_truth > bound + double(K + 8) * std::ldexp(abs_sum, -24)) ++bad_truth;
        if (bound > 0) worst = std::max(worst, d_truth / bound);
      }
    EXPECT_EQ(bad_exact, 0) << M << "x" << K << "x" << N;
    EXPECT_EQ(bad_truth, 0) << M << "x" << K << "x" << N;
    std::printf("[fp8_gemm cpu] %ldx%ldx%ld  error / E4M3 bound: %.3f\n", long(M), long(K),
                long(N), worst);
  }
}

TEST(Fp8Gemm, ScaleShapeAndLayoutErrors) {
  std::mt19937 rng(43);
  const Tensor x = outlier_data(4, 256, rng), w = outlier_data(130, 256, rng);
  const Fp8Tensor qa = ops::quantize_fp8(x, Fp8Layout::Tile1x128, false, "x");
  Fp8Tensor qw = ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w");
  EXPECT_THROW(ops::fp8_gemm(qw, qa), Error);  // layouts swapped
  qw.scale = Tensor::zeros({1, 2});            // should be [2, 2]
  try {
    ops::fp8_gemm(qa, qw);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scale must be contiguous f32 [2, 2]"), std::string::npos)
        << e.what();
  }
}

TEST(Fp8Linear, CloseToLinearOnTheDequantisedWeight) {
  std::mt19937 rng(44);
  for (auto [T, in, out] : std::vector<std::array<int64_t, 3>>{{1, 64, 48}, {6, 300, 200}}) {
    const Tensor w = outlier_data(out, in, rng);
    const Fp8Tensor qw = ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w");
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> xv(static_cast<size_t>(T * in)), bv(static_cast<size_t>(out));
    for (float& f : xv) f = u(rng);
    for (float& f : bv) f = u(rng);
    const Tensor x = Tensor::from_vector(xv, {1, T, in}), b = Tensor::from_vector(bv, {out});
    const Tensor got = ops::linear_fp8(x, qw.data, qw.scale, &b);
    ASSERT_EQ(got.shape(), Shape({1, T, out}));
    // The weight is the same on both sides; only x's 1×128 quantisation differs: per element
    // |Δ| ≤ Σ_k |w̃_k|·e_x(k).
    const Tensor wd = ops::dequantize_fp8(qw);
    const Tensor want = ops::linear(x, wd, &b);
    const std::vector<float> g = got.to_vector(), r = want.to_vector(), wq = wd.to_vector();
    for (int64_t t = 0; t < T; ++t) {
      float amax[8] = {};
      for (int64_t k = 0; k < in; ++k)
        amax[k / 128] = std::max(amax[k / 128], std::abs(xv[size_t(t * in + k)]));
      for (int64_t o = 0; o < out; ++o) {
        double bound = 1e-6, abs_sum = 0;
        for (int64_t k = 0; k < in; ++k) {
          const double wk = std::abs(wq[size_t(o * in + k)]), xk = xv[size_t(t * in + k)];
          bound += wk * e4m3_error_bound(xk, amax[k / 128] / 448.0);
          abs_sum += wk * std::abs(xk);
        }
        bound += double(in + 8) * std::ldexp(abs_sum, -23);  // f32 sums on both sides
        EXPECT_LE(std::abs(g[size_t(t * out + o)] - r[size_t(t * out + o)]), bound) << t << "," << o;
      }
    }
  }
}


// A checkpoint's FP8 linear as DeepSeek-V3 ships it (F8_E4M3 weight + F32 weight_scale_inv),
// written with the project's own safetensors writer, read back without dequantisation and
// multiplied by linear_fp8: close to the f32 linear it was quantised from, within the E4M3 bound
// of both operands' quantisation.
TEST(Fp8Checkpoint, WeightStaysFp8AndLinearMatchesTheF32Layer) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dseek_fp8_ckpt_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::mt19937 rng(45);
  const int64_t T = 5, in = 300, out = 130;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> wv(static_cast<size_t>(out * in)), xv(static_cast<size_t>(T * in));
  for (float& f : wv) f = u(rng) * 0.05f;
  for (float& f : xv) f = u(rng);
  const Tensor w = Tensor::from_vector(wv, {out, in}), x = Tensor::from_vector(xv, {T, in});
  const Fp8Tensor qw = ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w");
  save_safetensors((dir / "model.safetensors").string(),
                   {{"l.weight", qw.data},
                    {"l.weight_scale_inv", qw.scale},
                    {"bare.weight", qw.data},
                    {"bad.weight", qw.data},
                    {"bad.weight_scale_inv", Tensor::zeros({2, 2})}});
  const WeightStore store = WeightStore::open(dir.string());
  const WeightStore::Fp8Weight fw = store.get_fp8_weight("l.weight", {out, in});
  EXPECT_EQ(fw.weight.dtype(), DType::F8_E4M3);  // kept as stored, not dequantised
  EXPECT_EQ(fw.scale_inv.to_vector(), qw.scale.to_vector());
  const Tensor got = ops::linear_fp8(x, fw.weight, fw.scale_inv);
  const Tensor want = ops::linear(x, w);
  const std::vector<float> g = got.to_vector(), r = want.to_vector();
  const std::vector<float> sw = qw.scale.to_vector();
  for (int64_t t = 0; t < T; ++t) {
    float amax[3] = {};
    for (int64_t k = 0; k < in; ++k)
      amax[k / 128] = std::max(amax[k / 128], std::abs(xv[static_cast<size_t>(t * in + k)]));
    for (int64_t o = 0; o < out; ++o) {
      double bound = 1e-6;
      for (int64_t k = 0; k < in; ++k) {
        const double xk = xv[static_cast<size_t>(t * in + k)], wk = wv[static_cast<size_t>(o * in + k)];
        const double ex = e4m3_error_bound(xk, amax[k / 128] / 448.0);
        const double ew = e4m3_error_bound(wk, sw[static_cast<size_t>((o / 128) * 3 + k / 128)]);
        bound += std::abs(xk) * ew + std::abs(wk) * ex + ex * ew + std::ldexp(std::abs(xk * wk), -20);
      }
      EXPECT_LE(std::abs(g[static_cast<size_t>(t * out + o)] - r[static_cast<size_t>(t * out + o)]), bound)
          << t << "," << o;
    }
  }
  auto expect_error = [&](const std::string& name, const std::string& text) {
    try {
      store.get_fp8_weight(name, {out, in});
      FAIL() << "no error for " << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_error("bare.weight", "has no scale tensor 'bare.weight_scale_inv'");
  expect_error("bad.weight", "scale tensor 'bad.weight_scale_inv' is f32 [2, 2], expected F32 [2, 3]");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dseek
