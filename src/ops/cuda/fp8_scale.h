// The FP8 tile scale rule of ops/fp8.h, one definition for the CPU twin and the CUDA kernels (so
// their scales agree bit for bit): s = amax/448, 1 for an all-zero tile, at least FLT_MIN, and with
// pow2 rounded up to a power of two. Plain C++ (no CUDA types); __host__ __device__ under nvcc.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace dseek::ops {

// amax is finite and ≥ 0 (non-finite inputs are rejected before a scale is formed).
DSEEK_HOST_DEVICE inline float fp8_tile_scale(float amax, bool pow2) {
  if (amax == 0.0f) return 1.0f;
  float s = amax / 448.0f;  // IEEE division on both sides (nvcc's default -prec-div=true)
  const float kMinNormal = 1.17549435e-38f;  // FLT_MIN
  if (s < kMinNormal) s = kMinNormal;
  if (pow2) {
    uint32_t bits;
    std::memcpy(&bits, &s, 4);
    // s is a positive normal float no larger than FLT_MAX/448: a non-zero mantissa rounds up to
    // the next exponent, which cannot overflow.
    if (bits & 0x007fffffu) bits = (bits & 0x7f800000u) + 0x00800000u;
    std::memcpy(&s, &bits, 4);
  }
  return s;
}

}  // namespace dseek::ops
