// linear: y = x · Wᵀ (+ b). x [..., in] f32 (leading dimensions are flattened into T), W [out, in]
// in f32, bf16 or f16 (as stored, e.g. memory-mapped; rows may be strided, columns contiguous),
// b [out] (any float dtype) or none. Returns y [..., out] f32.
// Small T (decode) runs a multi-threaded GEMV that converts W on the fly (memory-bound: W is read
// once); larger T converts blocks of W to f32 and calls OpenBLAS sgemm (compute-bound).
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias = nullptr);

// Largest T that takes the GEMV path (exposed so tests can cover both paths).
inline constexpr int64_t kLinearGemvMaxTokens = 4;

}  // namespace dseek::ops
