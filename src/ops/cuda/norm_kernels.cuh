// RMSNorm's forward kernels (norm.cu launches them; ops/norm.h has the maths): one block a row
// of row_block_threads(D) threads, whose block_sum fixes the bits. In a header of their own so
// that moe_combine_kernels.cuh's fused kernel can be checked against add_rms_norm_kernel on host
// threads (bench/kernels/combine_norm_emulate.cpp).
#pragma once

#include <cstdint>

#include "core/cuda/pdl.cuh"
#include "ops/cuda/element.cuh"
#include "ops/cuda/reduce.cuh"

namespace dseek::ops::cuda {

template <typename T>
__global__ void rms_norm_kernel(const T* x, const void* w, DType w_dtype, T* y, int64_t D,
                                float eps) {
  __shared__ float scratch[32];
  dseek::cuda::pdl_trigger();  // a projection after it may start loading its weights (pdl.cuh)
  const T* xr = x + blockIdx.x * D;
  T* yr = y + blockIdx.x * D;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const float v = to_f32(xr[j]);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / float(D) + eps);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
    yr[j] = from_f32<T>(load_weight(w, w_dtype, j) * (to_f32(xr[j]) * r));
}

// rms_norm_kernel over h + x: each thread stores the rounded sum and squares that value, then
// reads back its own elements (the same loops, so the same bits as add_inplace then rms_norm).
template <typename T>
__global__ void add_rms_norm_kernel(T* h, const T* x, const void* w, DType w_dtype, T* y, int64_t D,
                                    float eps) {
  __shared__ float scratch[32];
  dseek::cuda::pdl_trigger();  // a projection after it may start loading its weights (pdl.cuh)
  T* hr = h + blockIdx.x * D;
  const T* xr = x + blockIdx.x * D;
  T* yr = y + blockIdx.x * D;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const T sum = from_f32<T>(to_f32(hr[j]) + to_f32(xr[j]));
    hr[j] = sum;
    const float v = to_f32(sum);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / float(D) + eps);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
    yr[j] = from_f32<T>(load_weight(w, w_dtype, j) * (to_f32(hr[j]) * r));
}

}  // namespace dseek::ops::cuda
