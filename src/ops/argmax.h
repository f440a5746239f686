// Row-wise argmax: the greedy choice of a decode step, on the device that holds the logits, so a
// GPU step can feed its own next input (model/decode_graph.h) without the host reading the
// logits back.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

// out[r] = the first k with x[r, k] equal to the row's largest value, NaNs ignored (a row of only
// NaNs gives 0). x [R, V] f32 or bf16, rows contiguous (any row stride), V ≥ 1; out I32 [R],
// contiguous, on x's device, written in place (a buffer a captured graph reads). nan_rows, if
// defined (I32 [R] on x's device, any stride), gets 1 where the row holds a NaN and 0 elsewhere:
// the sampler refuses NaN logits, and a device-side pick must be able to say so too.
void argmax_rows(const Tensor& x, const Tensor& out, const Tensor& nan_rows = Tensor());

}  // namespace dseek::ops
