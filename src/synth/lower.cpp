// Lowering an operator into a plan of dseek ops (see lower.h); lower_run.cpp runs it.
#include "synth/lower.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "synth/cost.h"
#include "synth/interpreter.h"

namespace dseek::synth {

namespace {

// An operand while the plan is built: its register and the iterators of its dims, in order.
struct Live {
  int reg = -1;
  std::vector<int> iters;
};

Mask mask_of(const std::vector<int>& iters) {
  Mask m = 0;
  for (int i : iters) m |= Mask(1) << i;
  return m;
}

bool has(Mask m, int iter) {
  return (m >> iter) & 1;
}

// An operand with no iterators left (a weight summed on its own) is held as [1].
Shape extents(const std::vector<int>& iters, const std::vector<int64_t>& iter_size) {
  Shape s;
  for (int i : iters) s.push_back(iter_size[size_t(i)]);
  if (s.empty()) s.push_back(1);
  return s;
}

int64_t extent(const std::vector<int>& iters, const std::vector<int64_t>& iter_size) {
  return shape_numel(extents(iters, iter_size));
}

// Iterators of node `id` in order of first appearance, the major operand first: a source whose
// dims are bare iterators then gets the operand layout of the source itself (no gather).
void collect_iters(const std::vector<Expr>& arena, int id, std::vector<int>& order) {
  const Expr& e = arena[size_t(id)];
  if (e.kind == ExprKind::iter) {
    if (std::find(order.begin(), order.end(), e.iter) == order.end()) order.push_back(e.iter);
    return;
  }
  collect_iters(arena, e.a, order);
  if (e.b >= 0) collect_iters(arena, e.b, order);
}

// Row-major offset of the coordinates of `dims`, or -1 if one is padding.
int64_t offset_of(const std::vector<Dim>& dims, const Shape& shape,
                  const std::vector<int64_t>& node_values) {
  int64_t off = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t c = node_values[size_t(dims[i].expr)];
    if (c < 0) return -1;
    off = off * shape[i] + c;
  }
  return off;
}

// Every D consecutive offsets are one aligned run of the source (or all padding).
bool rows_of(const std::vector<int64_t>& offset, int64_t D, int64_t source_numel) {
  if (source_numel % D != 0) return false;
  for (size_t r = 0; r < offset.size(); r += size_t(D)) {
    const int64_t base = offset[r];
    if (base >= 0 && base % D != 0) return false;
    for (int64_t j = 1; j < D; ++j)
      if (offset[r + size_t(j)] != (base < 0 ? -1 : base + j)) return false;
  }
  return true;
}

// The loop nest at concrete sizes. An iterator read only through ⌊i/B⌋ and i mod B (a Merge of
// an output or reduce dim that no coordinate sees whole) is refined into two iterators of extents
// n/B and B, so the einsum sees the structure: a grouped linear's group index becomes the batch of
// its GEMMs instead of one GEMM per output channel. Output iterators stay first and in output
// order (a refined output dim [n] is the row-major [n/B, B]).
struct Nest {
  std::vector<Expr> exprs;             // the operator's arena, refined div/mod nodes now iterators
  std::vector<int64_t> sizes, sizes2;  // per node: its size and unfold window
  std::vector<int64_t> iter_size;
  std::vector<std::string> names;  // o0, r1, o1h / o1l for the parts of a refined o1
  int n_out = 0;
  int count() const { return int(iter_size.size()); }
};

int64_t concrete(const Size& s, const Valuation& values) {
  return concrete_shape(std::vector<Size>{s}, values)[0];
}

Nest refine(const Operator& op, const Valuation& values) {
  Nest n;
  n.exprs = op.exprs;
  n.sizes.assign(n.exprs.size(), 0);
  n.sizes2.assign(n.exprs.size(), 0);
  for (size_t i = 0; i < n.exprs.size(); ++i) {
    const Expr& e = n.exprs[i];
    if (e.kind == ExprKind::iter) continue;
    n.sizes[i] = concrete(e.size, values);
    if (e.kind == ExprKind::unfold) n.sizes2[i] = concrete(e.size2, values);
  }
  const int n_o = int(op.output.size());
  std::vector<int> out_order, red_order;  // iterator ids in their final order
  for (int i = 0; i < op.iterator_count(); ++i) {
    n.iter_size.push_back(concrete(op.iterator_size(i), values));
    n.names.push_back(i < n_o ? fmt::format("o{}", i) : fmt::format("r{}", i - n_o));
    (i < n_o ? out_order : red_order).push_back(i);
  }
  std::vector<bool> coordinate(n.exprs.size(), false);  // nodes that are a dim's coordinate
  std::vector<bool> dead(n.exprs.size(), false);        // iterator nodes refined away
  for (const auto& d : op.input) coordinate[size_t(d.expr)] = true;
  for (const auto& w : op.weights)
    for (const auto& d : w) coordinate[size_t(d.expr)] = true;
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t v = 0; v < n.exprs.size() && !changed; ++v) {
      if (n.exprs[v].kind != ExprKind::iter || coordinate[v] || dead[v]) continue;
      const int it = n.exprs[v].iter;
      bool ok = true;
      int64_t B = 0;
      std::vector<size_t> parents;
      for (size_t p = 0; p < n.exprs.size() && ok; ++p) {
        const Expr& e = n.exprs[p];
        if (p != v && !dead[p] && e.kind == ExprKind::iter && e.iter == it) ok = false;
        if (e.kind == ExprKind::iter || (e.a != int(v) && e.b != int(v))) continue;
        ok = (e.kind == ExprKind::div || e.kind == ExprKind::mod) && (B == 0 || n.sizes[p] == B);
        B = n.sizes[p];
        parents.push_back(p);
      }
      const int64_t extent = n.iter_size[size_t(it)];
      if (!ok || parents.empty() || B <= 1 || B >= extent || extent % B != 0) continue;
      const int hi = n.count(), lo = hi + 1;
      n.iter_size.push_back(extent / B);
      n.iter_size.push_back(B);
      n.names.push_back(n.names[size_t(it)] + "h");
      n.names.push_back(n.names[size_t(it)] + "l");
      for (auto* order : {&out_order, &red_order}) {
        const auto pos = std::find(order->begin(), order->end(), it);
        if (pos == order->end()) continue;
        order->insert(order->erase(pos), {hi, lo});
      }
      for (size_t p : parents) {
        const bool major = n.exprs[p].kind == ExprKind::div;
        n.exprs[p] = Expr{};
        n.exprs[p].iter = major ? hi : lo;
        n.sizes[p] = 0;
      }
      n.exprs[v].iter = hi;  // read by nobody now; keep its index valid
      dead[v] = true;
      changed = true;
    }
  }
  // Renumber: output iterators, then reduce iterators.
  std::vector<int> order = out_order, id(n.iter_size.size(), -1);
  order.insert(order.end(), red_order.begin(), red_order.end());
  Nest r = n;
  r.iter_size.clear();
  r.names.clear();
  for (size_t k = 0; k < order.size(); ++k) {
    id[size_t(order[k])] = int(k);
    r.iter_size.push_back(n.iter_size[size_t(order[k])]);
    r.names.push_back(n.names[size_t(order[k])]);
  }
  for (auto& e : r.exprs)
    if (e.kind == ExprKind::iter) e.iter = id[size_t(e.iter)];
  r.n_out = int(out_order.size());
  DSEEK_CHECK(r.count() <= 32, "[synth] lower: {} iterators (at most 32)", r.count());
  return r;
}

struct Builder {
  const Nest& nest;
  const Valuation& values;
  const std::vector<int64_t>& iter_size;
  LoweredPlan plan;

  std::string iters_str(const std::vector<int>& iters) const {
    std::vector<std::string> names;
    for (int i : iters) names.push_back(nest.names[size_t(i)]);
    return fmt::format("({})", fmt::join(names, ","));
  }

  int new_register() { return plan.registers++; }

  // True if node `id` is built from bare iterators by Split only: then it is the row-major
  // index over its iterators (a Split's minor extent is its operand's range), and `leaves` counts
  // them. A source whose dims all are, each iterator once, is its operand as it stands.
  bool composition(int id, int& leaves) const {
    const Expr& e = nest.exprs[size_t(id)];
    if (e.kind == ExprKind::iter) return ++leaves, true;
    return e.kind == ExprKind::split && composition(e.a, leaves) && composition(e.b, leaves);
  }

  // The gather index of step s: each operand element's offset in the source (−1: padding), then
  // rows of the longest aligned contiguous run.
  void index(Step& s, const std::vector<Dim>& dims, const Live& live) const {
    const int64_t n = shape_numel(s.out_shape), source_numel = shape_numel(s.source_shape);
    std::vector<int64_t> offset(static_cast<size_t>(n)), node;
    std::vector<int64_t> it(static_cast<size_t>(nest.count()), 0);
    for (int64_t e = 0; e < n; ++e) {
      for (int64_t rem = e, i = int64_t(live.iters.size()) - 1; i >= 0; --i) {
        it[size_t(live.iters[size_t(i)])] = rem % s.out_shape[size_t(i)];
        rem /= s.out_shape[size_t(i)];
      }
      eval_exprs(nest.exprs, nest.sizes, nest.sizes2, it, node);
      offset[size_t(e)] = offset_of(dims, s.source_shape, node);
    }
    // The longest trailing run of the operand's dims that is a contiguous row of the source.
    for (size_t j = s.out_shape.size(); j-- > 0;) {
      const int64_t D = s.D * s.out_shape[j];
      if (!rows_of(offset, D, source_numel)) break;
      s.D = D;
    }
    s.rows = source_numel / s.D;
    DSEEK_CHECK(s.rows < std::numeric_limits<int32_t>::max(),
                "[synth] lower: {} source rows do not fit 32-bit gather ids", s.rows);
    for (size_t r = 0; r < offset.size(); r += size_t(s.D)) {
      const int64_t base = offset[r];
      s.padded = s.padded || base < 0;
      s.ids.push_back(int32_t(base < 0 ? s.rows : base / s.D));
    }
    // A view pair the refinement did not see through can still read the source in order.
    s.identity = !s.padded && n == source_numel && s.ids == std::vector<int32_t>{0};
    if (s.identity) s.ids.clear();
  }

  // Step 1: the operand of one source (input: source -1), read through its dims' coordinates.
  Live gather(const std::vector<Dim>& dims, int source) {
    Live live;
    for (const auto& d : dims) collect_iters(nest.exprs, d.expr, live.iters);
    Step s;
    s.kind = StepKind::gather;
    s.source = source;
    s.source_shape = concrete_shape(dims, values);
    s.out_shape = extents(live.iters, iter_size);
    int leaves = 0;
    bool row_major = true;
    for (const auto& d : dims) row_major = row_major && composition(d.expr, leaves);
    s.identity = row_major && leaves == int(live.iters.size());
    if (!s.identity) index(s, dims, live);
    s.out = live.reg = new_register();
    plan.description +=
        fmt::format("r{} = gather {} -> {} {}\n", s.out,
                    source < 0 ? "in" : fmt::format("w{}", source), iters_str(live.iters),
                    s.identity ? std::string("(the tensor itself)")
                               : fmt::format("({} rows of {}{})", s.ids.size(), s.D,
                                             s.padded ? ", zero padding" : ""));
    plan.steps.push_back(std::move(s));
    return live;
  }

  // Step 3: sums out the iterators of x not in `keep`.
  Live sum(const Live& x, Mask keep) {
    std::vector<int> kept, summed, perm;
    for (size_t i = 0; i < x.iters.size(); ++i)
      (has(keep, x.iters[i]) ? kept : summed).push_back(x.iters[i]);
    if (summed.empty()) return x;
    for (const auto& group : {kept, summed})
      for (int it : group)
        perm.push_back(int(std::find(x.iters.begin(), x.iters.end(), it) - x.iters.begin()));
    Step s;
    s.kind = StepKind::sum;
    s.in0 = x.reg;
    s.perm_a = perm;
    s.m = extent(kept, iter_size);
    s.k = extent(summed, iter_size);
    s.out_shape = extents(kept, iter_size);
    s.out = new_register();
    plan.description += fmt::format("r{} = sum r{} over {} -> {}\n", s.out, x.reg,
                                    iters_str(summed), iters_str(kept));
    plan.steps.push_back(s);
    return {s.out, kept};
  }

  // Row-major strides of x's iterators by iterator id (0: an iterator x does not have).
  std::vector<int64_t> strides_of(const Live& x) const {
    std::vector<int64_t> st(size_t(nest.count()), 0);
    int64_t s = 1;
    for (size_t i = x.iters.size(); i-- > 0;) {
      st[size_t(x.iters[i])] = s;
      s *= iter_size[size_t(x.iters[i])];
    }
    return st;
  }

  // The iterators of `group` as one index of a register with strides `st`: those of extent > 1
  // ordered outermost first, each stride the next one's times its extent. Returns the index's
  // stride (0 for an empty group, or one the register lacks entirely: broadcast) and its order in
  // *order, or −1 when the group is not one strided index.
  int64_t flatten(std::vector<int> group, const std::vector<int64_t>& st,
                  std::vector<int>& order) const {
    std::erase_if(group, [&](int it) { return iter_size[size_t(it)] == 1; });
    order = group;
    const auto missing = std::count_if(group.begin(), group.end(),
                                       [&](int it) { return st[size_t(it)] == 0; });
    if (group.empty() || missing == int64_t(group.size())) return 0;
    if (missing > 0) return -1;
    std::sort(order.begin(), order.end(),
              [&](int x, int y) { return st[size_t(x)] > st[size_t(y)]; });
    for (size_t i = 0; i + 1 < order.size(); ++i)
      if (st[size_t(order[i])] != st[size_t(order[i + 1])] * iter_size[size_t(order[i + 1])])
        return -1;
    return st[size_t(order.back())];
  }

  // A group both operands index (batch, k): one strided index of each, in one order.
  bool flatten2(const std::vector<int>& group, const std::vector<int64_t>& st_a,
                const std::vector<int64_t>& st_b, std::vector<int>& order, int64_t& stride_a,
                int64_t& stride_b) const {
    std::vector<int> order_a, order_b;
    stride_a = flatten(group, st_a, order_a);
    stride_b = flatten(group, st_b, order_b);
    if (stride_a < 0 || stride_b < 0) return false;
    if (stride_a == 0 && stride_b == 0 && !order_a.empty()) return false;  // neither has it
    order = stride_a > 0 ? order_a : order_b;
    return stride_a == 0 || stride_b == 0 || order_a == order_b;
  }

  // Plans s (a contraction of a and b with its iterator groups) as one batched_matmul over
  // strided views: fills s.sa/sb/sc, the extents and the result's layout *c_iters, or returns
  // false. `extra` (row iterators of one operand, only when there is no shared batch) joins the
  // batch, the other operand broadcast over it.
  bool plan_strided(Step& s, const Live& a, const Live& b, std::vector<int> batch,
                    std::vector<int> rows_a, std::vector<int> rows_b, const std::vector<int>& red,
                    const std::vector<int>& extra, std::vector<int>& c_iters) const {
    for (auto* rows : {&rows_a, &rows_b})
      std::erase_if(*rows, [&](int it) {
        return std::find(extra.begin(), extra.end(), it) != extra.end();
      });
    batch.insert(batch.end(), extra.begin(), extra.end());
    const std::vector<int64_t> st_a = strides_of(a), st_b = strides_of(b);
    std::vector<int> o_batch, o_m, o_n, o_k;
    int64_t ab = 0, bb = 0, ak = 0, bk = 0;
    if (!flatten2(batch, st_a, st_b, o_batch, ab, bb) || !flatten2(red, st_a, st_b, o_k, ak, bk))
      return false;
    const int64_t am = flatten(rows_a, st_a, o_m), bn = flatten(rows_b, st_b, o_n);
    if (am < 0 || bn < 0) return false;
    s.batch = extent(batch, iter_size);
    s.m = extent(rows_a, iter_size);
    s.n = extent(rows_b, iter_size);
    s.k = extent(red, iter_size);
    s.sa = {ab, am, ak};
    s.sb = {bb, bn, bk};
    if (!ops::gemm_view(s.sa, s.batch, s.m, s.k) || !ops::gemm_view(s.sb, s.batch, s.n, s.k))
      return false;
    // The result: its three groups as blocks in some order, the output's own (sorted) order
    // when that is one, else batch, m, n. Iterators of extent 1 go anywhere (never stepped).
    std::vector<int> all = batch, sorted;
    all.insert(all.end(), rows_a.begin(), rows_a.end());
    all.insert(all.end(), rows_b.begin(), rows_b.end());
    for (int it : all)
      if (iter_size[size_t(it)] > 1) sorted.push_back(it);
    std::sort(sorted.begin(), sorted.end());
    const std::vector<int>* blocks[3] = {&o_batch, &o_m, &o_n};
    int order[3] = {0, 1, 2};
    bool found = false;
    ops::MatrixStrides first{};
    std::vector<int> first_layout;
    do {
      std::vector<int> layout;
      for (int i : order) layout.insert(layout.end(), blocks[i]->begin(), blocks[i]->end());
      int64_t stride[3] = {0, 0, 0}, step = 1;
      for (int j = 2; j >= 0; --j) {
        stride[order[j]] = step;
        step *= extent(*blocks[order[j]], iter_size);
      }
      ops::MatrixStrides sc{stride[0], stride[1], stride[2]};
      if (!ops::gemm_view(sc, s.batch, s.m, s.n)) continue;
      if (layout == sorted) {
        s.sc = sc;
        c_iters = all;
        std::sort(c_iters.begin(), c_iters.end());
        return true;
      }
      if (!found) {
        found = true;
        first = sc;
        first_layout = layout;
      }
    } while (std::next_permutation(order, order + 3));
    if (!found) return false;
    s.sc = first;
    c_iters = first_layout;
    for (int it : all)
      if (iter_size[size_t(it)] == 1) c_iters.push_back(it);
    return true;
  }

  // Step 2: C[batch, m, n] = Σ_k A[batch, m, k] · B[batch, n, k]; `later` = iterators needed after.
  Live contract(Live a, Live b, Mask later) {
    const Mask ma = mask_of(a.iters), mb = mask_of(b.iters);
    a = sum(a, later | mb);  // what only one side has and nobody needs is summed first
    b = sum(b, later | ma);
    std::vector<int> batch, rows_a, red, rows_b;
    for (int it : a.iters) {
      if (!has(mb, it))
        rows_a.push_back(it);
      else if (has(later, it))
        batch.push_back(it);
      else
        red.push_back(it);
    }
    for (int it : b.iters)
      if (!has(ma, it)) rows_b.push_back(it);
    auto positions = [](const Live& x, std::initializer_list<const std::vector<int>*> groups) {
      std::vector<int> perm;
      for (const auto* g : groups)
        for (int it : *g)
          perm.push_back(int(std::find(x.iters.begin(), x.iters.end(), it) - x.iters.begin()));
      return perm;
    };
    Step s;
    s.kind = StepKind::contract;
    s.in0 = a.reg;
    s.in1 = b.reg;
    Live c{new_register(), {}};
    // One batched_matmul over strided views if the groups allow it: as they are, else (no shared
    // batch) with row iterators of one operand as the batch — the subset giving the fewest,
    // largest matrices.
    s.strided = plan_strided(s, a, b, batch, rows_a, rows_b, red, {}, c.iters);
    if (!s.strided && std::none_of(batch.begin(), batch.end(),
                                   [&](int it) { return iter_size[size_t(it)] > 1; })) {
      Step best;
      std::vector<int> best_iters;
      for (const auto* rows : {&rows_a, &rows_b}) {
        if (rows->size() > 16) continue;
        for (uint32_t pick = 1; pick < (uint32_t(1) << rows->size()); ++pick) {
          std::vector<int> extra;
          for (size_t i = 0; i < rows->size(); ++i)
            if ((pick >> i) & 1) extra.push_back((*rows)[i]);
          Step t = s;
          std::vector<int> t_iters;
          if (plan_strided(t, a, b, batch, rows_a, rows_b, red, extra, t_iters) &&
              (!best.strided || t.batch < best.batch)) {
            best = t;
            best.strided = true;
            best_iters = t_iters;
          }
        }
      }
      if (best.strided) {
        s = best;
        c.iters = best_iters;
      }
    }
    if (!s.strided) {
      s.perm_a = positions(a, {&batch, &rows_a, &red});
      s.perm_b = positions(b, {&batch, &rows_b, &red});
      s.batch = extent(batch, iter_size);
      s.m = extent(rows_a, iter_size);
      s.n = extent(rows_b, iter_size);
      s.k = extent(red, iter_size);
      c.iters = batch;
      c.iters.insert(c.iters.end(), rows_a.begin(), rows_a.end());
      c.iters.insert(c.iters.end(), rows_b.begin(), rows_b.end());
    }
    s.out = c.reg;
    s.out_shape = extents(c.iters, iter_size);
    plan.description += fmt::format(
        "r{} = contract r{} {} . r{} {} -> {} (batch {}, m {}, n {}, k {}{})\n", s.out, a.reg,
        iters_str(a.iters), b.reg, iters_str(b.iters), iters_str(c.iters), s.batch, s.m, s.n, s.k,
        s.strided ? fmt::format(", strided a {}/{}/{} b {}/{}/{} c {}/{}/{}", s.sa.batch, s.sa.row,
                                s.sa.col, s.sb.batch, s.sb.row, s.sb.col, s.sc.batch, s.sc.row,
                                s.sc.col)
                  : std::string(", copied"));
    plan.steps.push_back(s);
    return c;
  }

  // Step 4: the output, from the last operand.
  void finish(Live x, Mask used) {
    const int n_out = nest.n_out;
    x = sum(x, (Mask(1) << n_out) - 1);
    Step s;
    s.kind = StepKind::finish;
    s.in0 = x.reg;
    std::vector<int> sorted = x.iters;
    std::sort(sorted.begin(), sorted.end());
    for (int it : sorted)
      s.perm_a.push_back(int(std::find(x.iters.begin(), x.iters.end(), it) - x.iters.begin()));
    for (int o = 0; o < n_out; ++o)
      if (!has(mask_of(x.iters), o)) s.broadcast.push_back(o);
    double scale = 1.0;
    for (int r = n_out; r < nest.count(); ++r)
      if (!has(used, r)) scale *= double(iter_size[size_t(r)]);
    s.scale = float(scale);
    s.out_shape = Shape(iter_size.begin(), iter_size.begin() + n_out);  // refined output dims
    s.out = plan.output_register = new_register();
    plan.description += fmt::format("r{} = output from r{} (broadcast {}, scale {})\n", s.out,
                                    x.reg, fmt::join(s.broadcast, ","), s.scale);
    plan.steps.push_back(s);
  }
};

}  // namespace

LoweredPlan lower(const Operator& op, const Valuation& values) {
  DSEEK_CHECK(op.complete, "[synth] lower: operator is not complete");
  const Nest nest = refine(op, values);
  Builder b{nest, values, nest.iter_size, {}};
  b.plan.input_shape = concrete_shape(op.input, values);
  b.plan.output_shape = concrete_shape(op.output, values);
  for (const auto& w : op.weights) b.plan.weight_shapes.push_back(concrete_shape(w, values));

  std::vector<Live> live{b.gather(op.input, -1)};
  for (size_t w = 0; w < op.weights.size(); ++w) live.push_back(b.gather(op.weights[w], int(w)));
  std::vector<Mask> masks;
  Mask used = 0;
  for (const auto& l : live) {
    masks.push_back(mask_of(l.iters));
    used |= masks.back();
  }
  const Mask output_iters = (Mask(1) << nest.n_out) - 1;
  const ContractionPath path = contraction_path(masks, output_iters, b.iter_size);
  for (const auto& [i, j] : path.pairs) {
    Mask later = output_iters;
    for (size_t k = 0; k < live.size(); ++k)
      if (int(k) != i && int(k) != j) later |= mask_of(live[k].iters);
    const Live c = b.contract(live[size_t(i)], live[size_t(j)], later);
    live.erase(live.begin() + j);  // j > i
    live.erase(live.begin() + i);
    live.push_back(c);
  }
  b.finish(live[0], used);
  return std::move(b.plan);
}

}  // namespace dseek::synth
