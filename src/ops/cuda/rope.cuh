// RoPE's per-element maths on the GPU, shared by the rotation kernels (rope.cu) and the fused MLA
// cache append (mla_cache.cu), so both give the same bits: cos/sin as the CPU's rope_tables
// computes them (the angle one f32 product, cos and sin in double, rounded to f32, then
// × scaling), the pair gathered as ops/rope.h describes.
#pragma once

#include <cstdint>

namespace dseek::ops::cuda {

// Where a position's angles come from: pos(t) = positions[t], or pos0 + t.
struct RopeAngles {
  int64_t pos0;
  const int64_t* positions;
  const float* inv_freq;
  float scaling;
};

// (cos, sin) of θ = inv_freq[j]·pos(t), × scaling.
__device__ __forceinline__ float2 rope_cos_sin(const RopeAngles& a, int64_t t, int64_t j) {
  const float angle = a.inv_freq[j] * float(a.positions ? a.positions[t] : a.pos0 + t);
  double sin_d, cos_d;
  sincos(double(angle), &sin_d, &cos_d);
  return make_float2(float(cos_d) * a.scaling, float(sin_d) * a.scaling);
}

// The forward rotation of pair j of a row of d = 2·half values: (y[j], y[half + j]) from the row
// `in` (read only at the pair's two places), de-interleaving if asked.
__device__ __forceinline__ float2 rope_pair(const float* in, int64_t j, int64_t half, float2 c_s,
                                            bool interleaved) {
  const float c = c_s.x, s = c_s.y;
  const float a = interleaved ? in[2 * j] : in[j];
  const float b = interleaved ? in[2 * j + 1] : in[half + j];
  return make_float2(a * c - b * s, b * c + a * s);
}

}  // namespace dseek::ops::cuda
