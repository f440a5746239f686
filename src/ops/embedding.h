// embedding: rows of a table [V, D] (f32, bf16, f16 or fp8 as stored) gathered by token id into
// [T, D] activations on the table's device. An id outside [0, V) is an error naming the id and
// its position. The ids are a host vector (they come from the tokenizer or the data loader); on a
// GPU they are checked on the host and uploaded per call.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

// `act` is the output dtype: f32 (the default, and the only choice on the CPU) or, for a table on
// a GPU, bf16 — so a bf16 model's residual stream starts in bf16 without a conversion pass.
Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids, DType act = DType::F32);
// The same with the ids an I32 [T] tensor on the table's device: for callers whose ids are
// constants kept on the GPU (a synthesised operator's gather index, synth/lower.h) or rewritten
// before each replay of a CUDA graph (model/decode_graph.h), so a call uploads nothing. On a GPU the ids are not checked (that would read them back): the caller
// guarantees them in [0, V); on the CPU they are checked as above.
Tensor embedding_device_ids(const Tensor& table, const Tensor& ids, DType act = DType::F32);

// Backward for dy [T, D] (f32; on a GPU f32 or bf16): a scatter-add, dtable[ids[t], :] += dy[t, :];
// ids that repeat accumulate, rows never looked up get 0. Returns dtable [V, D] f32 on dy's
// device whatever the table's dtype. Deterministic on both devices (rows added in token order).
Tensor embedding_backward(const std::vector<int32_t>& ids, const Tensor& dy, int64_t vocab);
// Adds into an existing f32 contiguous dtable [V, D] (gradient accumulation). row_flags, where
// defined (U8 [V] on dtable's device, ops/grad_rows.h): the flag of every row added to is set.
void embedding_backward_accumulate(const std::vector<int32_t>& ids, const Tensor& dy,
                                   Tensor& dtable, const Tensor& row_flags = Tensor());

}  // namespace dseek::ops
