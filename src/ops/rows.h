// Row scatter: dst[rows[i], :] = src[i, :]. The paged KV cache writes a batch's new keys and
// values with it, every sequence's rows in one call (the rows index its pool slots), instead of
// one copy per sequence and page.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

// dst [R, W] (row stride free, last dimension contiguous; a column view of a pool is fine),
// src [N, W] (converted to dst's dtype first if it differs), rows I64 [N] on dst's device, each in
// [0, R) and distinct (two rows writing one slot would race on the GPU). The indices are checked
// on the CPU; on a GPU they come from the caller's own page tables (reading them back would cost
// a synchronisation per call).
void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& rows);

}  // namespace dseek::ops
