// silu_mul, CPU: out = silu(g) ⊙ u with silu(g) = g · σ(g) = g / (1 + e^{-g}) — the SwiGLU inner
// product of DeepSeek / LLaMA MLPs: down_proj(silu(gate_proj(x)) * up_proj(x)).
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

}  // namespace dseek::ops::cpu
