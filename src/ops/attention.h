// Causal scaled-dot-product attention, f32, one sequence. q [T, H, dk], k [S, Hk, dk],
// v [S, Hk, dv] (any strides, last dimension contiguous; H a multiple of Hk: grouped-query heads
// h share key head h / (H / Hk)). The T queries are the last T of the S positions, so query t
// attends keys 0 .. S − T + t:
//   out[t, h] = Σ_s softmax_s(scale · q[t, h] · k[s, h/g]) · v[s, h/g]
// Returns out [T, H, dv] contiguous. The MLA decode path uses it with Hk = 1 on the latent cache.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

// What a forward can keep for its backward (FlashAttention-2's way): its output and each row's
// log-sum-exp, as the GPU's tensor-core kernels make them (lse2 = m + log2 l, f32 [T, H]). Given
// them, the backward computes D = rowsum(dout ⊙ out) from the kept bf16 output instead of running
// the forward again. Left empty where the forward's path keeps nothing (the CPU, f32, the scalar
// GPU kernels); the backward then recomputes them.
struct AttentionSaved {
  Tensor out, lse2;
};
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                        AttentionSaved* saved = nullptr);

// Backward for dout [T, H, dv] (f32), recomputing the probabilities p (nothing saved):
//   dP = dout·vᵀ,  dS = p ⊙ (dP − rowsum(p ⊙ dP)),  dq = scale·dS·k,  dk = scale·dSᵀ·q,  dv =
//   pᵀ·dout
// with grouped-query heads summed into their shared key/value head. Returns contiguous
// dq [T, H, dk], dk [S, Hk, dk], dv [S, Hk, dv].
struct AttentionGrads {
  Tensor dq, dk, dv;
};
// `saved`: the forward's (see AttentionSaved), or null.
AttentionGrads causal_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         float scale, const Tensor& dout,
                                         const AttentionSaved* saved = nullptr);

// Causal attention of sequences packed back to back, as a training batch holds them: q [N, H, dk],
// k [N, Hk, dk], v [N, Hk, dv] with N = Σ lengths, and query t of a sequence attends keys 0 .. t
// of its own sequence only (a packed document never sees the one before it). The same as
// causal_attention per sequence with each output in its sequence's rows; `saved` covers all N
// rows. The GPU's tensor-core path runs every sequence in one launch a kernel (blocks over all
// heads and sequences, the row tiles with the most keys first): no copies, and the causal
// triangle's short tiles of one sequence fill in beside the long ones of another. Elsewhere (the
// CPU, f32, the scalar kernels) it calls the one-sequence op per sequence.
Tensor causal_attention_packed(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                               const std::vector<int64_t>& lengths,
                               AttentionSaved* saved = nullptr);
AttentionGrads causal_attention_packed_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                float scale, const Tensor& dout,
                                                const std::vector<int64_t>& lengths,
                                                const AttentionSaved* saved = nullptr);

}  // namespace dseek::ops
