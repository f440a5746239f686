// The two ops of MLA's absorbed decode (model/mla.h has the maths; DeepSeek's inference/model.py
// "absorb" path, FlashMLA for the attention):
//  - mla_decode: attention of T new queries over one sequence's latent cache rows, one key/value
//    head shared by all H query heads. q_abs [T, H, r + rope] (any strides, last dim contiguous),
//    latent [S, r + rope] (rows [c_kv; k_pe], row stride free, last dim contiguous), S ≥ T; the T
//    queries are the last T of the S positions, so query t attends rows 0 .. S − T + t:
//      out[t, h] = Σ_s softmax_s(scale · q_abs[t, h] · latent[s]) · latent[s, :r]
//    Returns out [T, H, r] contiguous, in q_abs's dtype. The same maths as
//    ops::causal_attention(q_abs, latent as [S, 1, r + rope], its first r columns, scale); the
//    point of a separate op is the GPU kernel, which reads each latent row once for many heads
//    and uses it as key and value alike.
//  - head_matmul: the absorbed projections, one matrix per head:
//      out[t, h, :] = x[t, h, :] · w[h]   for x [T, H, K] (any strides, last dim contiguous) and
//    w [H, K, N] contiguous; returns out [T, H, N] contiguous in x's dtype (f32 accumulation),
//    or writes it into a given view (head_matmul_into).
//    MLA uses it for q_abs = q_nope · W_UK[h] and for W_UV[h]ᵀ applied to the latent output.
// On the CPU everything is f32; on the GPU f32 or bf16 (act), w in act too.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

Tensor mla_decode(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale);
// The same over a cache's storage: latent [capacity, r + rope] and positions i64 [T] (on
// latent's device; consecutive, as a cache writes them) of the T queries; the keys are rows
// 0 .. positions[T − 1]. On the GPU that count is read on the device (the launch depends on the
// capacity only, so a CUDA graph replays it at every length); the caller guarantees it lies in
// [T, capacity] (KVCache::device_positions does).
Tensor mla_decode(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                  const Tensor& positions);
// head_matmul(mla_decode(q_abs, latent, rank, scale, positions), w) for w [H, rank, N] (MLA's
// latent output times W_UV[h]ᵀ): [T, H, N]. On a GPU where the tensor-core decode splits the keys
// and the per-head GEMV takes the product, the GEMV joins the splits itself (no combine kernel,
// no latent output in memory): the same bits as the two ops.
Tensor mla_decode_project(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                          const Tensor& positions, const Tensor& w);

Tensor head_matmul(const Tensor& x, const Tensor& w);
// The same into out, a [T, H, N] view of x's dtype and device with a contiguous last dimension
// (e.g. the first N columns of a wider [T, H, ·] tensor: MLA's absorbed query, written in place).
void head_matmul_into(const Tensor& x, const Tensor& w, const Tensor& out);

// The absorbed query of a decode step in one call: head_matmul_into(q_nope, w, out_nope) and
// rope_copy(q_pe, out_pe, positions, inv_freq, scaling, interleaved) (MLA: q_nope·W_UK into
// q_abs's first r columns, q_pe rotated into the rest). The same checks and bits as the two ops;
// on a GPU where the per-head GEMV takes the product (bf16, a few rows) one launch does both.
void absorb_query_into(const Tensor& q_nope, const Tensor& w, const Tensor& out_nope,
                       const Tensor& q_pe, const Tensor& out_pe, const Tensor& positions,
                       const std::vector<float>& inv_freq, float scaling, bool interleaved);

}  // namespace dseek::ops
