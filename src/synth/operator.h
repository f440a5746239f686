// The operator IR (Syno, ASPLOS'24): an operator is built bottom-up, from the coordinates of its
// output toward those of its input. The state starts with one iterator per output dim on the
// "frontier"; each primitive rewrites frontier dims (each a size and an index expression over the
// loop iterators) until the frontier is exactly the input's dims, which Finalize fixes in order.
// Reduce adds a summed iterator, Share copies a frontier coordinate into a weight tensor, Expand
// drops one (the input does not depend on it), the views (Split, Merge, Shift, Stride, Unfold)
// change how the input is indexed. The computed function is
//   out[o] = Σ_r  in[e_in(o, r)] · Π_w W_w[e_w(o, r)]      (0 where a coordinate is padding)
// The exact index formula of each primitive is in docs/SYNTH.md. A search walks this state: its
// legal next actions (enumerate.h), apply(), is_complete(), and canonical_key() (canonical.h).
#pragma once

#include <string>
#include <vector>

#include "synth/expr.h"
#include "synth/size.h"

namespace dseek::synth {

enum class Primitive { split, merge, shift, stride, unfold, expand, reduce, share, finalize };

const char* primitive_name(Primitive p);

// One step. a and b are frontier positions; `size` is the Merge block, the Stride factor or the
// Reduce extent; for Share `b` is the weight index (== weight count: a new weight); Finalize's
// `perm[j]` is the frontier position that becomes input dim j.
struct Action {
  Primitive kind = Primitive::reduce;
  int a = -1;
  int b = -1;
  Size size;
  std::vector<int> perm;
};

// A dimension on the frontier, of the input or of a weight: its extent and its coordinate.
struct Dim {
  Size size;
  int expr = -1;
};

struct Operator {
  std::vector<Size> output;               // output dims (iterators 0..n-1)
  std::vector<Size> reduce;               // reduce iterators (iterator output.size() + i)
  std::vector<Expr> exprs;                // expression arena
  std::vector<Dim> frontier;              // input-side dims still being built
  std::vector<std::vector<Dim>> weights;  // each weight's dims, in Share order
  std::vector<Dim> input;                 // after Finalize: the input's dims in order
  std::vector<Action> history;
  bool complete = false;

  int primitives() const;  // applied primitives, Finalize not counted
  int iterator_count() const { return int(output.size() + reduce.size()); }
  // Extent of iterator i.
  const Size& iterator_size(int i) const;
};

// The start state: one frontier dim per output dim.
Operator make_operator(const std::vector<Size>& output);

// Applies one primitive (symbolic checks only; enumerate.h checks sizes against valuations).
// Throws dseek::Error on an action that does not fit the state.
void apply(Operator& op, const Action& action);

bool is_complete(const Operator& op);

// "share(1->w0)", "merge(2;d_out/g)", "finalize(0,3,1,2)".
std::string action_str(const Action& action, const Vars& vars);
// All actions, separated by " ; ".
std::string history_str(const Operator& op, const Vars& vars);

// Shorthands for building actions by hand (tests, docs).
Action split_action(int major, int minor);
Action merge_action(int dim, const Size& block);
Action shift_action(int dim);
Action stride_action(int dim, const Size& factor);
Action unfold_action(int dim, int window);
Action expand_action(int dim);
Action reduce_action(const Size& extent);
Action share_action(int dim, int weight);
Action finalize_action(std::vector<int> perm);

}  // namespace dseek::synth
