// batched_matmul: C[b, i, j] = Σ_k A[b, i, k] · B[b, j, k]  for b < batch, i < m, j < n, over
// strided views of contiguous tensors — the one GEMM a synthesised operator's contraction is when
// its operands are strided views of its registers (synth/lower.h), so no operand is copied into a
// [batch, m, k] layout first and the result lands in the layout the next step reads.
//
// A view is three element strides from the tensor's first element: (batch, row, col). Per matrix
// one of row/col must be 1 (the other is its leading dimension, at least the unit dim's extent);
// a dim of extent 1 may have any stride (it is never stepped). A batch stride of 0 broadcasts
// the operand over the batch (a weight shared by every token). C's view must cover every element
// of c exactly once (so nothing of c is left stale); A's and B's must stay inside their tensors.
// All three tensors share one dtype and device: f32 on the CPU (OpenBLAS sgemm per batch, blocks
// of rows per thread: every element one sgemm's dot product), f32 or bf16 on CUDA (one
// strided-batched cuBLASLt GEMM, f32 accumulation; the problem's algorithm is picked by timing the
// heuristic's candidates on first use, see cuda/batched_matmul.h; k <= 16: a direct kernel,
// cuda/batched_matmul_small.h). c is overwritten.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace dseek::ops {

struct MatrixStrides {
  int64_t batch = 0, row = 0, col = 0;
};

void batched_matmul(const Tensor& a, MatrixStrides sa, const Tensor& b, MatrixStrides sb,
                    const Tensor& c, MatrixStrides sc, int64_t batch, int64_t m, int64_t n,
                    int64_t k);

// Makes `s` (the strides of a [rows, cols] matrix of a batch of `batch`) the form the GEMM
// libraries take: an extent-1 dim gets the stride that makes the matrix plainly row- or
// column-major, a batch of 1 stride 0. False when no row/col stride is 1 or the leading dimension
// is shorter than the unit dim (then the view is not one GEMM operand). The lowering asks this
// before it plans a contraction as one batched_matmul.
bool gemm_view(MatrixStrides& s, int64_t batch, int64_t rows, int64_t cols);

}  // namespace dseek::ops
