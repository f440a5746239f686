// Activations. silu_mul(g, u) = silu(g) ⊙ u, the SwiGLU inner product of DeepSeek MLPs.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor silu_mul(const Tensor& gate, const Tensor& up);  // same shapes, f32

}  // namespace dseek::ops
