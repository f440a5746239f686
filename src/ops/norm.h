// rms_norm: y = w ⊙ x / sqrt(mean(x²) + eps) over the last dimension, as transformers'
// DeepseekV3RMSNorm / LlamaRMSNorm in f32. x [..., D] f32; w [D] in any float dtype (as stored).
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

}  // namespace dseek::ops
