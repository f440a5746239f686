// embedding: rows of a table [V, D] (f32, bf16, f16 or fp8 as stored) gathered by token id into
// f32 [T, D]. An id outside [0, V) is an error naming the id and its position.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids);

}  // namespace dseek::ops
