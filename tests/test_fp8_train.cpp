// FP8 training on the CPU (ops/fp8_train.h): column-tile quantisation, the FP8 linear's forward,
// dgrad and wgrad against the f32 linear within a derived E4M3 bound and against the exact
// product of the dequantised operands in the tile orientations of the recipe, the straight-through
// gradient by finite differences, edge cases, and the grouped expert GEMMs against the dense op
// per expert.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "gradcheck.h"
#include "ops/cuda/fp8_scale.h"
#include "ops/fp8.h"
#include "ops/fp8_train.h"
#include "ops/linear.h"

namespace dseek {
namespace {

using ops::Fp8Layout;

// E4M3 keeps 3 mantissa bits: a normal code rounds with relative error ≤ 2^-4; below the smallest
// normal (2^-6 in units of the scale s) the spacing is 2^-9·s, so the absolute error is ≤ 2^-10·s.
// Plus the f32 roundings of x/s and q·s (2^-22 relative is ample).
double e4m3_bound(double x, double s) {
  return std::max(std::ldexp(std::abs(x), -4), std::ldexp(s, -10)) + std::ldexp(std::abs(x), -22);
}

// Row-major [rows, cols] values as doubles.
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<double> v;
  double at(int64_t r, int64_t c) const { return v[size_t(r * cols + c)]; }
};
Mat mat(const Tensor& t) {
  Mat m{t.size(0), t.size(1), {}};
  for (float f : t.to_vector()) m.v.push_back(f);
  return m;
}

// Per-element E4M3 bound of quantising m with tiles of tr rows × tc columns (1×128, 128×128, or
// 128×1 restarting at each group start of `groups`).
Mat quant_bound(const Mat& m, int64_t tr, int64_t tc, const std::vector<int64_t>& groups = {}) {
  std::vector<int64_t> g = groups.empty() ? std::vector<int64_t>{0, m.rows} : groups;
  Mat b{m.rows, m.cols, std::vector<double>(m.v.size(), 0.0)};
  for (size_t gi = 0; gi + 1 < g.size(); ++gi)
    for (int64_t r0 = g[gi]; r0 < g[gi + 1]; r0 += tr)
      for (int64_t c0 = 0; c0 < m.cols; c0 += tc) {
        const int64_t r1 = std::min(g[gi + 1], r0 + tr), c1 = std::min(m.cols, c0 + tc);
        double amax = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::abs(m.at(r, c)));
        const double s = ops::fp8_tile_scale(float(amax), false);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) b.v[size_t(r * m.cols + c)] = e4m3_bound(m.at(r, c), s);
      }
  return b;
}

// c[i, j] = Σ_k a[i, k]·b[j, k] with the derived error bound of replacing a and b by values within
// ea and eb of them and summing in f32:
//   |Σ â b̂ − Σ a b| ≤ Σ (|a|·eb + |b|·ea + ea·eb) + (K + 2)·2^-23·Σ |â||b̂|,  |â| ≤ |a| + ea.
struct Product {
  std::vector<double> value, bound;
};
Product product_nt(const Mat& a, const Mat& b, const Mat& ea, const Mat& eb) {
  Product p;
  const int64_t K = a.cols;
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < b.rows; ++j) {
      double s = 0, quant = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double x = a.at(i, k), y = b.at(j, k), dx = ea.at(i, k), dy = eb.at(j, k);
        s += x * y;
        quant += std::abs(x) * dy + std::abs(y) * dx + dx * dy;
        mag += (std::abs(x) + dx) * (std::abs(y) + dy);
      }
      p.value.push_back(s);
      p.bound.push_back(quant + double(K + 2) * std::ldexp(mag, -23));
    }
  return p;
}
Mat transpose(const Mat& m) {
  Mat t{m.cols, m.rows, std::vector<double>(m.v.size())};
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < m.cols; ++c) t.v[size_t(c * m.rows + r)] = m.at(r, c);
  return t;
}
Mat zeros_like(const Mat& m) { return Mat{m.rows, m.cols, std::vector<double>(m.v.size(), 0.0)}; }

// Uniform [-1, 1] with rows of different magnitudes and rare ×100 outliers.
Tensor data(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      v[size_t(r * cols + c)] =
          u(rng) * std::ldexp(1.0f, int(r % 5) - 2) * (pick(rng) == 0 ? 100.0f : 1.0f);
  return Tensor::from_vector(v, {rows, cols});
}

// Counts elements of `got` outside value ± bound; also the largest |got − value| (must not be 0:
// an FP8 result equal to f32 everywhere would mean nothing was quantised).
struct Check {
  int64_t bad = 0;
  double max_err = 0;
  std::string first;
};
Check check(const Tensor& got, const Product& want) {
  Check c;
  const std::vector<float> g = got.to_vector();
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(double(g[i]) - want.value[i]);
    c.max_err = std::max(c.max_err, std::isnan(err) ? INFINITY : err);
    if (!(err <= want.bound[i])) {
      if (c.bad++ == 0)
        c.first = "at " + std::to_string(i) + ": " + std::to_string(g[i]) + " vs " +
                  std::to_string(want.value[i]) + " ± " + std::to_string(want.bound[i]);
    }
  }
  return c;
}

Tensor dequant_rows(const Tensor& x) {  // x̂ = Q_row(x), dequantised
  return ops::dequantize_fp8(ops::quantize_fp8(x, Fp8Layout::Tile1x128, false, "x"));
}

TEST(Fp8ColTiles, WithinE4M3BoundRestartingAtEachGroup) {
  std::mt19937 rng(3);
  const int64_t rows = 420, cols = 37;
  const Tensor x = data(rows, cols, rng);
  // Ragged groups: an empty one, one row, 128, 129 (a second tile of one row), and the rest; the
  // last 10 rows belong to no group.
  const std::vector<int64_t> o = {0, 0, 1, 129, 258, 410};
  Tensor off = Tensor::empty({int64_t(o.size())}, DType::I64);
  std::copy(o.begin(), o.end(), off.data<int64_t>());
  const ops::Fp8ColTiles q = ops::quantize_fp8_cols(x, &off, "x");
  ASSERT_EQ(q.scale.shape(), (Shape{ops::fp8_col_tile_rows(rows, 5), cols}));
  const Tensor y = ops::dequantize_fp8_cols(q, off);
  const Mat xm = mat(x), ym = mat(y), b = quant_bound(xm, 128, 1, o);
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double want = r < o.back() ? xm.at(r, c) : 0.0;
      if (r < o.back() ? std::abs(ym.at(r, c) - want) > b.at(r, c) : ym.at(r, c) != 0.0) ++bad;
    }
  EXPECT_EQ(bad, 0);
  // Tile j of group g sits at scale row floor(o_g/128) + g + j and holds amax/448 of its rows.
  const float* s = q.scale.data<float>();
  auto amax = [&](int64_t r0, int64_t r1, int64_t c) {
    double m = 0;
    for (int64_t r = r0; r < r1; ++r) m = std::max(m, std::abs(xm.at(r, c)));
    return float(m);
  };
  for (int64_t c = 0; c < cols; ++c) {
    EXPECT_EQ(s[(0 / 128 + 1) * cols + c], ops::fp8_tile_scale(amax(0, 1, c), false));
    EXPECT_EQ(s[(129 / 128 + 3 + 1) * cols + c], ops::fp8_tile_scale(amax(257, 258, c), false));
    EXPECT_EQ(s[(258 / 128 + 4 + 1) * cols + c], ops::fp8_tile_scale(amax(386, 410, c), false));
  }
  // A column-tile quantisation of x equals the row-tile quantisation of xᵀ (the recipe's "xᵀ per
  // 1×128 along the tokens"), code for code.
  const ops::Fp8ColTiles one = ops::quantize_fp8_cols(x, nullptr, "x");
  const ops::Fp8Tensor qt =
      ops::quantize_fp8(x.transpose(0, 1).contiguous(), Fp8Layout::Tile1x128, false, "xT");
  int64_t differ = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      differ += one.data.data<uint8_t>()[r * cols + c] != qt.data.data<uint8_t>()[c * rows + r];
  EXPECT_EQ(differ, 0);
}

// The three GEMMs of one FP8 linear, with their reference products and bounds.
struct LinearRun {
  Tensor y, dx, dw;
};
LinearRun run_fp8_linear(const Tensor& x, const Tensor& w, const Tensor& dy) {
  ops::Fp8LinearCache cache;
  LinearRun r;
  r.y = ops::linear_fp8_train_forward(x, w, &cache);
  r.dx = Tensor::poisoned(x.shape());
  r.dw = Tensor::poisoned(w.shape());
  ops::linear_fp8_train_backward(cache, w, dy, &r.dx, &r.dw, false);
  return r;
}

TEST(Fp8LinearTrain, WithinTheE4M3BoundOfTheF32Linear) {
  std::mt19937 rng(11);
  for (auto [T, in, out] : std::vector<std::array<int64_t, 3>>{
           {5, 130, 7}, {33, 256, 200}, {130, 64, 129}, {1, 3, 1}}) {
    const Tensor x = data(T, in, rng), w = data(out, in, rng), dy = data(T, out, rng);
    const LinearRun r = run_fp8_linear(x, w, dy);
    const Mat xm = mat(x), wm = mat(w), dym = mat(dy), x_hat = mat(dequant_rows(x));
    // forward: x per 1×128 along in, W per 128×128 block.
    const Product y = product_nt(xm, wm, quant_bound(xm, 1, 128), quant_bound(wm, 128, 128));
    // dgrad dx = dy·W: dy per 1×128 along out; Wᵀ in blocks (the same blocks as W).
    const Mat wt = transpose(wm);
    const Product dx = product_nt(dym, wt, quant_bound(dym, 1, 128), quant_bound(wt, 128, 128));
    // wgrad dW = dyᵀ·x over the tokens: dy and x̃ = Q_col(Q_row(x)) in 128×1 column tiles; x̃'s
    // error is the row step's plus the column step's (applied to x̂).
    Mat ex = quant_bound(xm, 1, 128);
    const Mat ex2 = quant_bound(x_hat, 128, 1);
    for (size_t i = 0; i < ex.v.size(); ++i) ex.v[i] += ex2.v[i];
    const Product dw = product_nt(transpose(dym), transpose(xm), transpose(quant_bound(dym, 128, 1)),
                                  transpose(ex));
    for (auto [name, got, want] : std::vector<std::tuple<std::string, Tensor, const Product*>>{
             {"y", r.y, &y}, {"dx", r.dx, &dx}, {"dW", r.dw, &dw}}) {
      const Check c = check(got, *want);
      EXPECT_EQ(c.bad, 0) << name << " " << T << "x" << in << "x" << out << " " << c.first;
      EXPECT_GT(c.max_err, 0.0) << name << ": identical to f32, nothing was quantised";
      std::printf("fp8 linear %-2s T=%-3lld in=%-3lld out=%-3lld max |fp8 - f64| %.3g\n",
                  name.c_str(), (long long)T, (long long)in, (long long)out, c.max_err);
    }
  }
}

// Tight check of the tile orientations: each GEMM equals the f64 product of exactly the
// dequantised operands the recipe prescribes, up to f32 accumulation.
TEST(Fp8LinearTrain, EqualsTheProductOfTheRecipesDequantisedOperands) {
  std::mt19937 rng(12);
  const int64_t T = 150, in = 140, out = 131;
  const Tensor x = data(T, in, rng), w = data(out, in, rng), dy = data(T, out, rng);
  const LinearRun r = run_fp8_linear(x, w, dy);
  const Mat xq = mat(dequant_rows(x));
  const Mat wq = mat(ops::dequantize_fp8(ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w")));
  const Mat dyq = mat(dequant_rows(dy));
  Tensor one = Tensor::empty({2}, DType::I64);
  one.data<int64_t>()[0] = 0;
  one.data<int64_t>()[1] = T;
  const Mat dyc = mat(ops::dequantize_fp8_cols(ops::quantize_fp8_cols(dy, nullptr, "dy"), one));
  const Mat xc =
      mat(ops::dequantize_fp8_cols(ops::quantize_fp8_cols(dequant_rows(x), nullptr, "x"), one));
  const Product y = product_nt(xq, wq, zeros_like(xq), zeros_like(wq));
  const Product dx = product_nt(dyq, transpose(wq), zeros_like(dyq), zeros_like(transpose(wq)));
  const Product dw = product_nt(transpose(dyc), transpose(xc), zeros_like(transpose(dyc)),
                                zeros_like(transpose(xc)));
  EXPECT_EQ(check(r.y, y).bad, 0) << check(r.y, y).first;
  EXPECT_EQ(check(r.dx, dx).bad, 0) << check(r.dx, dx).first;
  EXPECT_EQ(check(r.dw, dw).bad, 0) << check(r.dw, dw).first;
  // Accumulation adds to what dW holds.
  ops::Fp8LinearCache cache;
  ops::linear_fp8_train_forward(x, w, &cache);
  const Tensor init = data(out, in, rng);
  Tensor acc = init.to(DType::F32);  // a copy
  ops::linear_fp8_train_backward(cache, w, dy, nullptr, &acc, true);
  const std::vector<float> a = acc.to_vector(), i0 = init.to_vector(), d = r.dw.to_vector();
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], i0[i] + d[i], 1e-5 * (std::abs(i0[i]) + std::abs(d[i]))) << i;
}

// The straight-through estimator: the FP8 backward is the gradient of the dequantised model with
// the quantisers treated as identity. Central differences (in f64, of a function linear in the
// perturbed input, so exact up to rounding) of L = Σ r ⊙ (x·Ŵᵀ) in x (Ŵ the dequantised weight)
// and of L = Σ r ⊙ (x̃·Wᵀ) in W (x̃ the wgrad's dequantised input) against the FP8 dx and dW. They
// differ only by the quantisation of r, in its dgrad (1×128) and wgrad (128×1) tiles:
//   |dx[t,k] − ∂L/∂x[t,k]| ≤ Σ_n e(r[t,n])·|Ŵ[n,k]| + f32 slack,  likewise for dW over t.
TEST(Fp8LinearTrain, StraightThroughGradientMatchesFiniteDifferences) {
  std::mt19937 rng(13);
  const int64_t T = 6, in = 140, out = 9;
  const Tensor x = testing::nonzero_tensor({T, in}, rng), w = testing::nonzero_tensor({out, in}, rng);
  const Tensor r = testing::nonzero_tensor({T, out}, rng);
  const LinearRun run = run_fp8_linear(x, w, r);
  Tensor one = Tensor::empty({2}, DType::I64);
  one.data<int64_t>()[0] = 0;
  one.data<int64_t>()[1] = T;
  const Mat xm = mat(x), wm = mat(w), rm = mat(r);
  const Mat w_hat =
      mat(ops::dequantize_fp8(ops::quantize_fp8(w, Fp8Layout::Block128x128, false, "w")));
  const Mat x_tilde =
      mat(ops::dequantize_fp8_cols(ops::quantize_fp8_cols(dequant_rows(x), nullptr, "x"), one));
  const Mat er_rows = quant_bound(rm, 1, 128), er_cols = quant_bound(rm, 128, 1);
  // L(x) = Σ_t,n r[t,n]·Σ_k a[t,k]·b[n,k] in f64.
  auto loss = [&](const Mat& a, const Mat& b) {
    double l = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < out; ++n) {
        double y = 0;
        for (int64_t k = 0; k < in; ++k) y += a.at(t, k) * b.at(n, k);
        l += rm.at(t, n) * y;
      }
    return l;
  };
  const double eps = 1e-2;
  const std::vector<float> dx = run.dx.to_vector(), dw = run.dw.to_vector();
  int64_t bad = 0, checked = 0;
  double worst = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < in; k += 7) {
      Mat xp = xm, xn = xm;
      xp.v[size_t(t * in + k)] += eps;
      xn.v[size_t(t * in + k)] -= eps;
      const double numeric = (loss(xp, w_hat) - loss(xn, w_hat)) / (2 * eps);
      double bound = 1e-9;
      for (int64_t n = 0; n < out; ++n)
        bound += er_rows.at(t, n) * std::abs(w_hat.at(n, k)) +
                 std::ldexp(std::abs(rm.at(t, n) * w_hat.at(n, k)), -20);
      const double err = std::abs(dx[size_t(t * in + k)] - numeric);
      worst = std::max(worst, err / bound);
      bad += !(err <= bound);
      ++checked;
    }
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; k += 5) {
      Mat wp = wm, wn = wm;
      wp.v[size_t(n * in + k)] += eps;
      wn.v[size_t(n * in + k)] -= eps;
      const double numeric = (loss(x_tilde, wp) - loss(x_tilde, wn)) / (2 * eps);
      double bound = 1e-9;
      for (int64_t t = 0; t < T; ++t)
        bound += er_cols.at(t, n) * std::abs(x_tilde.at(t, k)) +
                 std::ldexp(std::abs(rm.at(t, n) * x_tilde.at(t, k)), -20);
      const double err = std::abs(dw[size_t(n * in + k)] - numeric);
      worst = std::max(worst, err / bound);
      bad += !(err <= bound);
      ++checked;
    }
  EXPECT_EQ(bad, 0) << "worst error / bound " << worst;
  EXPECT_GT(checked, 300);
  std::printf("fp8 straight-through vs finite differences: %lld elements, worst error/bound %.3f\n",
              (long long)checked, worst);
}

TEST(Fp8LinearTrain, ZeroTilesAndHugeOutliers) {
  std::mt19937 rng(14);
  const int64_t T = 4, in = 256, out = 130;
  std::vector<float> xv = data(T, in, rng).to_vector();
  for (int64_t c = 0; c < 128; ++c) xv[size_t(0 * in + c)] = 0.0f;  // token 0, tile 0: zero
  for (int64_t c = 0; c < in; ++c) xv[size_t(1 * in + c)] = 0.0f;   // token 1: all zero
  xv[size_t(2 * in + 200)] = 3e30f;                                   // a huge outlier
  const Tensor x = Tensor::from_vector(xv, {T, in});
  const Tensor w = data(out, in, rng);
  std::vector<float> dyv = data(T, out, rng).to_vector();
  for (int64_t t = 0; t < T; ++t) dyv[size_t(t * out + 7)] = 0.0f;  // output 7: zero gradient
  const Tensor dy = Tensor::from_vector(dyv, {T, out});
  const LinearRun r = run_fp8_linear(x, w, dy);
  EXPECT_FALSE(testing::has_non_finite(r.y));
  EXPECT_FALSE(testing::has_non_finite(r.dx));
  EXPECT_FALSE(testing::has_non_finite(r.dw));
  const std::vector<float> y = r.y.to_vector(), dw = r.dw.to_vector();
  for (int64_t n = 0; n < out; ++n) EXPECT_EQ(y[size_t(1 * out + n)], 0.0f) << n;
  for (int64_t k = 0; k < in; ++k) EXPECT_EQ(dw[size_t(7 * in + k)], 0.0f) << k;
  // The outlier's own product stays within the E4M3 bound.
  const Mat xm = mat(x), wm = mat(w);
  const Product want = product_nt(xm, wm, quant_bound(xm, 1, 128), quant_bound(wm, 128, 128));
  EXPECT_EQ(check(r.y, want).bad, 0) << check(r.y, want).first;
}

TEST(Fp8LinearTrain, NonFiniteInputIsAnErrorNamingTheTensor) {
  std::mt19937 rng(15);
  const Tensor x = data(3, 20, rng), w = data(5, 20, rng), dy = data(3, 5, rng);
  auto with_nan = [](const Tensor& t, int64_t i) {
    std::vector<float> v = t.to_vector();
    v[size_t(i)] = std::nanf("");
    return Tensor::from_vector(v, t.shape());
  };
  auto expect_error = [](const std::function<void()>& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error([&] { ops::linear_fp8_train_forward(with_nan(x, 7), w); }, "'linear_fp8_train x'");
  expect_error([&] { ops::linear_fp8_train_forward(x, with_nan(w, 3)); },
               "'linear_fp8_train weight'");
  ops::Fp8LinearCache cache;
  ops::linear_fp8_train_forward(x, w, &cache);
  Tensor dx = Tensor::poisoned({3, 20}), dw = Tensor::poisoned({5, 20});
  expect_error([&] { ops::linear_fp8_train_backward(cache, w, with_nan(dy, 4), &dx, nullptr, false); },
               "'linear_fp8_train dy'");
  expect_error([&] { ops::linear_fp8_train_backward(cache, w, with_nan(dy, 4), nullptr, &dw, false); },
               "'linear_fp8_train dy (column tiles)'");
}

Tensor offsets_tensor(const std::vector<int64_t>& o) {
  Tensor t = Tensor::empty({int64_t(o.size())}, DType::I64);
  std::copy(o.begin(), o.end(), t.data<int64_t>());
  return t;
}

// The grouped GEMMs equal the dense FP8 linear run on each expert's rows (row tiles are per row,
// column tiles restart at each expert), up to f32 summation order.
// Fp8WeightCacheScope: the weight's blocks quantised once and reused give the same bits as
// quantising them on every call (the CPU keeps W's blocks only).
TEST(Fp8LinearTrain, WeightCacheScopeGivesTheSameResults) {
  std::mt19937 rng(16);
  const Tensor x = data(6, 300, rng), w = data(130, 300, rng), dy = data(6, 130, rng);
  auto run = [&] {
    ops::Fp8LinearCache cache;
    std::vector<Tensor> out{ops::linear_fp8_train_forward(x, w, &cache), Tensor::poisoned({6, 300}),
                            Tensor::poisoned({130, 300})};
    ops::linear_fp8_train_backward(cache, w, dy, &out[1], &out[2], false);
    return out;
  };
  const std::vector<Tensor> want = run();
  ops::Fp8WeightCacheScope scope;
  for (int pass = 0; pass < 2; ++pass) {  // filling the cache, then reading it
    const std::vector<Tensor> got = run();
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(std::memcmp(want[i].raw(), got[i].raw(), want[i].nbytes()), 0)
          << "output " << i << " pass " << pass;
  }
}

TEST(Fp8GroupedLinear, EqualsTheDenseOpPerExpert) {
  std::mt19937 rng(16);
  const int64_t in = 136, out = 130;
  const std::vector<int64_t> o = {0, 130, 130, 131, 200, 333};  // an empty expert, one of 1 row
  const int64_t E = int64_t(o.size()) - 1, N = o.back();
  const Tensor off = offsets_tensor(o);
  const Tensor x = data(N, in, rng), dy = data(N, out, rng);
  std::vector<Tensor> ws, grads;
  for (int64_t e = 0; e < E; ++e) {
    ws.push_back(data(out, in, rng));
    grads.push_back(Tensor::poisoned({out, in}));
  }
  ops::Fp8GroupedCache cache;
  const Tensor y = ops::grouped_linear_fp8_forward(x, ops::expert_matrices(ws), off, &cache);
  const Tensor dx = ops::grouped_linear_fp8_backward_dx(dy, ops::expert_matrices(ws), off);
  ops::grouped_linear_fp8_backward_dw(cache, dy, off, ops::expert_matrices(grads), false);
  const std::vector<float> yv = y.to_vector(), dxv = dx.to_vector();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = o[size_t(e) + 1] - o[size_t(e)];
    const std::vector<float> g = grads[size_t(e)].to_vector();
    if (rows == 0) {
      for (float f : g) ASSERT_EQ(f, 0.0f) << "expert " << e << " without rows";
      continue;
    }
    const LinearRun d = run_fp8_linear(x.slice(0, o[size_t(e)], o[size_t(e) + 1]).contiguous(),
                                       ws[size_t(e)],
                                       dy.slice(0, o[size_t(e)], o[size_t(e) + 1]).contiguous());
    auto near = [](const std::vector<float>& got, size_t at, const std::vector<float>& want,
                   const char* what, int64_t e) {
      double scale = 0;
      for (float f : want) scale = std::max(scale, double(std::abs(f)));
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[at + i], want[i], 1e-5 * scale) << what << " expert " << e << " at " << i;
    };
    near(yv, size_t(o[size_t(e)] * out), d.y.to_vector(), "y", e);
    near(dxv, size_t(o[size_t(e)] * in), d.dx.to_vector(), "dx", e);
    near(g, 0, d.dw.to_vector(), "dW", e);
  }
}

TEST(Fp8GroupedLinear, ShapeAndOffsetErrors) {
  std::mt19937 rng(17);
  const Tensor x = data(10, 8, rng);
  const ops::ExpertMatrices w = ops::expert_matrices({data(4, 8, rng), data(4, 8, rng)});
  try {
    ops::grouped_linear_fp8_forward(x, w, offsets_tensor({0, 6, 9}));
    FAIL() << "no error for offsets ending at 9 of 10 rows";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[grouped_linear_fp8] offsets run from 0 to 9"),
              std::string::npos)
        << e.what();
  }
  try {
    ops::grouped_linear_fp8_forward(x, w, offsets_tensor({0, 10}));
    FAIL() << "no error for 1 group and 2 experts";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("offsets for 1 experts, 2 matrices"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dseek
