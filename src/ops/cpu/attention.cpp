// causal attention, CPU, f32 — transformers' eager_attention_forward for one sequence:
//   w = softmax(scale · q kᵀ + causal mask) (f32), out = w v
// Query t (of T) is absolute position p = S − T + t and sees keys 0..p. Grouped-query heads: query
// head h reads key/value head h / (H / Hk). Work is split over (head, query) pairs with OpenMP;
// each thread keeps one score row.
//
// Backward (FlashAttention-style recomputation, no saved probabilities): per (h, t), with
// p = softmax(scale · q kᵀ) over the visible keys and dP_s = dout · v_s,
//   dS_s = p_s (dP_s − Σ_s' p_s' dP_s'),   dq = scale Σ_s dS_s k_s,
//   dk_s += scale dS_s q,                   dv_s += p_s dout.
// dk/dv of one key head collect from all its query heads and queries, so work is split over key
// heads (no two threads write the same row); with one key head (MQA) it runs on one thread.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/dot_product.h"

namespace dseek::ops::cpu {

void causal_attention(const AttentionArgs& a) {
  const int64_t group = a.H / a.Hk;
  const int64_t n_items = a.H * a.T;
#pragma omp parallel if (n_items * a.S * (a.dk + a.dv) >= (1 << 15))
  {
    std::vector<float> scores(size_t(a.S));
    std::vector<float> acc(size_t(a.dv));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t h = item / a.T, t = item % a.T;
      const int64_t hk = h / group;
      const int64_t n_keys = a.S - a.T + t + 1;
      const float* q = a.q + t * a.q_t + h * a.q_h;
      float m = -3.402823466e38f;
      for (int64_t s = 0; s < n_keys; ++s) {
        const float* k = a.k + s * a.k_s + hk * a.k_h;
        float dot = 0;
        dot = dot_product(q, k, a.dk);
        scores[size_t(s)] = dot * a.scale;
        m = std::max(m, scores[size_t(s)]);
      }
      float sum = 0;
      for (int64_t s = 0; s < n_keys; ++s) {
        scores[size_t(s)] = std::exp(scores[size_t(s)] - m);
        sum += scores[size_t(s)];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t s = 0; s < n_keys; ++s) {
        const float p = scores[size_t(s)];
        const float* v = a.v + s * a.v_s + hk * a.v_h;
        for (int64_t j = 0; j < a.dv; ++j) acc[size_t(j)] += p * v[j];
      }
      float* out = a.out + (t * a.H + h) * a.dv;
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < a.dv; ++j) out[j] = acc[size_t(j)] * inv;
    }
  }
}

void causal_attention_backward(const AttentionGradArgs& g) {
  const AttentionArgs& a = g.fwd;
  const int64_t group = a.H / a.Hk;
  std::fill_n(g.dk, a.S * a.Hk * a.dk, 0.0f);
  std::fill_n(g.dv, a.S * a.Hk * a.dv, 0.0f);
#pragma omp parallel if (a.Hk > 1 && a.H * a.T * a.S * (a.dk + a.dv) >= (1 << 15))
  {
    std::vector<float> p(size_t(a.S)), dp(size_t(a.S));
#pragma omp for schedule(dynamic, 1)
    for (int64_t hk = 0; hk < a.Hk; ++hk) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t t = 0; t < a.T; ++t) {
          const int64_t n_keys = a.S - a.T + t + 1;
          const float* q = a.q + t * a.q_t + h * a.q_h;
          const float* dout = g.dout + (t * a.H + h) * a.dv;
          float m = -3.402823466e38f;
          for (int64_t s = 0; s < n_keys; ++s) {
            const float* k = a.k + s * a.k_s + hk * a.k_h;
            float dot = 0;
            dot = dot_product(q, k, a.dk);
            p[size_t(s)] = dot * a.scale;
            m = std::max(m, p[size_t(s)]);
          }
          float sum = 0;
          for (int64_t s = 0; s < n_keys; ++s) {
            p[size_t(s)] = std::exp(p[size_t(s)] - m);
            sum += p[size_t(s)];
          }
          const float inv = 1.0f / sum;
          float pdp = 0;
          for (int64_t s = 0; s < n_keys; ++s) {
            p[size_t(s)] *= inv;
            const float* v = a.v + s * a.v_s + hk * a.v_h;
            float d = 0;
            d = dot_product(dout, v, a.dv);
            dp[size_t(s)] = d;
            pdp += p[size_t(s)] * d;
          }
          float* dq = g.dq + (t * a.H + h) * a.dk;
          std::fill_n(dq, a.dk, 0.0f);
          for (int64_t s = 0; s < n_keys; ++s) {
            const float ds = p[size_t(s)] * (dp[size_t(s)] - pdp) * a.scale;
            const float* k = a.k + s * a.k_s + hk * a.k_h;
            float* dk = g.dk + (s * a.Hk + hk) * a.dk;
            for (int64_t i = 0; i < a.dk; ++i) {
              dq[i] += ds * k[i];
              dk[i] += ds * q[i];
            }
            float* dv = g.dv + (s * a.Hk + hk) * a.dv;
            const float ps = p[size_t(s)];
            for (int64_t j = 0; j < a.dv; ++j) dv[j] += ps * dout[j];
          }
        }
      }
    }
  }
}

}  // namespace dseek::ops::cpu
