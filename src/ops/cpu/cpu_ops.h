// Raw-pointer CPU kernels behind the ops in src/ops/*.h. They know nothing of Tensor: the op
// headers check shapes and dtypes and call these. Each is defined in src/ops/cpu/<op>.cpp with its
// maths in the file's header comment.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cpu {

// y[t, o] = sum_i x[t, i] * w[o * ldw + i], for t < T, o < out. w in F32, BF16 or F16.
void linear_gemv(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);
void linear_gemm(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);

// out[i] = silu(gate[i]) * up[i].
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

}  // namespace dseek::ops::cpu
