// cross_entropy, CPU (maths in ops/cross_entropy.h). Per row: m = max_v x_v, then
// lse = m + log Σ_v exp(x_v − m) with the sum in double (V ~ 100K terms), loss_t = lse − x_target.
// Backward: softmax_v − [v = target] = exp(x_v − lse) − [v = target], times dloss/N; computed
// element by element from the logits and the saved lse, so it may overwrite the logits in place.
// Rows run in parallel; the loss is summed in row order (deterministic).
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void cross_entropy_forward(const float* logits, int64_t T, int64_t V, int64_t ld,
                           const int32_t* targets, int32_t ignore_index, float* lse,
                           double* loss_sum, int64_t* count) {
  std::vector<double> row_loss(size_t(T), 0.0);
#pragma omp parallel for schedule(static) if (T * V >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const float* x = logits + t * ld;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t v = 0; v < V; ++v) m = x[v] > m ? x[v] : m;
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(double(x[v] - m));
    const double l = double(m) + std::log(s);
    lse[t] = float(l);
    if (targets[t] != ignore_index) row_loss[size_t(t)] = l - double(x[targets[t]]);
  }
  double sum = 0;
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t)
    if (targets[t] != ignore_index) {
      sum += row_loss[size_t(t)];
      ++n;
    }
  *loss_sum = sum;
  *count = n;
}

void cross_entropy_backward(const float* logits, int64_t T, int64_t V, int64_t ld,
                            const int32_t* targets, int32_t ignore_index, const float* lse,
                            float scale, float* dlogits, int64_t ld_out,
                            const float* row_weights) {
#pragma omp parallel for schedule(static) if (T * V >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const float* x = logits + t * ld;
    float* d = dlogits + t * ld_out;
    if (targets[t] == ignore_index) {
      for (int64_t v = 0; v < V; ++v) d[v] = 0.0f;
      continue;
    }
    const float l = lse[t];
    const float w = row_weights != nullptr ? scale * row_weights[t] : scale;
    for (int64_t v = 0; v < V; ++v) d[v] = std::exp(x[v] - l) * w;
    d[targets[t]] -= w;
  }
}

}  // namespace dseek::ops::cpu
