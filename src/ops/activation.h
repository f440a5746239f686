// Activations. silu_mul(g, u) = silu(g) ⊙ u, the SwiGLU inner product of DeepSeek MLPs.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor silu_mul(const Tensor& gate, const Tensor& up);  // same shapes, f32

// Backward for an upstream gradient dout (same shape), with σ = sigmoid(gate):
//   dgate = dout ⊙ up ⊙ σ ⊙ (1 + gate ⊙ (1 − σ)),   dup = dout ⊙ gate ⊙ σ
struct SiluMulGrads {
  Tensor dgate, dup;
};
SiluMulGrads silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout);

}  // namespace dseek::ops
