// The reference interpreter: evaluates a complete operator on concrete data by looping over every
// output index and every reduction index — slow and obviously right, the ground truth for the
// canonicaliser's rules and (later) for lowering synthesised operators to dseek ops.
#pragma once

#include <cstdint>
#include <vector>

#include "synth/operator.h"

namespace dseek::synth {

// Concrete extents of `sizes` under `values` (throws if one is not a positive integer).
std::vector<int64_t> concrete_shape(const std::vector<Size>& sizes, const Valuation& values);
std::vector<int64_t> concrete_shape(const std::vector<Dim>& dims, const Valuation& values);

// out[o] = Σ_r in[e_in(o,r)] · Π_w W_w[e_w(o,r)], every tensor row-major in its dims' order
// (input: op.input, weight w: op.weights[w], output: op.output); a padded coordinate makes the
// term 0. Doubles, so that equal sums in another order differ by rounding only.
std::vector<double> interpret(const Operator& op, const Valuation& values,
                              const std::vector<double>& input,
                              const std::vector<std::vector<double>>& weights);

}  // namespace dseek::synth
