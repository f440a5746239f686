// softmax, CPU: y_i = exp(x_i − m) / Σ_j exp(x_j − m) with m = max_j x_j (subtracting the max keeps
// exp in range; −inf entries give 0). f32 throughout, as torch's softmax(dtype=float32).
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

}  // namespace dseek::ops::cpu
