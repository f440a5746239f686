// The bit operations of a split f32 master (ops/split_master.h explains them), for host and
// device code alike (C++17: included by .cu files).
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace dseek::ops {

// The two halves of the f32 with these bits: high (a bf16's bits), low.
DSEEK_HOST_DEVICE inline uint16_t split_high(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u)     // NaN: a quiet NaN of its sign (the carry would
    return uint16_t((bits >> 16) | 0x0040u);  // reach the sign bit of 0x7fffffff)
  return uint16_t((bits + 0x8000u) >> 16);
}
DSEEK_HOST_DEVICE inline uint16_t split_low(uint32_t bits) {
  return uint16_t(bits & 0xffffu);
}
// The f32 bits split_high and split_low came from (for a NaN: a NaN of the same sign).
DSEEK_HOST_DEVICE inline uint32_t join_bits(uint16_t high, uint16_t low) {
  return (uint32_t(uint16_t(high - (low >= 0x8000u ? 1u : 0u))) << 16) | low;
}

}  // namespace dseek::ops
