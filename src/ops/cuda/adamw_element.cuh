// One AdamW element on the GPU (ops/adamw.h's operations, each rounded to nearest: no
// contraction) and the moment arrays it reads and writes (f32, or bf16 bits). Shared by the
// multi-tensor step (adamw.cu) and the step that also writes the weights' FP8 images (fp8.cu).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

// One element's update (ops/adamw.h's operations, each rounded to nearest: no contraction).
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float grad,
                                              const AdamWScalars& s, float decay) {
  const float g = __fmul_rn(grad, s.grad_scale);
  m = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(s.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

__device__ __forceinline__ uint16_t bf16_bits(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

// A moment array: f32, or bf16 (BF16 = true: the f32 pointer of the table holds bf16 bits), read
// as f32 and stored rounded to nearest even — cpu::adamw_update_bf16_moments's conversions.
template <bool BF16>
struct MomentArray {
  float* p;
  __device__ __forceinline__ float load(int64_t k) const {
    if constexpr (BF16)
      return __uint_as_float(uint32_t(reinterpret_cast<const uint16_t*>(p)[k]) << 16);
    else
      return p[k];
  }
  __device__ __forceinline__ void store(int64_t k, float x) const {
    if constexpr (BF16)
      reinterpret_cast<uint16_t*>(p)[k] = bf16_bits(x);
    else
      p[k] = x;
  }
  __device__ __forceinline__ float4 load4(int64_t k) const {
    if constexpr (BF16) {
      const uint2 u = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(p) + k);
      return {__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
              __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u)};
    } else {
      return *reinterpret_cast<const float4*>(p + k);
    }
  }
  __device__ __forceinline__ void store4(int64_t k, float4 x) const {
    if constexpr (BF16) {
      const uint2 u{uint32_t(bf16_bits(x.x)) | uint32_t(bf16_bits(x.y)) << 16,
                    uint32_t(bf16_bits(x.z)) | uint32_t(bf16_bits(x.w)) << 16};
      *reinterpret_cast<uint2*>(reinterpret_cast<uint16_t*>(p) + k) = u;
    } else {
      *reinterpret_cast<float4*>(p + k) = x;
    }
  }
};

}  // namespace dseek::ops::cuda
