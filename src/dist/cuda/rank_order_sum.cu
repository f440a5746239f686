#include <algorithm>

#include "core/cuda/cuda_check.h"
#include "dist/cuda/rank_order_sum.h"

namespace dseek::dist {
namespace {

__global__ void sum_in_rank_order_kernel(const float* copies, int ranks, int64_t n, float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float s = copies[i];
    for (int q = 1; q < ranks; ++q) s = __fadd_rn(s, copies[int64_t(q) * n + i]);
    out[i] = s;
  }
}

}  // namespace

void sum_in_rank_order_gpu(const float* copies, int ranks, int64_t n, float* out,
                           cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 4096);
  sum_in_rank_order_kernel<<<int(blocks), threads, 0, stream>>>(copies, ranks, n, out);
  DSEEK_CUDA_CHECK_LAUNCH("sum_in_rank_order_kernel");
}

}  // namespace dseek::dist
