// A synthesised operator on disk: JSON holding the spec it was synthesised for and its action
// list. Loading replays the actions through apply() (which checks each one), so a file is the
// operator's recipe and cannot describe an operator the IR could not build:
//
//   {
//     "vars": [{"name": "T", "kind": "primary"}, ..., {"name": "g", "kind": "coefficient"}],
//     "valuations": [[64, 256, 256, 16, 4]],
//     "input": ["T", "d_in"], "output": ["T", "d_out"],
//     "reduce_sizes": ["d_in", "d_in/g"], "merge_blocks": ["d_out/g"], "strides": ["2"],
//     "allow_shift": true, "allow_unfold": true,
//     "max_primitives": 6, "max_weights": 2, "max_reductions": 3, "max_frontier": 4,
//     "max_params": 9223372036854775807, "max_flops": 9223372036854775807,
//     "actions": [{"kind": "merge", "a": 1, "size": "d_out/g"}, {"kind": "share", "a": 1, "b": 0},
//                 ..., {"kind": "finalize", "perm": [0, 1]}]
//   }
//
// Sizes are written as Size::str prints them ("T*d_in/g", "2*k^2", "d_in/(g*k)") and parsed
// back. Every field is required; a parse error names the field ("[synth] operator json:
// actions[3].size: unknown variable 'q' in \"d_out/q\"").
#pragma once

#include <string>

#include "synth/enumerate.h"
#include "synth/operator.h"

namespace dseek::synth {

struct OperatorRecord {
  Spec spec;
  Operator op;  // complete, built from spec.output; its input dims are spec.input
};

std::string operator_to_json(const Spec& spec, const Operator& op);
// Throws dseek::Error naming the field on malformed JSON, an action apply() refuses, or an
// operator that is not complete or whose input is not spec.input.
OperatorRecord operator_from_json(const std::string& text);

// Inverse of Size::str over `vars`; `where` prefixes errors.
Size parse_size(const std::string& text, const Vars& vars, const std::string& where = "size");

}  // namespace dseek::synth
