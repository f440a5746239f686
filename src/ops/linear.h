// linear: y = x · Wᵀ (+ b). x [..., in] f32 (leading dimensions are flattened into T), W [out, in]
// in f32, bf16 or f16 (as stored, e.g. memory-mapped; rows may be strided, columns contiguous),
// b [out] (any float dtype) or none. Returns y [..., out] f32.
// Small T (decode) runs a multi-threaded GEMV that converts W on the fly (memory-bound: W is read
// once); larger T converts blocks of W to f32 and calls OpenBLAS sgemm (compute-bound).
// On CUDA x is f32 or bf16 (act), W must be in act too (cuBLASLt bf16 GEMM with f32 accumulation,
// or true f32), y comes back in act; the bias (f32, bf16 or f16) is added by the GEMM's epilogue.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias = nullptr);

// y = f32(x)·Wᵀ in f32 for x [..., in] in any activation dtype, W as linear takes it beside f32
// activations (widening is exact, so this is linear(x.to(F32), W)): a MoE router's logits, which
// transformers computes in f32 whatever the model's dtype. On CUDA (W f32) a few bf16 rows (a
// decode step) run one kernel that widens x as it reads it instead of a conversion and a GEMM.
Tensor linear_widened(const Tensor& x, const Tensor& weight);

// Backward of y = x·Wᵀ + b for an upstream gradient dy [..., out] (f32, x's leading shape):
//   dx = dy·W [..., in],   dW = dyᵀ·x [out, in],   db = Σ_t dy[t] [out]
// (OpenBLAS sgemm, f32 accumulation; a bf16/f16 W is converted in row blocks). Gradients are f32
// whatever W's dtype: training keeps f32 master weights. On CUDA dy and dx are in act (x's dtype)
// while dW and db stay f32.
struct LinearGrads {
  Tensor dx, dweight, dbias;  // dbias only when asked for
};
LinearGrads linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy,
                            bool with_bias = false);

// The same into caller-owned contiguous tensors of the right shapes (dx in act, dW f32 or bf16,
// db f32); a null pointer skips that gradient (a frozen weight, an input that needs none). With
// `accumulate` each gradient is added to what the tensor holds (gradient accumulation; an input
// used twice), else it is overwritten. A bf16 dW is the f32 sum rounded (on the GPU over bf16
// inputs, rounded before the old value is added, as PyTorch accumulates bf16 gradients).
void linear_backward_into(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor* dx,
                          Tensor* dweight, Tensor* dbias, bool accumulate);

// Largest T that takes the GEMV path (exposed so tests can cover both paths).
inline constexpr int64_t kLinearGemvMaxTokens = 4;

}  // namespace dseek::ops
