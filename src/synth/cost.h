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
#include <utility>
#include <vector>

#include "synth/operator.h"

namespace dseek::synth {

int64_t param_count(const Operator& op, const Valuation& values);
int64_t naive_flops(const Operator& op, const Valuation& values);
int64_t flops(const Operator& op, const Valuation& values);

// A set of iterators as bits (an operator has far fewer than 32).
using Mask = uint32_t;

// The iterators the coordinates of `dims` mention (an operand of the einsum).
Mask iterator_mask(const Operator& op, const std::vector<Dim>& dims);

// The cheapest order of pairwise contractions of `operands` (iterator masks) down to one operand
// over `output_iters`, found exhaustively. Each step contracts positions (i, j), i < j, of the
// current list: both are removed and their result — the iterators still needed later — is
// appended. `flops` counts as flops() does (the lowering executes this path, lower.h).
struct ContractionPath {
  int64_t flops = 0;
  std::vector<std::pair<int, int>> pairs;
};
ContractionPath contraction_path(const std::vector<Mask>& operands, Mask output_iters,
                                 const std::vector<int64_t>& iter_size);

}  // namespace dseek::synth
