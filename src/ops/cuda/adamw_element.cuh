// One AdamW element on the GPU (ops/adamw.h's operations, each rounded to nearest: no
// contraction) and the moment arrays it reads and writes (f32, or bf16 bits). Shared by the
// multi-tensor step (adamw.cu) and the step that also writes the weights' FP8 images (fp8.cu).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/cuda_ops.h"
#include "ops/split_bits.h"

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

// A kernel's first step: the clip factor from the device where the scalars point at it.
__device__ __forceinline__ void resolve_grad_scale(AdamWScalars& s) {
  if (s.grad_scale_at) s.grad_scale = *s.grad_scale_at;
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

// The gradient as the update reads it. ROWS (`flags` given, ops/grad_rows.h): a row of row_len
// elements whose flag is 0 is known to be zero and is not loaded; quads never straddle rows
// (row_len is a multiple of 4 there). Without ROWS, plain loads (no flag code in the kernel).
template <bool ROWS>
struct GradRows {
  const float* grad;  // bf16 bits where `bf16` (MultiTensorEntry::grad_bf16)
  const uint8_t* flags = nullptr;
  int64_t row_len = 0;
  bool bf16 = false;
  __device__ __forceinline__ bool zero_row(int64_t k) const {
    return ROWS && flags && flags[k / row_len] == 0;
  }
  __device__ __forceinline__ float load(int64_t k) const {
    if (zero_row(k)) return 0.0f;
    return bf16 ? __uint_as_float(uint32_t(reinterpret_cast<const uint16_t*>(grad)[k]) << 16)
                : grad[k];
  }
  __device__ __forceinline__ float4 load4(int64_t k) const {
    if (zero_row(k)) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (bf16) {
      const uint2 u = *reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(grad) + k);
      return {__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
              __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u)};
    }
    return *reinterpret_cast<const float4*>(grad + k);
  }
};

// Whether entry e's gradient can be read four elements at a time from element 0 (16 bytes for
// f32, 8 for bf16).
__device__ __forceinline__ bool grad_quads(const MultiTensorEntry& e) {
  return (reinterpret_cast<uintptr_t>(e.grad) & (e.grad_bf16 ? 7 : 15)) == 0;
}

// The masters p of elements k … k + 3 stepped at once (gradient 16-byte aligned there): moments
// and gradient loaded, adamw_element on each, moments stored back.
template <bool BF16, bool ROWS>
__device__ __forceinline__ void adamw_step4(float4& p, const GradRows<ROWS>& grad,
                                            const MomentArray<BF16>& m_of,
                                            const MomentArray<BF16>& v_of, int64_t k,
                                            const AdamWScalars& s, float decay) {
  float4 m = m_of.load4(k);
  float4 v = v_of.load4(k);
  const float4 g = grad.load4(k);
  adamw_element(p.x, m.x, v.x, g.x, s, decay);
  adamw_element(p.y, m.y, v.y, g.y, s, decay);
  adamw_element(p.z, m.z, v.z, g.z, s, decay);
  adamw_element(p.w, m.w, v.w, g.w, s, decay);
  m_of.store4(k, m);
  v_of.store4(k, v);
}

// Four elements k … k + 3 of a tensor stepped at once (value and gradient 16-byte aligned there):
// value loaded, stepped, stored back; returns the new values.
template <bool BF16, bool ROWS>
__device__ __forceinline__ float4 adamw_quad(float* value, const GradRows<ROWS>& grad,
                                             const MomentArray<BF16>& m_of,
                                             const MomentArray<BF16>& v_of, int64_t k,
                                             const AdamWScalars& s, float decay) {
  float4 p = *reinterpret_cast<const float4*>(value + k);
  adamw_step4(p, grad, m_of, v_of, k, s, decay);
  *reinterpret_cast<float4*>(value + k) = p;
  return p;
}

// adamw_quad for a split master (ops/split_master.h): the four masters joined from their halves
// high (the bf16 compute copy) and low, stepped, and split again — the compute copy is written
// by the split itself.
template <bool BF16, bool ROWS>
__device__ __forceinline__ void adamw_split_quad(uint16_t* high, uint16_t* low,
                                                 const GradRows<ROWS>& grad,
                                                 const MomentArray<BF16>& m_of,
                                                 const MomentArray<BF16>& v_of, int64_t k,
                                                 const AdamWScalars& s, float decay) {
  const uint2 h = *reinterpret_cast<const uint2*>(high + k);
  const uint2 l = *reinterpret_cast<const uint2*>(low + k);
  const auto join = [](uint32_t hw, uint32_t lw, int half) {
    return __uint_as_float(join_bits(uint16_t(hw >> (16 * half)), uint16_t(lw >> (16 * half))));
  };
  float4 p{join(h.x, l.x, 0), join(h.x, l.x, 1), join(h.y, l.y, 0), join(h.y, l.y, 1)};
  adamw_step4(p, grad, m_of, v_of, k, s, decay);
  const uint32_t b0 = __float_as_uint(p.x), b1 = __float_as_uint(p.y), b2 = __float_as_uint(p.z),
                 b3 = __float_as_uint(p.w);
  *reinterpret_cast<uint2*>(high + k) = {uint32_t(split_high(b0)) | uint32_t(split_high(b1)) << 16,
                                         uint32_t(split_high(b2)) | uint32_t(split_high(b3)) << 16};
  *reinterpret_cast<uint2*>(low + k) = {uint32_t(split_low(b0)) | uint32_t(split_low(b1)) << 16,
                                        uint32_t(split_low(b2)) | uint32_t(split_low(b3)) << 16};
}

// The entry of a multi-tensor table that holds unit `index` (a chunk, a tile): the last whose
// `begin` member is ≤ index (entries ascend by it and none is empty, so that entry owns it).
template <typename Entry>
__device__ __forceinline__ Entry entry_at(const Entry* entries, int64_t count, int64_t index,
                                          int64_t Entry::*begin) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (entries[mid].*begin <= index)
      lo = mid;
    else
      hi = mid - 1;
  }
  return entries[lo];
}

}  // namespace dseek::ops::cuda
