// Parameter and FLOP counts (synth/cost.h) against hand counts of the classic layers.
#include <gtest/gtest.h>

#include "synth/cost.h"
#include "test_synth_util.h"

using namespace dseek::synth;
using namespace dseek::synth::test;

TEST(SynthCost, LinearFamilies) {
  LinearProblem p;
  const int64_t T = 64, din = 32, dout = 48, r = 4, g = 4;
  const Valuation v{T, din, dout, r, g};
  EXPECT_EQ(param_count(dense_linear(p), v), dout * din);
  EXPECT_EQ(flops(dense_linear(p), v), 2 * T * din * dout);
  EXPECT_EQ(naive_flops(dense_linear(p), v), 2 * T * din * dout);
  EXPECT_EQ(param_count(low_rank(p), v), r * (din + dout));
  EXPECT_EQ(flops(low_rank(p), v), 2 * T * r * (din + dout));  // x·Bᵀ first, then ·Aᵀ
  EXPECT_EQ(naive_flops(low_rank(p), v), 3 * T * din * dout * r);
  EXPECT_EQ(param_count(grouped_linear(p), v), din * dout / g);
  EXPECT_EQ(flops(grouped_linear(p), v), 2 * T * din * dout / g);
  // With a rank above d/2, composing the factors first (A·B, then one GEMM) is cheaper:
  // 2·d_in·r·d_out + 2·T·d_in·d_out = 212992 < 2·T·r·(d_in + d_out) = 327680.
  const Valuation wide{64, 32, 32, 40, 4};
  EXPECT_EQ(flops(low_rank(p), wide), 2 * 32 * 40 * 32 + 2 * 64 * 32 * 32);
}

TEST(SynthCost, Convolutions) {
  ConvProblem p;
  const int64_t N = 2, C = 8, Cout = 16, H = 10, W = 12, k = 3;
  const Valuation v{N, C, Cout, H, W, k};
  EXPECT_EQ(param_count(conv2d(p), v), Cout * C * k * k);
  EXPECT_EQ(flops(conv2d(p), v), 2 * N * Cout * H * W * C * k * k);
  EXPECT_EQ(param_count(depthwise_conv2d(p), v), C * k * k);
  EXPECT_EQ(flops(depthwise_conv2d(p), v), 2 * N * C * H * W * k * k);
}

TEST(SynthCost, WeightlessSum) {
  LinearProblem p;
  const Operator pool = build({p.sT}, {reduce_action(p.sdin), finalize_action({0, 1})});
  const Valuation v{5, 7, 1, 1, 1};
  EXPECT_EQ(param_count(pool, v), 0);
  EXPECT_EQ(flops(pool, v), 5 * 7);
  EXPECT_EQ(naive_flops(pool, v), 5 * 7);
}
