// Row-sparse gradients: flags saying which rows of a matrix's gradient may be non-zero. The
// embedding's gradient is the case that pays: a step's 4,096 tokens write at most 4,096 of
// V2-Lite's 102,400 rows, yet the step read all 0.84 GB of it for the gradient norm and for
// AdamW, and wrote all of it again to zero it. With the flags, AdamW reads the flagged rows only
// (an unflagged row is read as zeros: the same bits), the norm sums the flagged rows' squares, and
// the zeroing writes the flagged rows and clears their flags.
//
// The flags are U8 [rows] on the gradient's device. Their one rule: a row whose flag is 0 holds
// zeros. Flags of 1 promise nothing (a flagged row may well be zero), so all-ones flags are always
// right; train/param.h keeps the rule for Param::grad_rows.
#pragma once

#include "core/tensor.h"

namespace dseek::ops {

// Checks `flags` against `grad` (f32 contiguous [rows, cols]; U8 contiguous [rows] on its device)
// and throws naming `what` otherwise.
void check_grad_rows(const Tensor& grad, const Tensor& flags, const std::string& what);
// Zeros the rows of grad whose flag is set and clears those flags (then every flag is 0 and grad
// all zeros, given the rule above).
void zero_flagged_rows(const Tensor& grad, const Tensor& flags);
// Σ grad² over the flagged rows, in double, into *out: a double on the tensors' device (a
// SumOfSquaresParts::external slot) for a GPU grad, on the host for a CPU one. Deterministic: a
// fixed order of sums, not the order sum_of_squares uses (the same value up to rounding).
void sum_of_squares_flagged_rows(const Tensor& grad, const Tensor& flags, double* out);

}  // namespace dseek::ops
