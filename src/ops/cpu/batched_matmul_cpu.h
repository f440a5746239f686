// batched_matmul on the CPU (maths and view rules in ops/batched_matmul.h).
#pragma once

#include <cstdint>

#include "ops/batched_matmul.h"

namespace dseek::ops::cpu {

// Views already in gemm_view form; c is fully covered by its view.
void batched_matmul(const float* a, MatrixStrides sa, const float* b, MatrixStrides sb, float* c,
                    MatrixStrides sc, int64_t batch, int64_t m, int64_t n, int64_t k);

}  // namespace dseek::ops::cpu
