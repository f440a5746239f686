// rms_norm, CPU: y = w ⊙ x · rsqrt(mean(x²) + eps), per row, f32 throughout — transformers'
// DeepseekV3RMSNorm: `variance = x.pow(2).mean(-1); x * torch.rsqrt(variance + eps)`, then the
// weight. The sum of squares uses 8 partial sums (vectorisable, and closer to torch's reduction
// than one serial accumulator).
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (rows * D >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= D; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += xr[i + j] * xr[i + j];
    float ss = 0;
    for (; i < D; ++i) ss += xr[i] * xr[i];
    for (int j = 0; j < 8; ++j) ss += part[j];
    const float inv = 1.0f / std::sqrt(ss / float(D) + eps);
    for (int64_t k = 0; k < D; ++k) yr[k] = w[k] * (xr[k] * inv);
  }
}

}  // namespace dseek::ops::cpu
