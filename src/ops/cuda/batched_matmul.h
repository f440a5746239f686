// batched_matmul on the GPU (maths and view rules in ops/batched_matmul.h): one strided-batched
// cuBLASLt GEMM, implemented in linear.cpp beside the other cuBLASLt calls. Host code only.
//
// Its algorithm is chosen by timing: on a problem's first call the heuristic's best few
// candidates each run once (they all write the same C, overwritten, so the result stands) and the
// fastest is kept for the problem. The heuristic's first choice alone was seen to be slow on the
// skinny and short-K products structured operators are made of (a low-rank layer's [T, d]·[d, r]).
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/batched_matmul.h"

namespace dseek::ops::cuda {

// Views already in gemm_view form; act f32 or bf16; c overwritten.
void batched_matmul(const void* a, MatrixStrides sa, const void* b, MatrixStrides sb, void* c,
                    MatrixStrides sc, int64_t batch, int64_t m, int64_t n, int64_t k, DType act);

}  // namespace dseek::ops::cuda
