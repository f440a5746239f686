// Raw-pointer CPU references of ops/mla_decode.h (maths there). f32; strides in elements.
#pragma once

#include <cstdint>

namespace dseek::ops::cpu {

// q_abs row t, head h at q + t·q_t + h·q_h (dk = rank + rope values); latent row s at kv + s·kv_s;
// out [T, H, rank] contiguous.
struct MlaDecodeArgs {
  const float* q;
  int64_t q_t, q_h;
  const float* kv;
  int64_t kv_s;
  float* out;
  int64_t T, S, H, dk, rank;
  float scale;
};
void mla_decode(const MlaDecodeArgs& a);

// out[t, h, :N] = x[t, h, :K] · w[h] (w [H, K, N] contiguous; out's rows out_t apart, its heads
// out_h apart).
void head_matmul(const float* x, int64_t x_t, int64_t x_h, const float* w, float* out,
                 int64_t out_t, int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N);

}  // namespace dseek::ops::cpu
