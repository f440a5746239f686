// Backward of rope (rotate-half and interleaved layouts, YaRN frequencies and scaling) and of
// causal attention (multi-head, grouped-query, MQA, more keys than queries, strided inputs)
// against central finite differences (tests/gradcheck.h).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "gradcheck.h"
#include "model/config.h"
#include "model/rope.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::check_gradients;
using dseek::testing::GradReport;
using dseek::testing::has_non_finite;
using dseek::testing::max_abs_diff;
using dseek::testing::nonzero_tensor;

namespace {

// YaRN parameters as a DeepSeek-V3 config would give them (factor 4, mscale ≠ mscale_all_dim,
// so the cos/sin scaling is not 1).
RopeParams yarn_rope(int64_t d) {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.qk_rope_head_dim = d;
  c.rope_theta = 10000.0;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 64;
  c.rope_scaling.mscale = 1.0;
  c.rope_scaling.mscale_all_dim = 0.5;
  return rope_params(c);
}

std::vector<float> default_inv_freq(int64_t d) {
  std::vector<float> f(size_t(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) f[size_t(j)] = float(std::pow(10000.0, -2.0 * j / d));
  return f;
}

}  // namespace

TEST(Grad, RopeMatchesFiniteDifferences) {
  std::mt19937 rng(21);
  for (bool yarn : {false, true}) {
    for (bool interleaved : {false, true}) {
      for (auto [T, H, d] :
           {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {3, 7, 4}, {7, 3, 8}}) {
        std::vector<float> inv_freq = default_inv_freq(d);
        float scaling = 1.0f;
        if (yarn) {
          const RopeParams p = yarn_rope(d);
          inv_freq = p.inv_freq;
          scaling = p.attention_scaling;
          ASSERT_NE(scaling, 1.0f);
        }
        const int64_t pos0 = 5;
        Tensor x = nonzero_tensor({T, H, d}, rng);
        Tensor r = nonzero_tensor({T, H, d}, rng);
        Tensor dx = r.clone();
        ops::rope_backward_inplace(dx, pos0, inv_freq, scaling, interleaved);
        auto forward = [&] {
          Tensor y = x.clone();
          ops::rope_inplace(y, pos0, inv_freq, scaling, interleaved);
          return y;
        };
        const GradReport rep = check_gradients(forward, r, {{"x", x, dx}}, 1e-2f, 64);
        EXPECT_LE(rep.worst, 1e-2) << "yarn=" << yarn << " interleaved=" << interleaved
                                   << " T=" << T << " d=" << d << " " << rep.where;
        // Backward of the forward is the identity up to scaling² (a rotation is orthogonal).
        Tensor back = forward();
        ops::rope_backward_inplace(back, pos0, inv_freq, scaling, interleaved);
        std::vector<double> expect;
        for (float v : x.to_vector()) expect.push_back(double(v) * scaling * scaling);
        EXPECT_LE(max_abs_diff(back, expect), 1e-5);
      }
    }
  }
  // A strided view (the rope part of a wider row, as q_pe inside q) gives its copy's gradient.
  Tensor wide = nonzero_tensor({3, 2, 12}, rng);
  Tensor view = wide.slice(2, 4, 12);
  Tensor copy = view.contiguous();
  ops::rope_backward_inplace(view, 2, default_inv_freq(8), 1.0f, true);
  ops::rope_backward_inplace(copy, 2, default_inv_freq(8), 1.0f, true);
  EXPECT_EQ(max_abs_diff(view, copy), 0.0);
  EXPECT_THROW(ops::rope_backward_inplace(copy, 0, {1.0f}, 1.0f, false), Error);
}

TEST(Grad, CausalAttentionMatchesFiniteDifferences) {
  std::mt19937 rng(22);
  struct Case {
    int64_t T, S, H, Hk, dk, dv;
  };
  for (const Case& c : {Case{1, 1, 1, 1, 1, 1}, Case{3, 3, 2, 2, 3, 7}, Case{3, 7, 6, 2, 7, 3},
                        Case{7, 7, 3, 1, 5, 4}, Case{1, 19, 2, 1, 3, 3},
                        // Several of the CPU kernel's query tiles (64) and key blocks (256).
                        Case{70, 300, 2, 1, 8, 6}, Case{130, 130, 2, 2, 5, 7}}) {
    Tensor q = nonzero_tensor({c.T, c.H, c.dk}, rng, 1.5f);
    Tensor k = nonzero_tensor({c.S, c.Hk, c.dk}, rng, 1.5f);
    Tensor v = nonzero_tensor({c.S, c.Hk, c.dv}, rng);
    Tensor r = nonzero_tensor({c.T, c.H, c.dv}, rng);
    const float scale = 1.0f / std::sqrt(float(c.dk));
    const ops::AttentionGrads g = ops::causal_attention_backward(q, k, v, scale, r);
    EXPECT_FALSE(has_non_finite(g.dq) || has_non_finite(g.dk) || has_non_finite(g.dv));
    const GradReport rep =
        check_gradients([&] { return ops::causal_attention(q, k, v, scale); }, r,
                        {{"q", q, g.dq}, {"k", k, g.dk}, {"v", v, g.dv}}, 1e-2f, 40);
    EXPECT_LE(rep.worst, 2e-2) << "T=" << c.T << " S=" << c.S << " H=" << c.H << " Hk=" << c.Hk
                               << " " << rep.where;
  }
  // Strided q/k/v (slices of wider rows, as MLA's q_nope inside q) give their copies' gradients.
  Tensor qw = nonzero_tensor({5, 4, 9}, rng), kw = nonzero_tensor({5, 2, 9}, rng),
         vw = nonzero_tensor({5, 2, 11}, rng), r = nonzero_tensor({5, 4, 6}, rng);
  Tensor q = qw.slice(2, 2, 8), k = kw.slice(2, 1, 7), v = vw.slice(2, 3, 9);
  const ops::AttentionGrads a = ops::causal_attention_backward(q, k, v, 0.3f, r);
  const ops::AttentionGrads b =
      ops::causal_attention_backward(q.contiguous(), k.contiguous(), v.contiguous(), 0.3f, r);
  EXPECT_EQ(max_abs_diff(a.dq, b.dq), 0.0);
  EXPECT_EQ(max_abs_diff(a.dk, b.dk), 0.0);
  EXPECT_EQ(max_abs_diff(a.dv, b.dv), 0.0);
  EXPECT_THROW(ops::causal_attention_backward(q, k, v, 0.3f, nonzero_tensor({5, 4, 5}, rng)),
               Error);
}

// Enough work for the OpenMP path (several key heads in parallel) to run: it must equal the
// single-threaded result exactly, since each key head is owned by one thread.
TEST(Grad, CausalAttentionParallelMatchesSerial) {
  std::mt19937 rng(23);
  Tensor q = nonzero_tensor({19, 8, 16}, rng), k = nonzero_tensor({19, 4, 16}, rng),
         v = nonzero_tensor({19, 4, 16}, rng), r = nonzero_tensor({19, 8, 16}, rng);
  const ops::AttentionGrads a = ops::causal_attention_backward(q, k, v, 0.25f, r);
  // Per key head separately (Hk = 1 runs serially) gives the same numbers.
  for (int64_t hk = 0; hk < 4; ++hk) {
    const ops::AttentionGrads s = ops::causal_attention_backward(
        q.slice(1, 2 * hk, 2 * hk + 2), k.slice(1, hk, hk + 1), v.slice(1, hk, hk + 1), 0.25f,
        r.slice(1, 2 * hk, 2 * hk + 2).contiguous());
    EXPECT_EQ(max_abs_diff(a.dq.slice(1, 2 * hk, 2 * hk + 2), s.dq), 0.0);
    EXPECT_EQ(max_abs_diff(a.dk.slice(1, hk, hk + 1), s.dk), 0.0);
    EXPECT_EQ(max_abs_diff(a.dv.slice(1, hk, hk + 1), s.dv), 0.0);
  }
}

// Packed sequences: the gradients against finite differences over the packed rows (nothing
// crosses a boundary: a later sequence's loss does not move an earlier one's inputs), and the
// forward and backward equal the one-sequence op on each sequence's rows. Lengths that do not
// cover the rows are an error.
TEST(Grad, CausalAttentionPackedMatchesFiniteDifferences) {
  std::mt19937 rng(24);
  const std::vector<int64_t> lengths = {3, 0, 1, 5};
  Tensor q = nonzero_tensor({9, 4, 5}, rng, 1.5f), k = nonzero_tensor({9, 2, 5}, rng, 1.5f),
         v = nonzero_tensor({9, 2, 3}, rng), r = nonzero_tensor({9, 4, 3}, rng);
  const ops::AttentionGrads g = ops::causal_attention_packed_backward(q, k, v, 0.4f, r, lengths);
  const GradReport rep =
      check_gradients([&] { return ops::causal_attention_packed(q, k, v, 0.4f, lengths); }, r,
                      {{"q", q, g.dq}, {"k", k, g.dk}, {"v", v, g.dv}}, 1e-2f, 40);
  EXPECT_LE(rep.worst, 2e-2) << rep.where;
  const Tensor out = ops::causal_attention_packed(q, k, v, 0.4f, lengths);
  int64_t s = 0;
  for (int64_t n : lengths) {
    if (n > 0) {
      const auto rows = [&](const Tensor& t) { return t.slice(0, s, s + n); };
      EXPECT_EQ(max_abs_diff(rows(out), ops::causal_attention(rows(q), rows(k), rows(v), 0.4f)),
                0.0);
      const ops::AttentionGrads one =
          ops::causal_attention_backward(rows(q), rows(k), rows(v), 0.4f, rows(r).contiguous());
      EXPECT_EQ(max_abs_diff(rows(g.dq), one.dq), 0.0);
      EXPECT_EQ(max_abs_diff(rows(g.dk), one.dk), 0.0);
      EXPECT_EQ(max_abs_diff(rows(g.dv), one.dv), 0.0);
    }
    s += n;
  }
  EXPECT_THROW(ops::causal_attention_packed(q, k, v, 0.4f, {3, 5}), Error);
  EXPECT_THROW(ops::causal_attention_packed(q, k, v, 0.4f, {10, -1}), Error);
  EXPECT_THROW(ops::causal_attention_packed_backward(q, k, v, 0.4f, r, {9, 1}), Error);
}
