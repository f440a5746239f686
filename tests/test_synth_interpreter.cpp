// The reference interpreter (synth/interpreter.h) against direct loops written independently:
// dense linear, low rank, grouped linear, 3x3 conv, depthwise conv, and the single views (shift,
// stride, split/merge) on random non-zero data with odd sizes.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "synth/interpreter.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

void expect_close(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  EXPECT_LT(worst, 1e-9) << "max abs difference";
}

// Output filled with NaN first, so an entry the interpreter never writes cannot pass.
std::vector<double> poisoned(size_t n) {
  return std::vector<double>(n, std::nan(""));
}

}  // namespace

TEST(SynthInterpreter, DenseLinearIsMatmul) {
  LinearProblem p;
  const Operator op = dense_linear(p);
  const int64_t T = 5, din = 7, dout = 3;
  const Valuation v{T, din, dout, 2, 1};
  Rng rng(1);
  const auto x = random_values(T * din, rng), w = random_values(dout * din, rng);
  auto want = poisoned(size_t(T * dout));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < dout; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < din; ++i) acc += x[size_t(t * din + i)] * w[size_t(o * din + i)];
      want[size_t(t * dout + o)] = acc;
    }
  expect_close(interpret(op, v, x, {w}), want);
}

TEST(SynthInterpreter, LowRankIsTwoMatmuls) {
  LinearProblem p;
  const Operator op = low_rank(p);
  const int64_t T = 4, din = 9, dout = 5, r = 2;
  const Valuation v{T, din, dout, r, 1};
  Rng rng(2);
  const auto x = random_values(T * din, rng), a = random_values(dout * r, rng),
             b = random_values(r * din, rng);
  std::vector<double> h(size_t(T * r), 0.0);  // h = x Bᵀ, y = h Aᵀ
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < din; ++i)
        h[size_t(t * r + j)] += x[size_t(t * din + i)] * b[size_t(j * din + i)];
  auto want = poisoned(size_t(T * dout));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < dout; ++o) {
      double acc = 0.0;
      for (int64_t j = 0; j < r; ++j) acc += h[size_t(t * r + j)] * a[size_t(o * r + j)];
      want[size_t(t * dout + o)] = acc;
    }
  expect_close(interpret(op, v, x, {a, b}), want);
}

TEST(SynthInterpreter, GroupedLinearIsBlockDiagonal) {
  LinearProblem p;
  const Operator op = grouped_linear(p);
  const int64_t T = 3, din = 6, dout = 9, g = 3, ig = din / g, og = dout / g;
  const Valuation v{T, din, dout, 1, g};
  Rng rng(3);
  const auto x = random_values(T * din, rng), w = random_values(g * og * ig, rng);
  auto want = poisoned(size_t(T * dout));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t G = 0; G < g; ++G)
      for (int64_t o = 0; o < og; ++o) {
        double acc = 0.0;
        for (int64_t i = 0; i < ig; ++i)
          acc += x[size_t(t * din + G * ig + i)] * w[size_t((G * og + o) * ig + i)];
        want[size_t(t * dout + G * og + o)] = acc;
      }
  expect_close(interpret(op, v, x, {w}), want);
}

namespace {

// Direct zero-padded "same" convolution; depthwise when Cout == 0 (weight [C, k, k]).
std::vector<double> conv_loop(const std::vector<double>& x, const std::vector<double>& w, int64_t N,
                              int64_t C, int64_t Cout, int64_t H, int64_t W, int64_t k) {
  const bool depthwise = Cout == 0;
  const int64_t CO = depthwise ? C : Cout;
  auto y = poisoned(size_t(N * CO * H * W));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < CO; ++o)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t ww = 0; ww < W; ++ww) {
          double acc = 0.0;
          for (int64_t c = 0; c < C; ++c) {
            if (depthwise && c != o) continue;
            for (int64_t a = 0; a < k; ++a)
              for (int64_t b = 0; b < k; ++b) {
                const int64_t hi = h + a - k / 2, wi = ww + b - k / 2;
                if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
                const double wv = depthwise ? w[size_t((c * k + a) * k + b)]
                                            : w[size_t(((o * C + c) * k + a) * k + b)];
                acc += x[size_t(((n * C + c) * H + hi) * W + wi)] * wv;
              }
          }
          y[size_t(((n * CO + o) * H + h) * W + ww)] = acc;
        }
  return y;
}

}  // namespace

TEST(SynthInterpreter, Conv3x3IsDirectConvolution) {
  ConvProblem p;
  const Operator op = conv2d(p);
  for (auto [N, C, Cout, H, W] : {std::array<int64_t, 5>{2, 3, 4, 5, 6}, {1, 2, 3, 7, 3}}) {
    const int64_t k = 3;
    const Valuation v{N, C, Cout, H, W, k};
    Rng rng(uint64_t(4 + H));
    const auto x = random_values(N * C * H * W, rng), w = random_values(Cout * C * k * k, rng);
    expect_close(interpret(op, v, x, {w}), conv_loop(x, w, N, C, Cout, H, W, k));
  }
}

TEST(SynthInterpreter, DepthwiseConvIsDirectLoop) {
  ConvProblem p;
  const Operator op = depthwise_conv2d(p);
  for (int64_t k : {3, 5}) {
    const int64_t N = 2, C = 3, H = 6, W = 5;
    const Valuation v{N, C, 1, H, W, k};
    Rng rng(uint64_t(10 + k));
    const auto x = random_values(N * C * H * W, rng), w = random_values(C * k * k, rng);
    expect_close(interpret(op, v, x, {w}), conv_loop(x, w, N, C, 0, H, W, k));
  }
}

TEST(SynthInterpreter, SingleViews) {
  // [T, L] outputs from views of an input, no weights: y = x at the view's coordinate.
  LinearProblem p;  // T as rows, d_in as the viewed length
  const int64_t T = 3, L = 5;
  const Valuation v{T, L, 1, 2, 1};
  Rng rng(5);
  const auto x5 = random_values(T * L, rng), x10 = random_values(T * 2 * L, rng);
  auto at = [&](const std::vector<double>& x, int64_t cols, int64_t t, int64_t c) {
    return x[size_t(t * cols + c)];
  };
  {  // shift: y[t,l] = x[t,(l+1) mod L]
    const Operator op = build({p.sT, p.sdin}, {shift_action(1), finalize_action({0, 1})});
    auto want = poisoned(size_t(T * L));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t l = 0; l < L; ++l) want[size_t(t * L + l)] = at(x5, L, t, (l + 1) % L);
    expect_close(interpret(op, v, x5, {}), want);
  }
  {  // stride 2: y[t,l] = x[t, 2l] with x of length 2L
    const Operator op =
        build({p.sT, p.sdin}, {stride_action(1, Size::constant(2)), finalize_action({0, 1})});
    auto want = poisoned(size_t(T * L));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t l = 0; l < L; ++l) want[size_t(t * L + l)] = at(x10, 2 * L, t, 2 * l);
    expect_close(interpret(op, v, x10, {}), want);
  }
  {  // merge then finalize transposed: y[t, l] for l = 2a+b reads x[b][t][a] of shape [2, T, L]
    const Operator op = build({p.sT, p.sdin * Size::constant(2)},
                              {merge_action(1, Size::constant(2)), finalize_action({2, 0, 1})});
    auto want = poisoned(size_t(T * 2 * L));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t l = 0; l < 2 * L; ++l)
        want[size_t(t * 2 * L + l)] = x10[size_t(((l % 2) * T + t) * L + l / 2)];
    expect_close(interpret(op, v, x10, {}), want);
  }
  {  // reduce: y[t] = Σ_l x[t,l]  (sum pooling over a dim the output does not have)
    const Operator op = build({p.sT}, {reduce_action(p.sdin), finalize_action({0, 1})});
    auto want = poisoned(size_t(T));
    for (int64_t t = 0; t < T; ++t) {
      want[size_t(t)] = 0.0;
      for (int64_t l = 0; l < L; ++l) want[size_t(t)] += at(x5, L, t, l);
    }
    expect_close(interpret(op, v, x5, {}), want);
  }
}

TEST(SynthInterpreter, RejectsIncompleteOrMisshapenData) {
  LinearProblem p;
  const Valuation v{2, 3, 4, 1, 1};
  Operator op = make_operator({p.sT, p.sdout});
  EXPECT_THROW(interpret(op, v, {}, {}), Error);
  op = dense_linear(p);
  EXPECT_THROW(interpret(op, v, std::vector<double>(5, 1.0), {std::vector<double>(12, 1.0)}),
               Error);
  EXPECT_THROW(interpret(op, v, std::vector<double>(6, 1.0), {}), Error);
  EXPECT_THROW(apply(op, shift_action(0)), Error);  // complete
  Operator bad = make_operator({p.sT});
  EXPECT_THROW(apply(bad, split_action(0, 0)), Error);
  EXPECT_THROW(apply(bad, expand_action(3)), Error);
  EXPECT_THROW(apply(bad, share_action(0, 2)), Error);
  EXPECT_THROW(apply(bad, finalize_action({0, 0})), Error);
}
