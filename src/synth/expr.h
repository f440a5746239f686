// Index expressions: how one input-side (or weight-side) coordinate is computed from the loop
// iterators of an operator. Every primitive of the IR (operator.h) adds one node; nodes live in an
// arena (a vector) in which children always come before their parents, so evaluating the arena in
// order evaluates every node after its operands. The exact formulas are in docs/SYNTH.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "synth/size.h"

namespace dseek::synth {

enum class ExprKind {
  iter,    // loop iterator `iter`: output iterators 0..n_out-1, then reduce iterators
  split,   // a·size + b          (two dims a, b of sizes n_a and size become one of n_a·size)
  div,     // a / size            (Merge, major part)
  mod,     // a mod size          (Merge, minor part)
  shift,   // (a + 1) mod size    (size = the dim's extent)
  stride,  // size · a
  unfold,  // a + b − size2/2 for a in [0, size), b in [0, size2); outside [0, size) reads 0
};

struct Expr {
  ExprKind kind = ExprKind::iter;
  int iter = -1;  // for iter
  int a = -1;     // operand nodes (arena indices)
  int b = -1;
  Size size;   // see ExprKind
  Size size2;  // unfold: the window K
  bool operator==(const Expr&) const = default;
};

// Appends e to the arena and returns its index.
int add_expr(std::vector<Expr>& arena, const Expr& e);

// Prints node `id` ("o0", "r1", "split(o0,r1;d_in)", ...); iterator names come from iter_names.
std::string expr_str(const std::vector<Expr>& arena, int id, const Vars& vars,
                     const std::vector<std::string>& iter_names);

// Marks the iterators that node `id` depends on (used[iter] = true).
void expr_iters(const std::vector<Expr>& arena, int id, std::vector<bool>& used);

// Values of every node for one assignment of the iterators. `sizes`/`sizes2` hold the concrete
// value of each node's size/size2. A coordinate outside its dim (unfold's zero padding) is -1 and
// propagates through every node above it.
void eval_exprs(const std::vector<Expr>& arena, const std::vector<int64_t>& sizes,
                const std::vector<int64_t>& sizes2, const std::vector<int64_t>& iters,
                std::vector<int64_t>& values);

}  // namespace dseek::synth
