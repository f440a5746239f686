// rope, CPU: one row x[0..d) rotated in place (see ops/rope.h for the maths). `interleaved` first
// gathers the even entries into the first half and the odd ones into the second, like
// transformers' `q.view(d/2, 2).transpose(-1, -2).reshape(d)` in apply_rotary_pos_emb_interleave.
// Backward: the transpose, i.e. rotate by −θ (negated sin, same cos and scaling), then scatter the
// halves back to the even/odd slots when interleaved.
#include <cassert>
#include <cstring>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void rope_row(float* x, int64_t d, const float* cos, const float* sin, bool interleaved) {
  const int64_t half = d / 2;
  assert(d <= kMaxRopeDim);
  float tmp[kMaxRopeDim];
  if (interleaved) {
    for (int64_t j = 0; j < half; ++j) {
      tmp[j] = x[2 * j];
      tmp[half + j] = x[2 * j + 1];
    }
  } else {
    std::memcpy(tmp, x, size_t(d) * sizeof(float));
  }
  for (int64_t j = 0; j < half; ++j) {
    const float a = tmp[j], b = tmp[half + j];
    x[j] = a * cos[j] - b * sin[j];
    x[half + j] = b * cos[j] + a * sin[j];
  }
}

void rope_row_backward(float* x, int64_t d, const float* cos, const float* sin, bool interleaved) {
  const int64_t half = d / 2;
  assert(d <= kMaxRopeDim);
  float z[kMaxRopeDim];
  for (int64_t j = 0; j < half; ++j) {
    const float a = x[j], b = x[half + j];
    z[j] = a * cos[j] + b * sin[j];
    z[half + j] = b * cos[j] - a * sin[j];
  }
  if (interleaved) {
    for (int64_t j = 0; j < half; ++j) {
      x[2 * j] = z[j];
      x[2 * j + 1] = z[half + j];
    }
  } else {
    std::memcpy(x, z, size_t(d) * sizeof(float));
  }
}

}  // namespace dseek::ops::cpu
