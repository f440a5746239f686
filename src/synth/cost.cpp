// Parameter and FLOP counts of an operator (see cost.h).
#include "synth/cost.h"

#include <limits>

#include "core/error.h"
#include "synth/interpreter.h"

namespace dseek::synth {

namespace {

using Mask = uint32_t;  // a set of iterators (an operator has far fewer than 32)

struct Operand {
  Mask iters = 0;
};

Mask iters_of(const Operator& op, const std::vector<Dim>& dims) {
  std::vector<bool> used(size_t(op.iterator_count()), false);
  for (const auto& d : dims) expr_iters(op.exprs, d.expr, used);
  Mask m = 0;
  for (size_t i = 0; i < used.size(); ++i)
    if (used[i]) m |= Mask(1) << i;
  return m;
}

int64_t extent(Mask m, const std::vector<int64_t>& iter_size) {
  int64_t n = 1;
  for (size_t i = 0; i < iter_size.size(); ++i)
    if (m & (Mask(1) << i)) n *= iter_size[i];
  return n;
}

// Cheapest cost of contracting `ops` down to one operand and summing its leftover reductions.
// Exhaustive over pair orders: operators have at most a few weights.
int64_t best_cost(const std::vector<Operand>& ops, Mask output_iters,
                  const std::vector<int64_t>& iter_size) {
  if (ops.size() == 1) {
    const Mask summed = ops[0].iters & ~output_iters;
    return summed ? extent(ops[0].iters, iter_size) : 0;
  }
  int64_t best = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < ops.size(); ++i)
    for (size_t j = i + 1; j < ops.size(); ++j) {
      Mask later = output_iters;  // iterators still needed after this contraction
      for (size_t k = 0; k < ops.size(); ++k)
        if (k != i && k != j) later |= ops[k].iters;
      const Mask both = ops[i].iters | ops[j].iters;
      std::vector<Operand> rest;
      for (size_t k = 0; k < ops.size(); ++k)
        if (k != i && k != j) rest.push_back(ops[k]);
      rest.push_back({both & later});
      best = std::min(best, 2 * extent(both, iter_size) + best_cost(rest, output_iters, iter_size));
    }
  return best;
}

}  // namespace

int64_t param_count(const Operator& op, const Valuation& values) {
  int64_t n = 0;
  for (const auto& w : op.weights) {
    int64_t p = 1;
    for (int64_t e : concrete_shape(w, values)) p *= e;
    n += p;
  }
  return n;
}

int64_t naive_flops(const Operator& op, const Valuation& values) {
  int64_t points = 1;
  for (int64_t e : concrete_shape(op.output, values)) points *= e;
  for (int64_t e : concrete_shape(op.reduce, values)) points *= e;
  return points * int64_t(1 + op.weights.size());
}

int64_t flops(const Operator& op, const Valuation& values) {
  DSEEK_CHECK(op.complete, "[synth] flops: operator is not complete");
  DSEEK_CHECK(op.iterator_count() <= 32, "[synth] flops: {} iterators (at most 32)",
              op.iterator_count());
  std::vector<int64_t> iter_size;
  for (int i = 0; i < op.iterator_count(); ++i) {
    const auto v = op.iterator_size(i).eval(values);
    DSEEK_CHECK(v.has_value(), "[synth] flops: iterator {} has no integer extent", i);
    iter_size.push_back(*v);
  }
  std::vector<Operand> ops{{iters_of(op, op.input)}};
  for (const auto& w : op.weights) ops.push_back({iters_of(op, w)});
  const Mask output_iters = (Mask(1) << op.output.size()) - 1;
  return best_cost(ops, output_iters, iter_size);
}

}  // namespace dseek::synth
