// Synthesis tasks: the layers `dseek synth search --task` names, each as a Spec (variables, the
// one valuation the search evaluates at, the sizes primitives may introduce, budgets) plus the
// dense layer it would replace (the baseline: teacher-fit's teacher, and the FLOPs the search's
// cost term is relative to).
//
//   lm-proj  [T, d_in] -> [T, d_out]        a projection of a language model
//   lm-ffn   [T, d_model] -> [T, d_ff]      an FFN's up/gate projection (d_in = d_model,
//                                            d_out = d_ff); the IR is multilinear, so the
//                                            activation between up and down stays outside
//   conv     [N, C, H, W] -> [N, C_out, H, W] a 2-D convolution (baseline: k×k with a
//                                            coefficient named k, else 1×1)
//
// Coefficients (`--coeffs r=4,g=4`) are the small factors primitives may use: each c gives the
// Reduce extents c and d_in/c and the Merge blocks c, d_out/c, d_in/c (those that divide).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "synth/enumerate.h"
#include "synth/operator.h"

namespace dseek::synth {

struct TaskOptions {
  std::string task = "lm-proj";
  int64_t d_in = 32, d_out = 32;  // conv: C and C_out
  int64_t tokens = 64;            // T for the lm tasks, the batch N for conv
  int64_t image = 8;              // conv: H = W
  std::vector<std::pair<std::string, int64_t>> coeffs;
  int max_depth = 8;  // primitives (Spec::max_primitives)
  // conv: only translation-equivariant candidates — no weight indexed by an output position
  // (H or W: output dims 2, 3), so a candidate is a convolution, not a locally connected layer.
  bool translation_equivariant = false;
};

struct Task {
  std::string name;
  Spec spec;           // one valuation: the sizes every candidate is evaluated at
  Operator baseline;   // the dense layer, complete, over spec's variables
  int token_var = -1;  // lm tasks: T (candidates must be token-wise to replace a projection)
  // The partial operators the search may build (SearchOptions::admissible): those that keep
  // output dim 0 (T, or conv's batch N) a bare copy (is_token_wise).
  std::function<bool(const Operator&)> admissible;
};

// True if some weight dim of `op` reads one of the output iterators `iters`.
bool weights_read(const Operator& op, const std::vector<int>& iters);

// True if the only coordinate that reads the token iterator (output dim 0: T, conv's N) is a bare
// copy of it on the frontier or the input: no primitive has touched the token dim, no weight is
// indexed by it. Every operator built from such states is a per-token layer (synth_layer.h's
// condition).
bool is_token_wise(const Operator& op);

// Throws dseek::Error ("[synth] task: ...") on an unknown task, a bad size or coefficient.
Task make_task(const TaskOptions& options);

// "k=3,g=4" -> {{"k", 3}, {"g", 4}}; "" -> {}. Names are identifiers, values integers >= 1.
std::vector<std::pair<std::string, int64_t>> parse_coeffs(const std::string& text);

}  // namespace dseek::synth
