// Shape-guided synthesis: from a target spec (input and output dims, the sizes each primitive may
// use, budgets), the legal next actions of a state — only those after which the state can still
// reach the input's shape within the primitive budget, judged by a shape distance — and the
// enumeration of every complete operator up to a depth, with raw vs canonical counts per depth.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "synth/canonical.h"
#include "synth/operator.h"

namespace dseek::synth {

struct Spec {
  Vars vars;
  std::vector<Valuation> valuations;  // every size must be a positive integer under each
  std::vector<Size> input, output;    // target shapes (input dims in order)
  // The sizes primitives may introduce (Syno restricts them to variables and coefficients).
  std::vector<Size> reduce_sizes;  // Reduce extents (also the windows Unfold uses)
  std::vector<Size> merge_blocks;  // Merge block sizes
  std::vector<Size> strides;       // Stride factors
  bool allow_shift = true;
  bool allow_unfold = true;
  int max_primitives = 6;  // Finalize not counted
  int max_weights = 2;
  int max_reductions = 3;
  int max_frontier = 4;                                      // dims on the frontier at any time
  int64_t max_params = std::numeric_limits<int64_t>::max();  // under every valuation
  int64_t max_flops = std::numeric_limits<int64_t>::max();   // naive FLOPs, every valuation
};

// A lower bound on the primitives still needed to turn the frontier into the input's dims: with
// U = unmatched frontier dims + unmatched input dims (matching equal sizes), one primitive lowers
// U by at most 3 (Split/Unfold: two dims in, one matched out), so ceil(U / 3).
int shape_distance(const Operator& op, const Spec& spec);

// Legal next actions of an incomplete state: each keeps every size legal, stays within the
// budgets and leaves shape_distance <= the primitives left; Finalize when the frontier is the
// input (one action per assignment of equal-sized dims). Also prunes actions whose result is a
// scalar multiple of a shorter operator (Expand of an otherwise unused reduce iterator).
std::vector<Action> legal_actions(const Operator& op, const Spec& spec);

// Per-depth counts (depth = primitives applied). Raw counts are action sequences (every order
// counted, as a naive enumeration visits them); distinct counts are keys under the enumeration's
// KeyOptions (view_rules = false: ordering rules only; true: every rule of canonical.h).
struct DepthCount {
  int depth = 0;
  uint64_t raw_states = 0;         // incomplete sequences of this length
  uint64_t distinct_states = 0;    // distinct keys among them
  uint64_t raw_complete = 0;       // complete operators with this many primitives (sequences)
  uint64_t distinct_complete = 0;  // new distinct keys (not seen at a smaller depth)
};

struct Enumeration {
  std::vector<Operator> operators;  // one per key, in discovery order
  std::vector<std::string> keys;    // their keys
  std::vector<DepthCount> depths;
};

// Breadth-first over depths; states with equal keys are expanded once (their sequence counts
// add up), so the work grows with the distinct states, not the raw sequences.
Enumeration enumerate(const Spec& spec, KeyOptions key = {});

// Printable per-depth tables (docs/SYNTH.md): one run, or raw vs ordering rules vs all rules.
std::string depth_table(const Enumeration& e);
std::string depth_table(const Enumeration& ordered, const Enumeration& canonical);

}  // namespace dseek::synth
