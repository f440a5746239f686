// batched_matmul's kernel for short sums (k <= kSmallK, ops/batched_matmul.h): one thread per
// element of C reading its k products straight through the strides. Such a product (the
// Kronecker layer's per-token [g, g] · [g, d/g], a rank-1 outer product) moves far more bytes than
// it computes, and cuBLASLt would run it as thousands of tiny tiles. Compiles as C++17 (.cu).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

inline constexpr int64_t kSmallK = 16;

// C[b, i, j] = Σ_{κ<k} A[b, i, κ] · B[b, j, κ] with element strides (batch, row, col) per operand;
// C's row or col stride is 1 (that dim runs across a warp). act f32 or bf16, f32 accumulation.
void batched_matmul_small_k(const void* a, int64_t a_batch, int64_t a_row, int64_t a_col,
                            const void* b, int64_t b_batch, int64_t b_row, int64_t b_col, void* c,
                            int64_t c_batch, int64_t c_row, int64_t c_col, int64_t batch,
                            int64_t m, int64_t n, int64_t k, DType act);

}  // namespace dseek::ops::cuda
