// Dot product for the CPU attention kernels (causal_attention, paged_attention).
#pragma once

#include <cstdint>

namespace dseek::ops::cpu {

// Eight independent partial sums: one running sum is bound by the latency of f32 adds; eight break
// the chain and the compiler packs them into vector registers (no -ffast-math, and no omp simd
// reduction, which clang's sanitizer build cannot vectorise under -Werror). The summation order
// differs from a plain loop within rounding; the tests' tolerances allow it.
inline float dot_product(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

}  // namespace dseek::ops::cpu
