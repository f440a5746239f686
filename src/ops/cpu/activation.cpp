// silu_mul, CPU: out = silu(g) ⊙ u with silu(g) = g · σ(g) = g / (1 + e^{-g}) — the SwiGLU inner
// product of DeepSeek / LLaMA MLPs: down_proj(silu(gate_proj(x)) * up_proj(x)).
// Backward: d silu(g)/dg = σ(g) + g·σ(g)(1 − σ(g)) = σ(g)(1 + g(1 − σ(g))).
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void silu_mul_backward(const float* gate, const float* up, const float* dout, float* dgate,
                       float* dup, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
    dup[i] = dout[i] * g * s;
  }
}

}  // namespace dseek::ops::cpu
