// The down projection of a SwiGLU MLP applied to a stacked gate_up product gu [T, 2I] (model/mlp.h:
// gate_proj's outputs in columns [0, I), up_proj's in [I, 2I)):
//   linear_swiglu(gu, W, b)              = linear(silu_mul(gu[:, :I], gu[:, I:]), W, b)
//   grouped_linear_swiglu(gu, W_e, offs) = grouped_linear(silu_mul(gu[:, :I], gu[:, I:]), W_e,
//   offs)
// with W [out, I]. The same values as the two ops (on the GPU the same bits: h is the silu_mul
// kernel's rounding, then the same GEMV); the point is a decode step on the GPU, where a few bf16
// rows run one weight-streaming kernel that computes h as it reads gu, instead of a silu_mul
// kernel and the product (ops/cuda/gemv.h, grouped_gemv.h). Elsewhere they are the two ops.
#pragma once

#include "core/tensor.h"
#include "ops/moe.h"

namespace dseek::ops {

Tensor linear_swiglu(const Tensor& gu, const Tensor& weight, const Tensor* bias = nullptr);
Tensor grouped_linear_swiglu(const Tensor& gu, const ExpertMatrices& w, const Tensor& offsets);

// Whether the GPU computes silu_mul inside the down projection's GEMV (default) or runs silu_mul
// and the projection as two kernels (for comparisons; the same bits either way).
void set_swiglu_fused(bool on);

}  // namespace dseek::ops
