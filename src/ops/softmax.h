// softmax over the last dimension, f32: y_i = exp(x_i - max) / Σ_j exp(x_j - max).
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor softmax(const Tensor& x);

}  // namespace dseek::ops
