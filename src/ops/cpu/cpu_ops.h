// Raw-pointer CPU kernels behind the ops in src/ops/*.h. They know nothing of Tensor: the op
// headers check shapes and dtypes and call these. Each is defined in src/ops/cpu/<op>.cpp with its
// maths in the file's header comment.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace dseek::ops::cpu {

// y[t, o] = sum_i x[t, i] * w[o * ldw + i], for t < T, o < out. w in F32, BF16 or F16.
void linear_gemv(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);
void linear_gemm(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y);

// out[i] = silu(gate[i]) * up[i].
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

}  // namespace dseek::ops::cpu

namespace dseek::ops::cpu {

// y[r, :] = w ⊙ x[r, :] / sqrt(mean(x[r, :]²) + eps), w already in f32.
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps);

// In place, each of `rows` rows of length n (row stride ld).
void softmax_rows(float* x, int64_t rows, int64_t n, int64_t ld);

inline constexpr int64_t kMaxRopeDim = 1024;
// Rotates one row of d values in place with cos/sin of d/2 entries (see ops/rope.h).
void rope_row(float* x, int64_t d, const float* cos, const float* sin, bool interleaved);

struct AttentionArgs {
  const float* q;
  int64_t q_t, q_h;  // strides (elements)
  const float* k;
  int64_t k_s, k_h;
  const float* v;
  int64_t v_s, v_h;
  float* out;  // [T, H, dv] contiguous
  int64_t T, S, H, Hk, dk, dv;
  float scale;
};
void causal_attention(const AttentionArgs& a);

}  // namespace dseek::ops::cpu
