// CPU references of MLA's absorbed decode (ops/mla_decode.h): plain loops, f32 throughout, a
// two-pass softmax per (query, head). What the CUDA kernels of ops/cuda/mla_decode.cu are held to.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/mla_decode_cpu.h"

namespace dseek::ops::cpu {

void mla_decode(const MlaDecodeArgs& a) {
  const int64_t pos0 = a.S - a.T;
#pragma omp parallel for collapse(2) schedule(static) if (a.T * a.H * a.S * a.dk >= (1 << 18))
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t h = 0; h < a.H; ++h) {
      const float* q = a.q + t * a.q_t + h * a.q_h;
      const int64_t n = pos0 + t + 1;  // visible rows
      std::vector<float> p(size_t(n), 0.0f);
      float m = -INFINITY;
      for (int64_t s = 0; s < n; ++s) {
        const float* k = a.kv + s * a.kv_s;
        float dot = 0.0f;
        for (int64_t i = 0; i < a.dk; ++i) dot += q[i] * k[i];
        p[size_t(s)] = dot * a.scale;
        m = std::max(m, p[size_t(s)]);
      }
      float l = 0.0f;
      for (float& v : p) {
        v = std::exp(v - m);
        l += v;
      }
      float* out = a.out + (t * a.H + h) * a.rank;
      std::fill(out, out + a.rank, 0.0f);
      for (int64_t s = 0; s < n; ++s) {
        const float w = p[size_t(s)] / l;
        const float* v = a.kv + s * a.kv_s;
        for (int64_t c = 0; c < a.rank; ++c) out[c] += w * v[c];
      }
    }
}

void head_matmul(const float* x, int64_t x_t, int64_t x_h, const float* w, float* out,
                 int64_t out_t, int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N) {
#pragma omp parallel for collapse(2) schedule(static) if (T * H * K * N >= (1 << 16))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const float* xr = x + t * x_t + h * x_h;
      const float* wh = w + h * K * N;
      float* dst = out + t * out_t + h * out_h;
      std::fill(dst, dst + N, 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float xk = xr[k];
        const float* wrow = wh + k * N;
        for (int64_t n = 0; n < N; ++n) dst[n] += xk * wrow[n];
      }
    }
}

}  // namespace dseek::ops::cpu
