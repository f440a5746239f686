// rms_norm: y = w ⊙ x / sqrt(mean(x²) + eps) over the last dimension, as transformers'
// DeepseekV3RMSNorm / LlamaRMSNorm in f32. x [..., D] f32 (or bf16 on the GPU: y in x's dtype,
// computed in f32); w [D] in any float dtype (as stored), on x's device.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// h += x, then rms_norm(h): a decoder layer's residual add and the norm that reads its result, in
// one pass (one kernel on the GPU instead of two; decoding launches ~30 small kernels a layer).
// The same bits as ops::add_inplace(h, x) followed by rms_norm(h, weight, eps): h holds the sum
// rounded to its dtype and the norm reads that. h contiguous, x of h's shape and dtype.
Tensor add_rms_norm(Tensor& h, const Tensor& x, const Tensor& weight, double eps);

// Backward for dy [..., D] (f32), with r = (mean(x²) + eps)^(-1/2) per row and g = w ⊙ dy:
//   dx = r·g − (r³/D)·(Σ_j g_j x_j)·x,   dw = Σ_rows dy ⊙ x·r
// (the second term is the gradient through r: ∂r/∂x_i = −r³·x_i/D). f32, sums per row in f32.
struct RmsNormGrads {
  Tensor dx, dweight;
};
RmsNormGrads rms_norm_backward(const Tensor& x, const Tensor& weight, double eps, const Tensor& dy);
// Into caller-owned f32 contiguous tensors: dx is overwritten; dweight (may be null) is added to
// with `accumulate_dweight`, else overwritten.
void rms_norm_backward_into(const Tensor& x, const Tensor& weight, double eps, const Tensor& dy,
                            Tensor& dx, Tensor* dweight, bool accumulate_dweight);

}  // namespace dseek::ops
