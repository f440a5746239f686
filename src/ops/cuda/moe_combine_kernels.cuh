// The MoE combine's forward kernels (moe.cu launches them; ops/moe.h has the maths): a token's K
// expert rows summed with their weights in ascending position, and the same followed by the
// residual add and the next layer's RMS norm in one block (ops::moe_combine_add_rms_norm). In a
// header of their own so that the kernel emulator (bench/kernels/combine_norm_emulate.cpp) runs
// this source on host threads beside norm_kernels.cuh's add_rms_norm_kernel.
#pragma once

#include <cstdint>

#include "core/cuda/pdl.cuh"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

constexpr int kMaxCombineK = 64;

// Block (t, c): token t's output columns c·blockDim.x, ... (a decode step has a few tokens, so
// their columns are spread over blocks, one per thread; a prefill's many tokens take a block each,
// which walks the row). The K (position, weight) pairs are read by K threads at once and sorted in
// shared memory: read one by one by thread 0 they were a dozen serial global loads (the kernel
// took 12.1 µs a call at batch 1 in run D's profile).
// Token t's K (position, weight) pairs into shared memory, sorted by position (ascending
// expert, the CPU's summation order). Read by K threads at once: read one by one by thread 0
// they were a dozen serial global loads (the kernel took 12.1 µs a call at batch 1 in run D's
// profile).
__device__ inline void sorted_pairs(const float* weights, const int32_t* position, int64_t K,
                                    int64_t t, int32_t* pos, float* wk, int32_t* pos_in,
                                    float* w_in) {
  for (int k = int(threadIdx.x); k < int(K); k += int(blockDim.x)) {
    pos_in[k] = position[t * K + k];
    w_in[k] = weights[t * K + k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 0; k < int(K); ++k) {  // insertion sort
      const int32_t p = pos_in[k];
      const float v = w_in[k];
      int j = k;
      for (; j > 0 && pos[j - 1] > p; --j) {
        pos[j] = pos[j - 1];
        wk[j] = wk[j - 1];
      }
      pos[j] = p;
      wk[j] = v;
    }
  }
  __syncthreads();
}

// Column j of token t's combined output in f32: Σ_k y[pos_k, j]·w_k in the sorted order, then
// `add` (the shared experts' row) where given.
template <typename T>
__device__ __forceinline__ float combine_column(const T* y, const int32_t* pos, const float* wk,
                                                int64_t K, int64_t D, const T* add, int64_t t,
                                                int64_t j) {
  float acc = 0.0f;
#pragma unroll 4
  for (int k = 0; k < int(K); ++k) {
    // The product is rounded before the sum, as on the CPU (no fused multiply-add).
    if (pos[k] >= 0) acc += __fmul_rn(to_f32(y[int64_t(pos[k]) * D + j]), wk[k]);
  }
  if (add) acc += to_f32(add[t * D + j]);
  return acc;
}

// Block (t, c): token t's output columns c·blockDim.x, ... (a decode step has a few tokens, so
// their columns are spread over blocks, one per thread; a prefill's many tokens take a block each,
// which walks the row).
template <typename T>
__global__ void combine_kernel(const T* y, const float* weights, const int32_t* position, int64_t K,
                               int64_t D, const T* add, T* out) {
  __shared__ int32_t pos[kMaxCombineK], pos_in[kMaxCombineK];
  __shared__ float wk[kMaxCombineK], w_in[kMaxCombineK];
  const int64_t t = blockIdx.x;
  sorted_pairs(weights, position, K, t, pos, wk, pos_in, w_in);
  const int64_t stride = int64_t(gridDim.y) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; j < D; j += stride)
    out[t * D + j] = from_f32<T>(combine_column(y, pos, wk, K, D, add, t, j));
}

// combine_kernel, the residual add and the next norm of token t in one block (a MoE layer's end
// in a decode step: Block::finish's add_rms_norm without a launch of its own): out = combined +
// residual, rounded as add_rms_norm_kernel rounds it, and normed = rms_norm(out) with that
// kernel's loops and block size (row_block_threads), so the same bits as the two kernels.
template <typename T>
__global__ void combine_add_rms_norm_kernel(const T* y, const float* weights,
                                            const int32_t* position, int64_t K, int64_t D,
                                            const T* add, const T* residual, const void* w,
                                            DType w_dtype, float eps, T* out, T* normed) {
  __shared__ int32_t pos[kMaxCombineK], pos_in[kMaxCombineK];
  __shared__ float wk[kMaxCombineK], w_in[kMaxCombineK];
  __shared__ float scratch[32];
  dseek::cuda::pdl_trigger();  // a projection after it may start loading its weights (pdl.cuh)
  const int64_t t = blockIdx.x;
  sorted_pairs(weights, position, K, t, pos, wk, pos_in, w_in);
  T* o = out + t * D;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const T combined = from_f32<T>(combine_column(y, pos, wk, K, D, add, t, j));
    const T sum = from_f32<T>(to_f32(combined) + to_f32(residual[t * D + j]));
    o[j] = sum;
    const float v = to_f32(sum);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / float(D) + eps);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
    normed[t * D + j] = from_f32<T>(load_weight(w, w_dtype, j) * (to_f32(o[j]) * r));
}

}  // namespace dseek::ops::cuda
