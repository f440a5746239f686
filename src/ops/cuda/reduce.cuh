// Block-wide reductions for the CUDA kernels (warp shuffles, then one value per warp in shared
// memory). blockDim.x must be a multiple of 32, at most 1024.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace dseek::ops::cuda {

// Threads for a block that reduces one row of n values (a thread per value, whole warps, at most
// 1024). The kernels whose results must match bit for bit (rms_norm and the MLA cache append) take
// it from here: a block_sum's bits depend on the block size.
inline int row_block_threads(int64_t n) {
  const int64_t warps = (n + 31) / 32;
  return int(warps < 1 ? 32 : warps > 32 ? 1024 : warps * 32);
}

// float or double; a block's double sums are the gradient norm's (the tree is fixed, so the result
// does not depend on timing).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets the sum. `scratch` holds 32 values; safe to call repeatedly.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace dseek::ops::cuda
