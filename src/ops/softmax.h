// softmax over the last dimension: y_i = exp(x_i - max) / Σ_j exp(x_j - max). f32 on the CPU, f32
// or bf16 on the GPU (computed in f32 there, the result in the input's dtype on its device).
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor softmax(const Tensor& x);

// Backward from the forward's output y and the upstream gradient dy (same shape and dtype):
//   dx_i = y_i · (dy_i − Σ_j y_j dy_j)   (the softmax Jacobian diag(y) − y yᵀ applied to dy).
Tensor softmax_backward(const Tensor& y, const Tensor& dy);

}  // namespace dseek::ops
