// Canonicalisation rules and the canonical key (see canonical.h).
#include "synth/canonical.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "core/rng.h"

namespace dseek::synth {

namespace {

// Hash-consing arena: structurally equal nodes get one index, so "the same a" is index equality.
struct Builder {
  std::vector<Expr> arena;
  std::map<std::tuple<int, int, int, int, Size, Size>, int> index;

  int add(const Expr& e) {
    const auto k = std::make_tuple(int(e.kind), e.iter, e.a, e.b, e.size, e.size2);
    if (auto it = index.find(k); it != index.end()) return it->second;
    const int id = add_expr(arena, e);
    index.emplace(k, id);
    return id;
  }

  // Adds e (whose operands are already in this arena) after rewriting it by V1–V3.
  int add_simplified(Expr e) {
    const auto at = [&](int i) -> const Expr& { return arena[size_t(i)]; };
    if ((e.kind == ExprKind::div || e.kind == ExprKind::mod) && at(e.a).kind == ExprKind::split &&
        at(e.a).size == e.size)  // V1
      return e.kind == ExprKind::div ? at(e.a).a : at(e.a).b;
    if (e.kind == ExprKind::split && at(e.a).kind == ExprKind::div &&
        at(e.b).kind == ExprKind::mod && at(e.a).a == at(e.b).a && at(e.a).size == e.size &&
        at(e.b).size == e.size)  // V2
      return at(e.a).a;
    if (e.kind == ExprKind::stride && at(e.a).kind == ExprKind::stride) {  // V3
      Expr fused = at(e.a);
      fused.size = fused.size * e.size;
      return add(fused);
    }
    return add(e);
  }
};

void remap(std::vector<Dim>& dims, const std::vector<int>& new_id) {
  for (auto& d : dims) d.expr = new_id[size_t(d.expr)];
}

// Depth-first order in which node `id` first mentions each iterator.
void first_uses(const std::vector<Expr>& arena, int id, std::vector<int>& order) {
  const Expr& e = arena[size_t(id)];
  if (e.kind == ExprKind::iter) {
    if (std::find(order.begin(), order.end(), e.iter) == order.end()) order.push_back(e.iter);
    return;
  }
  first_uses(arena, e.a, order);
  if (e.b >= 0) first_uses(arena, e.b, order);
}

std::string dim_list(const std::vector<std::string>& items) {
  return fmt::format("{}", fmt::join(items, ","));
}

}  // namespace

Operator simplify(const Operator& op) {
  Operator out = op;
  Builder b;
  std::vector<int> new_id(op.exprs.size(), -1);
  for (size_t i = 0; i < op.exprs.size(); ++i) {
    Expr e = op.exprs[i];
    if (e.a >= 0) e.a = new_id[size_t(e.a)];
    if (e.b >= 0) e.b = new_id[size_t(e.b)];
    new_id[i] = b.add_simplified(e);
  }
  out.exprs = std::move(b.arena);
  remap(out.frontier, new_id);
  remap(out.input, new_id);
  for (auto& w : out.weights) remap(w, new_id);
  return out;
}

std::string canonical_key(const Operator& raw, const Vars& vars, KeyOptions options) {
  const Operator op = options.view_rules ? simplify(raw) : raw;
  const int n_out = int(op.output.size());
  const int n_iter = op.iterator_count();

  // Pass 1: print with every reduce iterator anonymous ("r:<size>") to order the free parts.
  std::vector<std::string> names(static_cast<size_t>(n_iter));
  for (int i = 0; i < n_iter; ++i)
    names[size_t(i)] =
        i < n_out ? fmt::format("o{}", i) : "r:" + op.reduce[size_t(i - n_out)].str(vars);
  auto dim_str = [&](const Dim& d) { return expr_str(op.exprs, d.expr, vars, names); };
  auto sorted_dims = [&](const std::vector<Dim>& dims) {  // O2: indices sorted by printed form
    std::vector<std::pair<std::string, int>> v;
    for (size_t i = 0; i < dims.size(); ++i) v.emplace_back(dim_str(dims[i]), int(i));
    std::sort(v.begin(), v.end());
    std::vector<int> idx;
    for (auto& p : v) idx.push_back(p.second);
    return idx;
  };
  auto weight_order = [&]() {  // O2: weights sorted by their sorted dims' printed form
    std::vector<std::pair<std::string, int>> v;
    for (size_t w = 0; w < op.weights.size(); ++w) {
      std::vector<std::string> s;
      for (int i : sorted_dims(op.weights[w])) s.push_back(dim_str(op.weights[w][size_t(i)]));
      v.emplace_back(dim_list(s), int(w));
    }
    std::sort(v.begin(), v.end());
    std::vector<int> idx;
    for (auto& p : v) idx.push_back(p.second);
    return idx;
  };
  // The leaves in canonical order: input (fixed order) or frontier (sorted), then the weights.
  auto leaves = [&]() {
    std::vector<const Dim*> l;
    if (op.complete) {
      for (const auto& d : op.input) l.push_back(&d);
    } else {
      for (int i : sorted_dims(op.frontier)) l.push_back(&op.frontier[size_t(i)]);
    }
    for (int w : weight_order())
      for (int i : sorted_dims(op.weights[size_t(w)]))
        l.push_back(&op.weights[size_t(w)][size_t(i)]);
    return l;
  };

  // O1: rename reduce iterators by first use along the canonical leaf order.
  std::vector<int> order;
  for (const Dim* d : leaves()) first_uses(op.exprs, d->expr, order);
  std::vector<int> unused;
  for (int i = n_out; i < n_iter; ++i)
    if (std::find(order.begin(), order.end(), i) == order.end()) unused.push_back(i);
  std::sort(unused.begin(), unused.end(), [&](int x, int y) {
    return op.reduce[size_t(x - n_out)] < op.reduce[size_t(y - n_out)];
  });
  std::vector<std::string> red_sizes;
  int next = 0;
  for (int i : order)
    if (i >= n_out) {
      names[size_t(i)] = fmt::format("r{}", next++);
      red_sizes.push_back(op.reduce[size_t(i - n_out)].str(vars));
    }
  for (int i : unused) {
    names[size_t(i)] = fmt::format("r{}", next++);
    red_sizes.push_back(op.reduce[size_t(i - n_out)].str(vars));
  }

  // Pass 2: print with the final names (sorting again: ties of pass 1 may now order differently).
  std::vector<std::string> out_sizes;
  for (const auto& s : op.output) out_sizes.push_back(s.str(vars));
  std::string key = fmt::format("out[{}] red[{}]", dim_list(out_sizes), dim_list(red_sizes));
  std::vector<std::string> part;
  if (op.complete) {
    for (const auto& d : op.input) part.push_back(dim_str(d));
    key += fmt::format(" in[{}]", dim_list(part));
  } else {
    for (const auto& d : op.frontier) part.push_back(dim_str(d) + ":" + d.size.str(vars));
    std::sort(part.begin(), part.end());
    key += fmt::format(" front[{}]", dim_list(part));
  }
  std::vector<std::string> ws;
  for (const auto& w : op.weights) {
    std::vector<std::string> dims;
    for (const auto& d : w) dims.push_back(dim_str(d));
    std::sort(dims.begin(), dims.end());
    ws.push_back("(" + dim_list(dims) + ")");
  }
  std::sort(ws.begin(), ws.end());
  key += fmt::format(" w[{}]", dim_list(ws));
  return key;
}

uint64_t canonical_hash(const Operator& op, const Vars& vars) {
  return fnv1a64(canonical_key(op, vars));
}

}  // namespace dseek::synth
