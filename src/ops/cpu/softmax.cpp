// softmax, CPU: y_i = exp(x_i − m) / Σ_j exp(x_j − m) with m = max_j x_j (subtracting the max keeps
// exp in range; −inf entries give 0). f32 throughout, as torch's softmax(dtype=float32).
// Backward: ∂y_i/∂x_j = y_i(δ_ij − y_j), so dx_i = y_i(dy_i − Σ_j y_j dy_j); the dot product is
// summed in double.
#include <cmath>
#include <limits>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void softmax_rows(float* x, int64_t rows, int64_t n, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) m = row[i] > m ? row[i] : m;
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      row[i] = std::exp(row[i] - m);
      sum += row[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
  }
}

void softmax_backward_rows(const float* y, const float* dy, float* dx, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * n;
    const float* gr = dy + r * n;
    double dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += double(yr[i]) * gr[i];
    const float d = float(dot);
    float* out = dx + r * n;
    for (int64_t i = 0; i < n; ++i) out[i] = yr[i] * (gr[i] - d);
  }
}

}  // namespace dseek::ops::cpu
