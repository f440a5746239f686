// Rotary position embedding, applied in place to x [T, H, d] (f32, or bf16 on a GPU, computed in
// f32 there; any strides, last dimension contiguous): token t sits at position pos0 + t. With
// θ_j = pos · inv_freq[j] (j < d/2), cos_j = cos(θ_j)·scaling, sin_j = sin(θ_j)·scaling
// (transformers' attention_scaling, 1 except under YaRN), rotate-half as in transformers'
// apply_rotary_pos_emb:
//   y[j]       = x[j]·cos_j − x[j + d/2]·sin_j
//   y[j + d/2] = x[j + d/2]·cos_j + x[j]·sin_j
// `interleaved` first de-interleaves each row (x[2j] → j, x[2j+1] → d/2 + j), as transformers'
// apply_rotary_pos_emb_interleave does for DeepSeek-V3 checkpoints (and equivalent, up to that
// fixed permutation of the output, to DeepSeek-V2's complex rotation of pairs (x[2j], x[2j+1])).
// The output stays in the de-interleaved layout; q and k get the same layout, so q·k is unchanged.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

void rope_inplace(const Tensor& x, int64_t pos0, const std::vector<float>& inv_freq, float scaling,
                  bool interleaved);

// The same rotation with token t at position positions[t]: positions i64 [T] contiguous on x's
// device (continuous batching rotates the rows of many sequences, each at its own positions, in
// one call). Positions are checked (≥ 0) on the CPU; on a GPU they come from the caller's own
// bookkeeping, and reading them back would cost a synchronisation per call.
void rope_inplace(const Tensor& x, const Tensor& positions, const std::vector<float>& inv_freq,
                  float scaling, bool interleaved);

// dst = RoPE(src) with token t at positions[t]: the rotation of rope_inplace written elsewhere (the
// absorbed decode's query rotates q_pe straight into its place in q_abs). src and dst [T, H, d] of
// one dtype and device, last dimension contiguous, any other strides, not overlapping; src is left
// as it was. The same bits as dst.copy_from(src) then rope_inplace(dst, positions, ...).
void rope_copy(const Tensor& src, const Tensor& dst, const Tensor& positions,
               const std::vector<float>& inv_freq, float scaling, bool interleaved);
// rope_copy's checks of its arguments, throwing as it does (for ops that rotate as rope_copy
// does inside another kernel: ops::absorb_query_into).
void check_rope_copy(const Tensor& src, const Tensor& dst, const Tensor& positions,
                     const std::vector<float>& inv_freq);

// The inverse frequencies uploaded to the GPU once per distinct set and kept (a GPU build only):
// for other ops whose kernels rotate (ops/mla_cache.h).
const float* rope_device_frequencies(const std::vector<float>& inv_freq);

// Backward, in place: turns dy (the gradient of the rotated output, de-interleaved layout) into dx
// (the gradient of the input, in the input's layout). The forward is y = s·R(θ)·P·x with P the
// de-interleaving permutation (identity unless `interleaved`) and R a rotation, so
//   dx = Pᵀ·s·R(θ)ᵀ·dy = Pᵀ·s·R(−θ)·dy:  the same rotation with −sin, then re-interleaving
//   dx[2j] = z[j], dx[2j+1] = z[j + d/2].
// Same arguments as the forward (YaRN enters only through inv_freq and scaling).
void rope_backward_inplace(const Tensor& dy, int64_t pos0, const std::vector<float>& inv_freq,
                           float scaling, bool interleaved);

}  // namespace dseek::ops
