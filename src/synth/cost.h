// Analytic cost of a complete operator under one valuation: weight parameters and FLOPs.
// An operator is an einsum over its loop iterators (output and reduce): the input (after its
// views, e.g. unfold = im2col) depends on the iterators its coordinates mention, each weight on
// those of its dims. A multiply-add counts 2 FLOPs.
//   naive FLOPs: the interpreter's loop, (1 + n_weights) FLOPs per (output, reduce) point — one
//                add plus n_weights multiplies (2·T·d_in·d_out for a linear).
//   FLOPs: the cheapest order of pairwise contractions (what a lowering to GEMMs executes), each
//          contraction of A and B costing 2·Π(extents of the iterators of A ∪ B); a lone operand
//          that still carries reduce iterators is summed at Π(its extents) adds.
//          (Low rank: 2·T·r·(d_in + d_out) instead of the naive 3·T·d_in·r·d_out.)
#pragma once

#include <cstdint>

#include "synth/operator.h"

namespace dseek::synth {

int64_t param_count(const Operator& op, const Valuation& values);
int64_t naive_flops(const Operator& op, const Valuation& values);
int64_t flops(const Operator& op, const Valuation& values);

}  // namespace dseek::synth
