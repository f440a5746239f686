// Parameter and FLOP counts of an operator (see cost.h).
#include "synth/cost.h"

#include <limits>

#include "core/error.h"
#include "synth/interpreter.h"

namespace dseek::synth {

namespace {

int64_t extent(Mask m, const std::vector<int64_t>& iter_size) {
  int64_t n = 1;
  for (size_t i = 0; i < iter_size.size(); ++i)
    if (m & (Mask(1) << i)) n *= iter_size[i];
  return n;
}

}  // namespace

ContractionPath contraction_path(const std::vector<Mask>& operands, Mask output_iters,
                                 const std::vector<int64_t>& iter_size) {
  ContractionPath best;
  if (operands.size() <= 1) {
    const Mask summed = operands.empty() ? 0 : operands[0] & ~output_iters;
    best.flops = summed ? extent(operands[0], iter_size) : 0;
    return best;
  }
  best.flops = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < operands.size(); ++i)
    for (size_t j = i + 1; j < operands.size(); ++j) {
      Mask later = output_iters;  // iterators still needed after this contraction
      std::vector<Mask> rest;
      for (size_t k = 0; k < operands.size(); ++k)
        if (k != i && k != j) {
          later |= operands[k];
          rest.push_back(operands[k]);
        }
      const Mask both = operands[i] | operands[j];
      rest.push_back(both & later);
      ContractionPath sub = contraction_path(rest, output_iters, iter_size);
      const int64_t cost = 2 * extent(both, iter_size) + sub.flops;
      if (cost < best.flops) {
        best.flops = cost;
        best.pairs = {{int(i), int(j)}};
        best.pairs.insert(best.pairs.end(), sub.pairs.begin(), sub.pairs.end());
      }
    }
  return best;
}

Mask iterator_mask(const Operator& op, const std::vector<Dim>& dims) {
  std::vector<bool> used(size_t(op.iterator_count()), false);
  for (const auto& d : dims) expr_iters(op.exprs, d.expr, used);
  Mask m = 0;
  for (size_t i = 0; i < used.size(); ++i)
    if (used[i]) m |= Mask(1) << i;
  return m;
}

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
  std::vector<Mask> operands{iterator_mask(op, op.input)};
  for (const auto& w : op.weights) operands.push_back(iterator_mask(op, w));
  const Mask output_iters = (Mask(1) << op.output.size()) - 1;
  return contraction_path(operands, output_iters, iter_size).flops;
}

}  // namespace dseek::synth
