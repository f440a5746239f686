// paged attention, CPU, f32 — ops/cpu/attention.cpp's causal attention (softmax(scale · q kᵀ) v
// over the visible keys, max-subtracted, f32 accumulation) with keys and values reached through a
// page table, for many sequences in one call (vLLM's PagedAttention; FlashMLA's paged latent
// decode for Hk = 1).
// Work items are (query row, key head, block of up to kHeadBlock query heads of that key head):
// the heads of a block read each key and value row once, so MLA's 128 heads on one latent head do
// not stream the sequence's cache 128 times. Items are spread over OpenMP threads dynamically,
// since their cost grows with the row's position; each thread keeps one score buffer.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/dot_product.h"

namespace dseek::ops::cpu {
namespace {

constexpr int64_t kHeadBlock = 8;

}  // namespace

void paged_attention(const PagedAttentionArgs& a) {
  const int64_t group = a.H / a.Hk;
  const int64_t blocks = (group + kHeadBlock - 1) / kHeadBlock;
  const int64_t rows = a.q_start[a.n_seqs];
  std::vector<int64_t> seq_of_row(static_cast<size_t>(rows));
  int64_t max_keys = 0, work = 0;
  for (int64_t i = 0; i < a.n_seqs; ++i) {
    for (int64_t r = a.q_start[i]; r < a.q_start[i + 1]; ++r) seq_of_row[size_t(r)] = i;
    const int64_t T = a.q_start[i + 1] - a.q_start[i];
    max_keys = std::max(max_keys, a.pos0[i] + T);
    work += T * (a.pos0[i] + T);
  }
  const int64_t n_items = rows * a.Hk * blocks;
  // Below ~2^17 multiply-adds a parallel region costs more than it saves.
#pragma omp parallel if (work * a.H * (a.dk + a.dv) >= (1 << 17))
  {
    std::vector<float> scores(size_t(kHeadBlock * max_keys));
    std::vector<float> acc(size_t(kHeadBlock * a.dv));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t row = item / (a.Hk * blocks);
      const int64_t hk = (item / blocks) % a.Hk;
      const int64_t h0 = hk * group + (item % blocks) * kHeadBlock;
      const int64_t nh = std::min(kHeadBlock, (hk + 1) * group - h0);
      const int64_t seq = seq_of_row[size_t(row)];
      const int64_t n_keys = a.pos0[seq] + (row - a.q_start[seq]) + 1;
      const int32_t* pages = a.page_table + a.page_start[seq];
      const float* q = a.q + row * a.q_t + h0 * a.q_h;

      float m[kHeadBlock];
      std::fill_n(m, kHeadBlock, -3.402823466e38f);
      // Keys page by page: no division per key (it would cost more than a short dot product).
      for (int64_t s0 = 0; s0 < n_keys; s0 += a.page_tokens) {
        const int64_t first_row = int64_t(pages[s0 / a.page_tokens]) * a.page_tokens;
        const int64_t n = std::min(a.page_tokens, n_keys - s0);
        for (int64_t i = 0; i < n; ++i) {
          const float* k = a.k + (first_row + i) * a.k_row + hk * a.dk;
          for (int64_t j = 0; j < nh; ++j) {
            const float sc = dot_product(q + j * a.q_h, k, a.dk) * a.scale;
            scores[size_t(j * max_keys + s0 + i)] = sc;
            m[j] = std::max(m[j], sc);
          }
        }
      }
      float inv[kHeadBlock];
      for (int64_t j = 0; j < nh; ++j) {
        float* sj = scores.data() + j * max_keys;
        float sum = 0;
        for (int64_t s = 0; s < n_keys; ++s) {
          sj[s] = std::exp(sj[s] - m[j]);
          sum += sj[s];
        }
        inv[j] = 1.0f / sum;
      }
      std::fill_n(acc.begin(), nh * a.dv, 0.0f);
      for (int64_t s0 = 0; s0 < n_keys; s0 += a.page_tokens) {
        const int64_t first_row = int64_t(pages[s0 / a.page_tokens]) * a.page_tokens;
        const int64_t n = std::min(a.page_tokens, n_keys - s0);
        for (int64_t i = 0; i < n; ++i) {
          const float* v = a.v + (first_row + i) * a.v_row + hk * a.dv;
          for (int64_t j = 0; j < nh; ++j) {
            const float p = scores[size_t(j * max_keys + s0 + i)];
            float* aj = acc.data() + j * a.dv;
            for (int64_t d = 0; d < a.dv; ++d) aj[d] += p * v[d];
          }
        }
      }
      for (int64_t j = 0; j < nh; ++j) {
        float* out = a.out + (row * a.H + h0 + j) * a.dv;
        const float* aj = acc.data() + j * a.dv;
        for (int64_t d = 0; d < a.dv; ++d) out[d] = aj[d] * inv[j];
      }
    }
  }
}

}  // namespace dseek::ops::cpu
