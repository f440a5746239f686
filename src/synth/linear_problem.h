// The [T, d_in] → [T, d_out] problem of the synthesis tests and `dseek synth bench`: its variables
// (T, d_in, d_out primary; r a rank and g a group count, coefficients) and the classic layers over
// them, built through the IR (the action lists of docs/SYNTH.md, "The IR"). One declaration, so
// the bench times the very operators the tests check against direct loops.
#pragma once

#include <vector>

#include "synth/operator.h"
#include "synth/size.h"

namespace dseek::synth {

struct LinearProblem {
  Vars vars;
  int T = vars.add("T", VarKind::primary);
  int din = vars.add("d_in", VarKind::primary);
  int dout = vars.add("d_out", VarKind::primary);
  int r = vars.add("r", VarKind::coefficient);
  int g = vars.add("g", VarKind::coefficient);
  Size sT = Size::var(T), sdin = Size::var(din), sdout = Size::var(dout), sr = Size::var(r),
       sg = Size::var(g);
};

// The operator from the start state of `output` after `actions` in order (apply() checks each).
inline Operator build_operator(const std::vector<Size>& output,
                               const std::vector<Action>& actions) {
  Operator op = make_operator(output);
  for (const Action& a : actions) apply(op, a);
  return op;
}

// y[t,o] = Σ_i x[t,i] W[o,i]
inline Operator dense_linear(const LinearProblem& p) {
  return build_operator({p.sT, p.sdout},
                        {share_action(1, 0), expand_action(1), reduce_action(p.sdin),
                         share_action(1, 0), finalize_action({0, 1})});
}

// y[t,o] = Σ_j Σ_i x[t,i] B[j,i] A[o,j]   (A = w0 [d_out, r], B = w1 [r, d_in])
inline Operator low_rank(const LinearProblem& p) {
  return build_operator({p.sT, p.sdout},
                        {share_action(1, 0), expand_action(1), reduce_action(p.sr),
                         share_action(1, 0), share_action(1, 1), expand_action(1),
                         reduce_action(p.sdin), share_action(1, 1), finalize_action({0, 1})});
}

// y[t, G·(d_out/g) + o] = Σ_i x[t, G·(d_in/g) + i] W[G, o, i]   (W = w0 [g, d_out/g, d_in/g])
inline Operator grouped_linear(const LinearProblem& p) {
  return build_operator({p.sT, p.sdout},
                        {merge_action(1, p.sdout / p.sg), share_action(1, 0), share_action(2, 0),
                         expand_action(2), reduce_action(p.sdin / p.sg), share_action(2, 0),
                         split_action(1, 2), finalize_action({0, 1})});
}

}  // namespace dseek::synth
