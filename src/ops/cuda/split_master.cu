// Split f32 masters on the GPU (ops/split_master.h): four elements a thread where the arrays
// allow, else one.
#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/split_bits.h"

namespace dseek::ops::cuda {

using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items) {
  return unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, 1 << 20));
}

__global__ void split_master_kernel(const float* value, uint16_t* high, uint16_t* low, int64_t n,
                                    bool quads) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (quads) {
    for (int64_t q = first; q < n / 4; q += stride) {
      const uint4 b = reinterpret_cast<const uint4*>(value)[q];
      reinterpret_cast<uint2*>(high)[q] = {
          uint32_t(split_high(b.x)) | uint32_t(split_high(b.y)) << 16,
          uint32_t(split_high(b.z)) | uint32_t(split_high(b.w)) << 16};
      reinterpret_cast<uint2*>(low)[q] = {uint32_t(split_low(b.x)) | uint32_t(split_low(b.y)) << 16,
                                          uint32_t(split_low(b.z)) | uint32_t(split_low(b.w))
                                                                         << 16};
    }
    tail = n / 4 * 4;
  }
  for (int64_t i = tail + first; i < n; i += stride) {
    const uint32_t b = __float_as_uint(value[i]);
    high[i] = split_high(b);
    low[i] = split_low(b);
  }
}

__global__ void join_master_kernel(const uint16_t* high, const uint16_t* low, float* value,
                                   int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    value[i] = __uint_as_float(join_bits(high[i], low[i]));
}

}  // namespace

void split_master(const float* value, uint16_t* high, uint16_t* low, int64_t n) {
  if (n == 0) return;
  const bool quads =
      ((reinterpret_cast<uintptr_t>(value) & 15) |
       ((reinterpret_cast<uintptr_t>(high) | reinterpret_cast<uintptr_t>(low)) & 7)) == 0;
  split_master_kernel<<<blocks_for(quads ? n / 4 + 1 : n), kThreads, 0, stream()>>>(value, high,
                                                                                    low, n, quads);
  DSEEK_CUDA_CHECK_LAUNCH("split_master_kernel");
}

void join_master(const uint16_t* high, const uint16_t* low, float* value, int64_t n) {
  if (n == 0) return;
  join_master_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(high, low, value, n);
  DSEEK_CUDA_CHECK_LAUNCH("join_master_kernel");
}

}  // namespace dseek::ops::cuda
