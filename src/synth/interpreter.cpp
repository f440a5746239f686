// Reference interpreter (see interpreter.h): one loop over the output and reduce iterators, the
// expression arena evaluated at each point.
#include "synth/interpreter.h"

#include <cassert>

#include "core/error.h"

namespace dseek::synth {

namespace {

int64_t eval_size(const Size& s, const Valuation& values) {
  const auto v = s.eval(values);
  DSEEK_CHECK(v.has_value(),
              "[synth] interpret: size {}/{} with exponents is not a positive integer", s.num,
              s.den);
  return *v;
}

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Row-major offset of the coordinates of `dims`, or -1 if one is padding.
int64_t offset_of(const std::vector<Dim>& dims, const std::vector<int64_t>& shape,
                  const std::vector<int64_t>& node_values) {
  int64_t off = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t c = node_values[size_t(dims[i].expr)];
    if (c < 0) return -1;
    assert(c < shape[i]);  // only unfold leaves a dim, and it marks that as padding
    off = off * shape[i] + c;
  }
  return off;
}

}  // namespace

std::vector<int64_t> concrete_shape(const std::vector<Size>& sizes, const Valuation& values) {
  std::vector<int64_t> shape;
  for (const auto& s : sizes) shape.push_back(eval_size(s, values));
  return shape;
}

std::vector<int64_t> concrete_shape(const std::vector<Dim>& dims, const Valuation& values) {
  std::vector<int64_t> shape;
  for (const auto& d : dims) shape.push_back(eval_size(d.size, values));
  return shape;
}

std::vector<double> interpret(const Operator& op, const Valuation& values,
                              const std::vector<double>& input,
                              const std::vector<std::vector<double>>& weights) {
  DSEEK_CHECK(op.complete, "[synth] interpret: operator is not complete");
  const auto in_shape = concrete_shape(op.input, values);
  DSEEK_CHECK(int64_t(input.size()) == product(in_shape),
              "[synth] interpret: input has {} values, "
              "want {}",
              input.size(), product(in_shape));
  DSEEK_CHECK(weights.size() == op.weights.size(), "[synth] interpret: {} weights, want {}",
              weights.size(), op.weights.size());
  std::vector<std::vector<int64_t>> w_shapes;
  for (size_t w = 0; w < weights.size(); ++w) {
    w_shapes.push_back(concrete_shape(op.weights[w], values));
    DSEEK_CHECK(int64_t(weights[w].size()) == product(w_shapes[w]),
                "[synth] interpret: weight {} has {} values, want {}", w, weights[w].size(),
                product(w_shapes[w]));
  }
  // Concrete sizes of every expression node, once.
  std::vector<int64_t> sizes(op.exprs.size(), 0), sizes2(op.exprs.size(), 0);
  for (size_t i = 0; i < op.exprs.size(); ++i) {
    if (op.exprs[i].kind == ExprKind::iter) continue;
    sizes[i] = eval_size(op.exprs[i].size, values);
    if (op.exprs[i].kind == ExprKind::unfold) sizes2[i] = eval_size(op.exprs[i].size2, values);
  }
  const auto out_shape = concrete_shape(op.output, values);
  const auto red_shape = concrete_shape(op.reduce, values);
  const int64_t n_out = product(out_shape), n_red = product(red_shape);
  const size_t n_o = out_shape.size();

  std::vector<double> out(size_t(n_out), 0.0);
  std::vector<int64_t> iters(size_t(op.iterator_count()), 0), node_values;
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t rem = o, i = int64_t(n_o) - 1; i >= 0; --i) {
      iters[size_t(i)] = rem % out_shape[size_t(i)];
      rem /= out_shape[size_t(i)];
    }
    double acc = 0.0;
    for (int64_t r = 0; r < n_red; ++r) {
      for (int64_t rem = r, i = int64_t(red_shape.size()) - 1; i >= 0; --i) {
        iters[n_o + size_t(i)] = rem % red_shape[size_t(i)];
        rem /= red_shape[size_t(i)];
      }
      eval_exprs(op.exprs, sizes, sizes2, iters, node_values);
      const int64_t in_off = offset_of(op.input, in_shape, node_values);
      if (in_off < 0) continue;
      double term = input[size_t(in_off)];
      for (size_t w = 0; w < weights.size() && term != 0.0; ++w) {
        const int64_t w_off = offset_of(op.weights[w], w_shapes[w], node_values);
        term = w_off < 0 ? 0.0 : term * weights[w][size_t(w_off)];
      }
      acc += term;
    }
    out[size_t(o)] = acc;
  }
  return out;
}

}  // namespace dseek::synth
