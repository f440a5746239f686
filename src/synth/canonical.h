// Canonicalisation: rules that map equivalent operators (and partial states) to one form, so a
// search visits each candidate once and the results store keys them stably.
//   view rules (rewrite index expressions; simplify() applies them, semantics unchanged):
//     V1 Merge∘Split: div(split(a,b;n);n) = a, mod(split(a,b;n);n) = b   (split then merge back)
//     V2 Split∘Merge: split(div(a;n), mod(a;n); n) = a                   (merge then split back)
//     V3 Stride∘Stride: stride(stride(a;s);t) = stride(a;s·t)
//   ordering rules (only in the key):
//     O1 reductions commute: reduce iterators are renamed in order of first use in the key
//     O2 sibling order: frontier dims (of a partial state) are sorted, as are the dims of each
//        weight and the weights themselves (a weight's layout and the weights' order are free)
// The key fully describes the (simplified) operator up to those renamings, so equal keys imply
// equivalent operators; the converse holds for the rules above only.
#pragma once

#include <cstdint>
#include <string>

#include "synth/operator.h"

namespace dseek::synth {

// The operator with every expression rewritten by the view rules V1–V3 (hash-consed arena). The
// input, weights, frontier, iterators and history keep their order, so the same data evaluates it.
Operator simplify(const Operator& op);

struct KeyOptions {
  bool view_rules = true;  // apply V1–V3 before printing (false: ordering rules only)
};

// A stable text key, e.g. "out[T,d_out] red[d_in] in[o0,r0] w[(o1,r0)]" for a dense linear.
std::string canonical_key(const Operator& op, const Vars& vars, KeyOptions options = {});
// FNV-1a of the key (for stores and hash sets).
uint64_t canonical_hash(const Operator& op, const Vars& vars);

}  // namespace dseek::synth
