// The deterministic reductions of the NCCL group (dist/nccl_process_group.h): N copies of a block,
// received one after another, added in rank order on the GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dseek::dist {

// out[i] = Σ_q copies[q·n + i], added in rank order q = 0, 1, ..., ranks−1 in f32 (the order and
// arithmetic of the MPI group's sum_in_rank_order). out may not overlap copies. Runs on `stream`.
void sum_in_rank_order_gpu(const float* copies, int ranks, int64_t n, float* out,
                           cudaStream_t stream);

}  // namespace dseek::dist
