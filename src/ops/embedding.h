// embedding: rows of a table [V, D] (f32, bf16, f16 or fp8 as stored) gathered by token id into
// f32 [T, D]. An id outside [0, V) is an error naming the id and its position.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids);

// Backward for dy [T, D] (f32): a scatter-add, dtable[ids[t], :] += dy[t, :]; ids that repeat
// accumulate, rows never looked up get 0. Returns dtable [V, D] f32 whatever the table's dtype.
Tensor embedding_backward(const std::vector<int32_t>& ids, const Tensor& dy, int64_t vocab);
// Adds into an existing f32 contiguous dtable [V, D] (gradient accumulation).
void embedding_backward_accumulate(const std::vector<int32_t>& ids, const Tensor& dy,
                                   Tensor& dtable);

}  // namespace dseek::ops
