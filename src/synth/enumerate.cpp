// Shape-guided legal actions and exhaustive enumeration with per-depth counts (see enumerate.h).
#include "synth/enumerate.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "synth/canonical.h"
#include "synth/cost.h"

namespace dseek::synth {

int shape_distance(const Operator& op, const Spec& spec) {
  std::vector<Size> f, in = spec.input;
  for (const auto& d : op.frontier) f.push_back(d.size);
  std::sort(f.begin(), f.end());
  std::sort(in.begin(), in.end());
  size_t matched = 0;
  for (size_t i = 0, j = 0; i < f.size() && j < in.size();) {  // multiset intersection
    if (f[i] == in[j]) {
      ++matched, ++i, ++j;
    } else if (f[i] < in[j]) {
      ++i;
    } else {
      ++j;
    }
  }
  const size_t unmatched = f.size() + in.size() - 2 * matched;
  return int((unmatched + 2) / 3);
}

namespace {

bool is_bare_reduce(const Operator& op, const Dim& d) {
  const Expr& e = op.exprs[size_t(d.expr)];
  return e.kind == ExprKind::iter && e.iter >= int(op.output.size());
}

// Iterators mentioned anywhere in the state but frontier position `skip`.
std::vector<bool> iters_used(const Operator& op, int skip) {
  std::vector<bool> used(size_t(op.iterator_count()), false);
  for (int i = 0; i < int(op.frontier.size()); ++i)
    if (i != skip) expr_iters(op.exprs, op.frontier[size_t(i)].expr, used);
  for (const auto& w : op.weights)
    for (const auto& d : w) expr_iters(op.exprs, d.expr, used);
  for (const auto& d : op.input) expr_iters(op.exprs, d.expr, used);
  return used;
}

bool within_budget(const Operator& op, const Spec& spec) {
  for (const auto& d : op.frontier)
    if (!is_legal(d.size, spec.vars, spec.valuations)) return false;
  for (const auto& v : spec.valuations) {
    if (param_count(op, v) > spec.max_params) return false;
    if (naive_flops(op, v) > spec.max_flops) return false;
  }
  return true;
}

// Every assignment of frontier positions to input dims of equal size.
void finalize_perms(const Operator& op, const Spec& spec, std::vector<int>& perm,
                    std::vector<bool>& taken, std::vector<Action>& out) {
  const size_t j = perm.size();
  if (j == spec.input.size()) {
    out.push_back(finalize_action(perm));
    return;
  }
  for (size_t p = 0; p < op.frontier.size(); ++p) {
    if (taken[p] || !(op.frontier[p].size == spec.input[j])) continue;
    taken[p] = true;
    perm.push_back(int(p));
    finalize_perms(op, spec, perm, taken, out);
    perm.pop_back();
    taken[p] = false;
  }
}

std::vector<Action> candidates(const Operator& op, const Spec& spec) {
  std::vector<Action> c;
  const int n = int(op.frontier.size());
  for (const auto& s : spec.reduce_sizes)
    if (int(op.reduce.size()) < spec.max_reductions) c.push_back(reduce_action(s));
  for (int d = 0; d < n; ++d) {
    const Dim& dim = op.frontier[size_t(d)];
    for (int w = 0; w <= int(op.weights.size()) && w < spec.max_weights; ++w) {
      const bool again = w < int(op.weights.size()) &&
                         std::any_of(op.weights[size_t(w)].begin(), op.weights[size_t(w)].end(),
                                     [&](const Dim& x) { return x.expr == dim.expr; });
      if (!again) c.push_back(share_action(d, w));
    }
    // Expand of a reduce iterator used nowhere else only multiplies the operator by its extent.
    if (!(is_bare_reduce(op, dim) && !iters_used(op, d)[size_t(op.exprs[size_t(dim.expr)].iter)]))
      c.push_back(expand_action(d));
    if (spec.allow_shift) c.push_back(shift_action(d));
    for (const auto& s : spec.strides) c.push_back(stride_action(d, s));
    for (const auto& b : spec.merge_blocks)
      if (!(b == dim.size) && divides(b, dim.size, spec.vars, spec.valuations))
        c.push_back(merge_action(d, b));
    for (int e = 0; e < n; ++e) {
      if (e == d) continue;
      c.push_back(split_action(d, e));
      const Dim& win = op.frontier[size_t(e)];
      if (spec.allow_unfold && is_bare_reduce(op, win) && win.size.is_coefficient_only(spec.vars))
        c.push_back(unfold_action(d, e));
    }
  }
  return c;
}

}  // namespace

std::vector<Action> legal_actions(const Operator& op, const Spec& spec) {
  std::vector<Action> legal;
  if (op.complete) return legal;
  if (shape_distance(op, spec) == 0) {
    // Finalize only if every reduce iterator is used: an unused one only scales the result.
    const auto used = iters_used(op, -1);
    bool all_used = true;
    for (size_t i = op.output.size(); i < used.size(); ++i) all_used = all_used && used[i];
    if (all_used) {
      std::vector<int> perm;
      std::vector<bool> taken(op.frontier.size(), false);
      finalize_perms(op, spec, perm, taken, legal);
    }
  }
  const int left = spec.max_primitives - op.primitives() - 1;  // after this action
  if (left < 0) return legal;
  for (const auto& a : candidates(op, spec)) {
    Operator child = op;
    apply(child, a);
    if (int(child.frontier.size()) > spec.max_frontier) continue;
    if (shape_distance(child, spec) > left) continue;
    if (!within_budget(child, spec)) continue;
    legal.push_back(a);
  }
  return legal;
}

namespace {

void validate(const Spec& spec) {
  auto check = [&](const std::vector<Size>& sizes, const char* what) {
    for (const auto& s : sizes)
      DSEEK_CHECK(is_legal(s, spec.vars, spec.valuations),
                  "[synth] spec: {} size {} is not a positive integer under every valuation", what,
                  s.str(spec.vars));
  };
  DSEEK_CHECK(!spec.valuations.empty(), "[synth] spec: no valuation");
  for (const auto& v : spec.valuations)
    DSEEK_CHECK(int(v.size()) == spec.vars.count(),
                "[synth] spec: valuation has {} values for {} "
                "variables",
                v.size(), spec.vars.count());
  check(spec.input, "input");
  check(spec.output, "output");
  check(spec.reduce_sizes, "reduce");
  check(spec.merge_blocks, "merge block");
  check(spec.strides, "stride");
  DSEEK_CHECK(spec.max_primitives >= 0 && spec.max_weights >= 0,
              "[synth] spec: negative budget ({} primitives, {} weights)", spec.max_primitives,
              spec.max_weights);
}

}  // namespace

Enumeration enumerate(const Spec& spec, KeyOptions key_options) {
  validate(spec);
  struct Entry {
    Operator op;
    uint64_t paths = 0;
  };
  Enumeration result;
  std::set<std::string> seen;
  std::map<std::string, Entry> level;
  const Operator root = make_operator(spec.output);
  level.emplace(canonical_key(root, spec.vars, key_options), Entry{root, 1});
  for (int depth = 0; depth <= spec.max_primitives && !level.empty(); ++depth) {
    DepthCount dc;
    dc.depth = depth;
    dc.distinct_states = level.size();
    std::map<std::string, Entry> next;
    for (const auto& [key, entry] : level) {
      dc.raw_states += entry.paths;
      for (const auto& a : legal_actions(entry.op, spec)) {
        Operator child = entry.op;
        apply(child, a);
        const std::string ck = canonical_key(child, spec.vars, key_options);
        if (child.complete) {
          dc.raw_complete += entry.paths;
          if (seen.insert(ck).second) {
            ++dc.distinct_complete;
            result.operators.push_back(child);
            result.keys.push_back(ck);
          }
          continue;
        }
        auto it = next.find(ck);
        if (it == next.end()) {
          // Under the view rules the representative is the simplified state, so the legality
          // rules (which look at expressions) see the same state for every sequence of this key.
          it = next.emplace(ck, Entry{key_options.view_rules ? simplify(child) : child, 0}).first;
        }
        it->second.paths += entry.paths;
      }
    }
    result.depths.push_back(dc);
    level = std::move(next);
  }
  return result;
}

std::string depth_table(const Enumeration& e) {
  std::string s = fmt::format("{:>5} | {:>12} {:>10} | {:>12} {:>10}\n", "depth", "raw states",
                              "distinct", "raw ops", "distinct");
  for (const auto& d : e.depths)
    s += fmt::format("{:>5} | {:>12} {:>10} | {:>12} {:>10}\n", d.depth, d.raw_states,
                     d.distinct_states, d.raw_complete, d.distinct_complete);
  return s;
}

std::string depth_table(const Enumeration& ordered, const Enumeration& canonical) {
  std::string s =
      fmt::format("{:>5} | {:>12} {:>10} {:>10} | {:>12} {:>10} {:>10}\n", "depth", "raw states",
                  "ordered", "canonical", "raw ops", "ordered", "canonical");
  for (size_t i = 0; i < ordered.depths.size() && i < canonical.depths.size(); ++i) {
    const auto &o = ordered.depths[i], &c = canonical.depths[i];
    s += fmt::format("{:>5} | {:>12} {:>10} {:>10} | {:>12} {:>10} {:>10}\n", o.depth, o.raw_states,
                     o.distinct_states, c.distinct_states, o.raw_complete, o.distinct_complete,
                     c.distinct_complete);
  }
  return s;
}

}  // namespace dseek::synth
