// rms_norm, CPU: y = w ⊙ x · rsqrt(mean(x²) + eps), per row, f32 throughout — transformers'
// DeepseekV3RMSNorm: `variance = x.pow(2).mean(-1); x * torch.rsqrt(variance + eps)`, then the
// weight. The sum of squares uses 8 partial sums (vectorisable, and closer to torch's reduction
// than one serial accumulator).
// Backward: y_i = w_i x_i r with r = (Σ x²/D + eps)^(-1/2), ∂r/∂x_j = −r³ x_j / D, so for
// g = w ⊙ dy: dx_j = r g_j − (r³/D) x_j Σ_i g_i x_i, and dw_i = Σ_rows dy_i x_i r. dw is summed
// over rows serially (row order fixed: deterministic); dx rows run in parallel.
#include <cmath>
#include <vector>

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

void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                       int64_t rows, int64_t D, float eps, float dw_beta) {
  std::vector<float> inv(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (rows * D >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    const float* gr = dy + r * D;
    double ss = 0, gx = 0;
    for (int64_t i = 0; i < D; ++i) {
      ss += double(xr[i]) * xr[i];
      gx += double(w[i]) * gr[i] * xr[i];
    }
    const float rinv = float(1.0 / std::sqrt(ss / double(D) + double(eps)));
    inv[size_t(r)] = rinv;
    const float c = float(gx) * rinv * rinv * rinv / float(D);
    float* dr = dx + r * D;
    for (int64_t i = 0; i < D; ++i) dr[i] = rinv * w[i] * gr[i] - c * xr[i];
  }
  if (!dw) return;
  for (int64_t i = 0; i < D; ++i) dw[i] = dw_beta == 0.0f ? 0.0f : dw[i];
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    const float* gr = dy + r * D;
    const float rinv = inv[size_t(r)];
    for (int64_t i = 0; i < D; ++i) dw[i] += gr[i] * xr[i] * rinv;
  }
}

}  // namespace dseek::ops::cpu
