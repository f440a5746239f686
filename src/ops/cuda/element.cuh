// Loading and storing activations and weights of any dtype as f32 inside CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cuda {

// Activations: f32 or bf16, a compile-time choice (kernels are instantiated for both).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Weights: the stored dtype at run time (f32, bf16, f16, fp8 e4m3).
__device__ __forceinline__ float load_weight(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::F8_E4M3: {
      __nv_fp8_e4m3 v;
      v.__x = static_cast<const __nv_fp8_storage_t*>(p)[i];
      return float(v);
    }
    default: return static_cast<const float*>(p)[i];
  }
}

// Eight bf16 values of one 16-byte word, widened to f32 and rounded back (round to nearest even,
// as from_f32): element-wise kernels move 8 values a load where the arrays allow it.
struct Bf16x8 {
  float v[8];
  __device__ __forceinline__ void load(const __nv_bfloat16* p) {
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(h[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  }
  __device__ __forceinline__ void store(__nv_bfloat16* p) const {
    uint4 w;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&w);
#pragma unroll
    for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = w;
  }
};

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

}  // namespace dseek::ops::cuda

// DSEEK_DISPATCH_ACT(act, T, body): runs body with T = float or __nv_bfloat16.
#define DSEEK_DISPATCH_ACT(act, T, ...)                  \
  do {                                                   \
    if ((act) == ::dseek::DType::BF16) {                 \
      using T = __nv_bfloat16;                           \
      __VA_ARGS__;                                       \
    } else {                                             \
      using T = float;                                   \
      __VA_ARGS__;                                       \
    }                                                    \
  } while (0)
