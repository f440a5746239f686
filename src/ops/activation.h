// Activations. silu_mul(g, u) = silu(g) ⊙ u, the SwiGLU inner product of DeepSeek MLPs; and the
// elementwise residual add. Activations are f32 on the CPU, f32 or bf16 on the GPU; outputs come
// in the inputs' dtype on their device.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor silu_mul(const Tensor& gate, const Tensor& up);  // same shapes and dtype

// Backward for an upstream gradient dout (same shape), with σ = sigmoid(gate):
//   dgate = dout ⊙ up ⊙ σ ⊙ (1 + gate ⊙ (1 − σ)),   dup = dout ⊙ gate ⊙ σ
struct SiluMulGrads {
  Tensor dgate, dup;
};
SiluMulGrads silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout);

// y += x elementwise (residual connections, gradient sums): same shape and dtype, y contiguous.
void add_inplace(Tensor& y, const Tensor& x);

}  // namespace dseek::ops
