// Causal attention over a paged cache, f32, for a batch of sequences (continuous batching). The
// keys and values of every sequence live in one pool of rows, `page_tokens` positions per page;
// a sequence reaches position p through its page table: row pages[p / page_tokens] · page_tokens
// + p % page_tokens of the pool. Sequence i brings T_i new queries (rows of q, sequences in
// order) at positions pos0_i .. pos0_i + T_i − 1; query t attends keys 0 .. pos0_i + t:
//   out[row, h] = Σ_s softmax_s(scale · q[row, h] · k[s, h/g]) · v[s, h/g]
// exactly ops::causal_attention over the sequence's gathered rows (S = pos0 + T). Grouped-query
// heads h share key/value head h / (H / Hk); the key head hk of a pool row is its values
// hk·dk .. (hk+1)·dk (likewise values with dv). MLA's absorbed decode uses Hk = 1 with keys the
// latent [c_kv; k_pe] rows and values a view of their first kv_lora_rank columns.
#pragma once

#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace dseek::ops {

struct PagedAttentionSeq {
  int64_t T = 0;                   // new queries (q rows) of this sequence
  int64_t pos0 = 0;                // position of its first new query
  std::span<const int32_t> pages;  // page table; must cover pos0 + T positions
};

// q [ΣT, H, dk] (last dim contiguous), keys [rows, Hk·dk] and values [rows, Hk·dv] (row stride
// free, last dim contiguous; rows = num_pages · page_tokens). Returns out [ΣT, H, dv] contiguous.
Tensor paged_attention(const Tensor& q, const Tensor& keys, const Tensor& values, int64_t kv_heads,
                       int64_t page_tokens, std::span<const PagedAttentionSeq> seqs, float scale);

}  // namespace dseek::ops
