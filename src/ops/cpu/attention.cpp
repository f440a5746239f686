// causal attention, CPU, f32 — transformers' eager_attention_forward for one sequence:
//   w = softmax(scale · q kᵀ + causal mask) (f32), out = w v
// Query t (of T) is absolute position p = S − T + t and sees keys 0..p. Grouped-query heads: query
// head h reads key/value head h / (H / Hk).
//
// Forward, flash-style on the CPU: the work items are (head, tile of kQueryTile queries); each
// walks the keys its tile can see in blocks of kKeyBlock, the block's scores one sgemm
// (Q_tile · K_blockᵀ), an online softmax (running row max and sum, the accumulator rescaled when
// the max grows), and P · V_block a second sgemm into the accumulator. Keys and values are read
// once per tile instead of once per query (the per-query loop was bound by re-reading them from
// cache), and the products run in OpenBLAS's kernels. Only the diagonal block is masked.
//
// Backward, on the same tiles, with P = softmax(scale · q kᵀ) recomputed from the row
// log-sum-exps (no saved probabilities), dP = dout vᵀ, D_t = Σ_s P_ts dP_ts and
// dS = P ⊙ (dP − D):  dv = Pᵀ dout,  dk = scale · dSᵀ q,  dq = scale · dS k. Three passes, each a
// set of independent work items, so no two threads write one row and the sums run in a fixed order
// whatever the thread count: (1) per (head, query tile) the row log-sum-exps; (2) per (head, query
// tile) D over the blocks its queries see, then its dq rows; (3) per (key head, key block) its dk
// and dv rows, over the group's query heads and the tiles that see the block. D is summed from the
// same P and dP that dS uses (not as dout · out), so where P is exactly 1 (one visible key) dS is
// exactly 0, as the maths says.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {
namespace {

constexpr int64_t kQueryTile = 64, kKeyBlock = 256;
constexpr float kNoKey = -3.402823466e38f;

// The argument's layout as the sgemms read it: rows ld apart, ld >= the row's length as BLAS
// requires (the op makes overlapping views contiguous; a single row's stride is never stepped).
struct Layout {
  const AttentionArgs& a;
  int ldq, ldk, ldv;
  int64_t group, tiles, blocks;
  int64_t kb;  // the scores' row stride: a key block, or all the keys when fewer
  explicit Layout(const AttentionArgs& args)
      : a(args),
        ldq(int(std::max(args.q_t, args.dk))),
        ldk(int(std::max(args.k_s, args.dk))),
        ldv(int(std::max(args.v_s, args.dv))),
        group(args.H / args.Hk),
        tiles((args.T + kQueryTile - 1) / kQueryTile),
        blocks((args.S + kKeyBlock - 1) / kKeyBlock),
        kb(std::min(kKeyBlock, args.S)) {}
  int64_t first_pos(int64_t tile) const { return a.S - a.T + tile * kQueryTile; }
  int64_t rows(int64_t tile) const { return std::min(kQueryTile, a.T - tile * kQueryTile); }
  int64_t keys(int64_t block) const { return std::min(kKeyBlock, a.S - block * kKeyBlock); }
  // Keys of block s0 (of nk) that query row i of `tile` sees: a prefix of the block.
  int64_t visible(int64_t tile, int64_t i, int64_t s0, int64_t nk) const {
    return std::clamp<int64_t>(first_pos(tile) + i + 1 - s0, 0, nk);
  }
  const float* q(int64_t tile, int64_t h) const {
    return a.q + tile * kQueryTile * a.q_t + h * a.q_h;
  }
  const float* k(int64_t s0, int64_t h) const { return a.k + s0 * a.k_s + (h / group) * a.k_h; }
  const float* v(int64_t s0, int64_t h) const { return a.v + s0 * a.v_s + (h / group) * a.v_h; }

  // scores [nq, nk] (row stride kb) = scale · q_tile · k_blockᵀ, query head h.
  void scores(int64_t tile, int64_t h, int64_t s0, int64_t nk, float* out) const {
    const int64_t nq = rows(tile);
    std::fill_n(out, nq * kb, 0.0f);  // OpenBLAS's small kernels read C even at beta 0
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(nq), int(nk), int(a.dk), a.scale,
                q(tile, h), ldq, k(s0, h), ldk, 0.0f, out, int(kb));
  }
};

// One thread's buffers, sized to the call (a decode step's are a row of scores, not a tile).
struct Scratch {
  std::vector<float> scores, dp, acc, row_max, row_sum;
  Scratch(const Layout& L, bool backward) {
    const size_t rows = size_t(std::min(kQueryTile, L.a.T));
    scores.resize(rows * size_t(L.kb));
    if (backward) dp.resize(rows * size_t(L.kb));
    acc.resize(rows * size_t(L.a.dv));
    row_max.resize(rows);
    row_sum.resize(rows);
  }
};

// The forward of one (head, query tile) with the online softmax: if out is set, its rows at
// out + (t·H + h)·dv; if lse is set, each row's log-sum-exp of its scores at lse[t·H + h].
void forward_tile(const Layout& L, int64_t h, int64_t tile, Scratch& w, float* out, float* lse) {
  const AttentionArgs& a = L.a;
  const int64_t nq = L.rows(tile), t0 = tile * kQueryTile;
  const int64_t n_keys = L.first_pos(tile) + nq;  // the tile's last query sees them all
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  std::fill(w.row_max.begin(), w.row_max.end(), kNoKey);
  std::fill(w.row_sum.begin(), w.row_sum.end(), 0.0f);
  for (int64_t s0 = 0; s0 < n_keys; s0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, n_keys - s0);
    L.scores(tile, h, s0, nk, w.scores.data());
    for (int64_t i = 0; i < nq; ++i) {
      float* row = w.scores.data() + i * L.kb;
      const int64_t visible = L.visible(tile, i, s0, nk);
      float m = w.row_max[size_t(i)];
      for (int64_t j = 0; j < visible; ++j) m = std::max(m, row[j]);
      // Key 0 is in the first block, so every row has a finite max from then on.
      const float correction = std::exp(w.row_max[size_t(i)] - m);
      float sum = 0;
      for (int64_t j = 0; j < visible; ++j) sum += (row[j] = std::exp(row[j] - m));
      std::fill(row + visible, row + nk, 0.0f);
      w.row_sum[size_t(i)] = w.row_sum[size_t(i)] * correction + sum;
      w.row_max[size_t(i)] = m;
      if (correction != 1.0f)
        for (int64_t c = 0; c < a.dv; ++c) w.acc[size_t(i * a.dv + c)] *= correction;
    }
    if (out)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(nq), int(a.dv), int(nk), 1.0f,
                  w.scores.data(), int(L.kb), L.v(s0, h), L.ldv, 1.0f, w.acc.data(), int(a.dv));
  }
  for (int64_t i = 0; i < nq; ++i) {
    if (out) {
      float* o = out + ((t0 + i) * a.H + h) * a.dv;
      const float inv = 1.0f / w.row_sum[size_t(i)];
      for (int64_t c = 0; c < a.dv; ++c) o[c] = w.acc[size_t(i * a.dv + c)] * inv;
    }
    if (lse) lse[(t0 + i) * a.H + h] = w.row_max[size_t(i)] + std::log(w.row_sum[size_t(i)]);
  }
}

// For one (head h, query tile, key block s0 of nk): P in w.scores and dP in w.dp, both [nq, nk]
// with row stride L.kb, zero where the query does not see the key.
void probabilities(const Layout& L, const AttentionGradArgs& g, const float* lse, int64_t h,
                   int64_t tile, int64_t s0, int64_t nk, Scratch& w) {
  const AttentionArgs& a = L.a;
  const int64_t nq = L.rows(tile), t0 = tile * kQueryTile;
  L.scores(tile, h, s0, nk, w.scores.data());
  std::fill_n(w.dp.data(), nq * L.kb, 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(nq), int(nk), int(a.dv), 1.0f,
              g.dout + (t0 * a.H + h) * a.dv, int(a.H * a.dv), L.v(s0, h), L.ldv, 0.0f, w.dp.data(),
              int(L.kb));
  for (int64_t i = 0; i < nq; ++i) {
    float* p = w.scores.data() + i * L.kb;
    const int64_t visible = L.visible(tile, i, s0, nk);
    const float row_lse = lse[(t0 + i) * a.H + h];
    for (int64_t j = 0; j < visible; ++j) p[j] = std::exp(p[j] - row_lse);
    std::fill(p + visible, p + nk, 0.0f);
    std::fill(w.dp.data() + i * L.kb + visible, w.dp.data() + i * L.kb + nk, 0.0f);
  }
}

// P and dS = P ⊙ (dP − D) (in w.dp) of one (head, query tile, key block).
void probabilities_and_dscores(const Layout& L, const AttentionGradArgs& g, const float* lse,
                               const float* D, int64_t h, int64_t tile, int64_t s0, int64_t nk,
                               Scratch& w) {
  probabilities(L, g, lse, h, tile, s0, nk, w);
  const int64_t t0 = tile * kQueryTile;
  for (int64_t i = 0; i < L.rows(tile); ++i) {
    const float* p = w.scores.data() + i * L.kb;
    float* ds = w.dp.data() + i * L.kb;
    const float row_d = D[(t0 + i) * L.a.H + h];
    for (int64_t j = 0; j < nk; ++j) ds[j] = p[j] * (ds[j] - row_d);
  }
}

}  // namespace

void causal_attention(const AttentionArgs& a) {
  use_single_threaded_blas();
  const Layout L(a);
  const int64_t items = a.H * L.tiles;
#pragma omp parallel if (a.H * a.T * a.S * (a.dk + a.dv) >= (1 << 15))
  {
    Scratch w(L, false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      // Tiles in descending order of work (the last tiles see the most keys) balance the team.
      forward_tile(L, item % a.H, L.tiles - 1 - item / a.H, w, a.out, nullptr);
    }
  }
}

void causal_attention_backward(const AttentionGradArgs& g) {
  const AttentionArgs& a = g.fwd;
  use_single_threaded_blas();
  const Layout L(a);
  std::fill_n(g.dk, a.S * a.Hk * a.dk, 0.0f);
  std::fill_n(g.dv, a.S * a.Hk * a.dv, 0.0f);
  std::fill_n(g.dq, a.T * a.H * a.dk, 0.0f);
  std::vector<float> lse(size_t(a.T * a.H)), D(size_t(a.T * a.H));
  const bool parallel = a.H * a.T * a.S * (a.dk + a.dv) >= (1 << 15);
#pragma omp parallel if (parallel)
  {
    Scratch w(L, true);
    // (1) The row log-sum-exps.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < a.H * L.tiles; ++item)
      forward_tile(L, item % a.H, L.tiles - 1 - item / a.H, w, nullptr, lse.data());
      // (2) D = Σ P ⊙ dP over the blocks the tile's queries see, then dq = scale · dS k.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < a.H * L.tiles; ++item) {
      const int64_t h = item % a.H, tile = L.tiles - 1 - item / a.H;
      const int64_t nq = L.rows(tile), t0 = tile * kQueryTile, n_keys = L.first_pos(tile) + nq;
      std::vector<float>& row_d = w.row_sum;  // this tile's D, summed block by block
      std::fill(row_d.begin(), row_d.end(), 0.0f);
      for (int64_t s0 = 0; s0 < n_keys; s0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, n_keys - s0);
        probabilities(L, g, lse.data(), h, tile, s0, nk, w);
        for (int64_t i = 0; i < nq; ++i) {
          const float* p = w.scores.data() + i * L.kb;
          const float* dp = w.dp.data() + i * L.kb;
          float sum = 0;
          for (int64_t j = 0; j < nk; ++j) sum += p[j] * dp[j];
          row_d[size_t(i)] += sum;
        }
      }
      for (int64_t i = 0; i < nq; ++i) D[size_t((t0 + i) * a.H + h)] = row_d[size_t(i)];
      float* dq = g.dq + (t0 * a.H + h) * a.dk;
      for (int64_t s0 = 0; s0 < n_keys; s0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, n_keys - s0);
        probabilities_and_dscores(L, g, lse.data(), D.data(), h, tile, s0, nk, w);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(nq), int(a.dk), int(nk), a.scale,
                    w.dp.data(), int(L.kb), L.k(s0, h), L.ldk, 1.0f, dq, int(a.H * a.dk));
      }
    }  // the loop's implicit barrier: every D is ready
    // (3) dv = Pᵀ dout and dk = scale · dSᵀ q of each key block, summed over its key head's query
    // heads and the tiles that see the block.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < a.Hk * L.blocks; ++item) {
      const int64_t hk = item % a.Hk, block = item / a.Hk;
      const int64_t s0 = block * kKeyBlock, nk = L.keys(block);
      float* dk = g.dk + (s0 * a.Hk + hk) * a.dk;
      float* dv = g.dv + (s0 * a.Hk + hk) * a.dv;
      for (int64_t h = hk * L.group; h < (hk + 1) * L.group; ++h)
        for (int64_t tile = 0; tile < L.tiles; ++tile) {
          if (L.first_pos(tile) + L.rows(tile) <= s0) continue;  // sees none of the block
          const int64_t nq = L.rows(tile);
          probabilities_and_dscores(L, g, lse.data(), D.data(), h, tile, s0, nk, w);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(nk), int(a.dv), int(nq), 1.0f,
                      w.scores.data(), int(L.kb), g.dout + (tile * kQueryTile * a.H + h) * a.dv,
                      int(a.H * a.dv), 1.0f, dv, int(a.Hk * a.dv));
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(nk), int(a.dk), int(nq), a.scale,
                      w.dp.data(), int(L.kb), L.q(tile, h), L.ldq, 1.0f, dk, int(a.Hk * a.dk));
        }
    }
  }
}

}  // namespace dseek::ops::cpu
