// The optimizer ops on the CPU (maths in ops/adamw.h). These loops are the ones train/optimizer.cpp
// ran before the op existed, unchanged, so CPU training keeps its exact results (but for
// sum_of_squares, now the same bits on any number of threads).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "ops/cpu/adamw_cpu.h"

namespace dseek::ops::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this a tensor is handled on one thread
}  // namespace

void adamw_update(const AdamWStep& s, float decay_factor, float* value, const float* grad, float* m,
                  float* v, int64_t n, float grad_scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t k = 0; k < n; ++k) {
    const float g = grad[k] * grad_scale;
    m[k] = s.beta1 * m[k] + s.one_minus_beta1 * g;
    v[k] = s.beta2 * v[k] + s.one_minus_beta2 * g * g;
    const float denom = std::sqrt(v[k]) / s.bias_correction2_sqrt + s.eps;
    value[k] = value[k] * decay_factor - s.step_size * m[k] / denom;
  }
}

void adamw_update_bf16_moments(const AdamWStep& s, float decay_factor, float* value,
                               const float* grad, uint16_t* m, uint16_t* v, int64_t n,
                               float grad_scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t k = 0; k < n; ++k) {
    const float g = grad[k] * grad_scale;
    const float mk = s.beta1 * bf16_to_f32(m[k]) + s.one_minus_beta1 * g;
    const float vk = s.beta2 * bf16_to_f32(v[k]) + s.one_minus_beta2 * g * g;
    const float denom = std::sqrt(vk) / s.bias_correction2_sqrt + s.eps;
    value[k] = value[k] * decay_factor - s.step_size * mk / denom;
    m[k] = f32_to_bf16(mk);
    v[k] = f32_to_bf16(vk);
  }
}

double sum_of_squares(const float* x, int64_t n) {
  // Per-chunk sums added in chunk order: the same bits for any thread count and every run (an
  // OpenMP reduction adds the threads' sums in the order they arrive).
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double sum = 0.0;
    for (int64_t k = c * kChunk; k < std::min(n, (c + 1) * kChunk); ++k)
      sum += double(x[k]) * double(x[k]);
    partial[size_t(c)] = sum;
  }
  double sum = 0.0;
  for (double p : partial) sum += p;
  return sum;
}

void scale_inplace(float* x, int64_t n, float scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t k = 0; k < n; ++k) x[k] *= scale;
}

}  // namespace dseek::ops::cpu
