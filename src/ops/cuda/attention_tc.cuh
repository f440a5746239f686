// The tensor-core path of causal attention for bf16 activations (attention_tc.cu), which
// attention.cu takes when tc_supported says so and the scalar kernels otherwise.
#pragma once

#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda::attention_tc {

// bf16 head dims (dk, dv) in {64, 128, 192} × {64, 128}; q/k/v 16-byte aligned with strides that
// keep every row 16-byte aligned (cp.async); at most 65535 query heads (grid y).
bool tc_supported(const AttentionArgs& a);
// FlashAttention-2 forward: out [T, H, dv] (bf16); lse2 [T, H] (f32, m + log2 l) too when given.
void tc_forward(const AttentionArgs& a, float* lse2 = nullptr);
// FlashAttention-2 backward: the row statistics (lse2, and D = dout · out), then deterministic
// dk/dv and dq kernels (no float atomics). Without the forward's out and lse2 a forward pass
// makes them; with them a pass over dout and out makes D. g.dout must be 16-byte aligned as well.
void tc_backward(const AttentionGradArgs& g, const void* out = nullptr,
                 const float* lse2 = nullptr);

}  // namespace dseek::ops::cuda::attention_tc
