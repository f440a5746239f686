// Causal attention over a paged cache on the GPU, for a batch of sequences (see
// ops/paged_attention.h; the CPU twin is ops/cpu/paged_attention.cpp). The flash-style forward of
// attention_forward.cuh with one grid plane per sequence (blockIdx.z) and keys reached through the
// sequence's page table. A block holds up to 32 query rows of one key head, so for MLA's absorbed
// decode (Hk = 1, 128 heads, one query per sequence) four blocks per sequence each read every
// latent row once for 32 heads, instead of once per head.
#include "ops/cuda/attention_forward.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

using namespace attention_detail;

void paged_attention(const PagedAttentionArgs& a, DType act) {
  if (a.total_q == 0 || a.n_seqs == 0 || a.H == 0 || a.dv == 0) return;
  ForwardParams p{};
  p.q = a.q;
  p.q_t = a.q_t;
  p.q_h = a.q_h;
  p.k = a.k;
  p.k_s = a.k_row;
  p.k_h = a.dk;
  p.v = a.v;
  p.v_s = a.v_row;
  p.v_h = a.dv;
  p.out = a.out;
  p.H = a.H;
  p.G = a.H / a.Hk;
  p.dk = a.dk;
  p.dv = a.dv;
  p.scale = a.scale;
  p.q_start = a.q_start;
  p.pos0 = a.pos0;
  p.page_table = a.page_table;
  p.page_start = a.page_start;
  p.page_tokens = a.page_tokens;
  attention_forward<true>(p, a.n_seqs, a.max_T, a.max_S, a.total_q, a.Hk, act, "paged_attention");
}

}  // namespace dseek::ops::cuda
