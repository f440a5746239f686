// ops::prefetch_l2 (ops/l2_prefetch.h): a few blocks walk the ranges' 128-byte lines, one
// prefetch.global.L2 a line (gemv_dot.cuh's prefetch_l2): nothing waits on them, so the kernel
// ends once it has asked and the lines arrive as HBM serves them.
#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/gemv_dot.cuh"
#include "ops/cuda/l2_prefetch.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kThreads = 256;
// Few blocks: the kernel runs beside the decode step's small kernels and only issues requests.
constexpr int kBlocks = 16;
constexpr int64_t kLine = 128;

struct PrefetchArgs {
  const char* data[kPrefetchRanges];
  int64_t lines[kPrefetchRanges];
  int n;
};

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(PrefetchArgs a) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int i = 0; i < a.n; ++i)
    for (int64_t l = first; l < a.lines[i]; l += stride) prefetch_l2(a.data[i] + l * kLine);
}

}  // namespace

void prefetch_l2(const void* const* data, const int64_t* bytes, int64_t n) {
  for (int64_t begin = 0; begin < n; begin += kPrefetchRanges) {
    PrefetchArgs a{};
    for (int64_t i = begin; i < std::min<int64_t>(n, begin + kPrefetchRanges); ++i) {
      if (bytes[i] <= 0) continue;
      a.data[a.n] = static_cast<const char*>(data[i]);
      a.lines[a.n] = (bytes[i] + kLine - 1) / kLine;
      ++a.n;
    }
    if (a.n == 0) continue;
    l2_prefetch_kernel<<<kBlocks, kThreads, 0, dseek::cuda::stream()>>>(a);
    DSEEK_CUDA_CHECK_LAUNCH("l2_prefetch_kernel");
  }
}

}  // namespace dseek::ops::cuda
