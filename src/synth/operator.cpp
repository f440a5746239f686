// The operator IR: applying primitives to a state (see operator.h and docs/SYNTH.md).
#include "synth/operator.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "core/error.h"

namespace dseek::synth {

const char* primitive_name(Primitive p) {
  switch (p) {
    case Primitive::split: return "split";
    case Primitive::merge: return "merge";
    case Primitive::shift: return "shift";
    case Primitive::stride: return "stride";
    case Primitive::unfold: return "unfold";
    case Primitive::expand: return "expand";
    case Primitive::reduce: return "reduce";
    case Primitive::share: return "share";
    case Primitive::finalize: return "finalize";
  }
  return "?";
}

int Operator::primitives() const {
  return int(history.size()) - (complete ? 1 : 0);
}

const Size& Operator::iterator_size(int i) const {
  return i < int(output.size()) ? output[size_t(i)] : reduce[size_t(i) - output.size()];
}

Operator make_operator(const std::vector<Size>& output) {
  Operator op;
  op.output = output;
  for (size_t i = 0; i < output.size(); ++i) {
    Expr e;
    e.kind = ExprKind::iter;
    e.iter = int(i);
    op.frontier.push_back({output[i], add_expr(op.exprs, e)});
  }
  return op;
}

namespace {

void check_dim(const Operator& op, int d, const char* what) {
  DSEEK_CHECK(d >= 0 && d < int(op.frontier.size()), "[synth] {}: frontier position {} of {}", what,
              d, op.frontier.size());
}

Expr node(ExprKind kind, int a, int b, const Size& size) {
  Expr e;
  e.kind = kind;
  e.a = a;
  e.b = b;
  e.size = size;
  return e;
}

}  // namespace

void apply(Operator& op, const Action& act) {
  DSEEK_CHECK(!op.complete, "[synth] {}: operator is already complete", primitive_name(act.kind));
  auto& f = op.frontier;
  switch (act.kind) {
    case Primitive::split: {  // dims a (major), b (minor) -> one dim a·n_b + b, at a's place
      check_dim(op, act.a, "split");
      check_dim(op, act.b, "split");
      DSEEK_CHECK(act.a != act.b, "[synth] split: same dim twice: {}", act.a);
      const Dim da = f[size_t(act.a)], db = f[size_t(act.b)];
      f[size_t(act.a)] = {da.size * db.size,
                          add_expr(op.exprs, node(ExprKind::split, da.expr, db.expr, db.size))};
      f.erase(f.begin() + act.b);
      break;
    }
    case Primitive::merge: {  // dim of n -> (i / b: n/b, i mod b: b), in a's place
      check_dim(op, act.a, "merge");
      const Dim d = f[size_t(act.a)];
      const Size major = d.size / act.size;
      DSEEK_CHECK(!act.size.is_one() && !major.is_one(), "[synth] merge: trivial block");
      const int hi = add_expr(op.exprs, node(ExprKind::div, d.expr, -1, act.size));
      const int lo = add_expr(op.exprs, node(ExprKind::mod, d.expr, -1, act.size));
      f[size_t(act.a)] = {major, hi};
      f.insert(f.begin() + act.a + 1, Dim{act.size, lo});
      break;
    }
    case Primitive::shift: {
      check_dim(op, act.a, "shift");
      Dim& d = f[size_t(act.a)];
      d.expr = add_expr(op.exprs, node(ExprKind::shift, d.expr, -1, d.size));
      break;
    }
    case Primitive::stride: {
      check_dim(op, act.a, "stride");
      DSEEK_CHECK(!act.size.is_one(), "[synth] stride: factor 1");
      Dim& d = f[size_t(act.a)];
      d.expr = add_expr(op.exprs, node(ExprKind::stride, d.expr, -1, act.size));
      d.size = d.size * act.size;
      break;
    }
    case Primitive::unfold: {  // dims i (a, extent n) and window k (b, extent K) -> i + k - K/2
      check_dim(op, act.a, "unfold");
      check_dim(op, act.b, "unfold");
      DSEEK_CHECK(act.a != act.b, "[synth] unfold: same dim twice: {}", act.a);
      const Dim di = f[size_t(act.a)], dk = f[size_t(act.b)];
      Expr e = node(ExprKind::unfold, di.expr, dk.expr, di.size);
      e.size2 = dk.size;
      f[size_t(act.a)].expr = add_expr(op.exprs, e);
      f.erase(f.begin() + act.b);
      break;
    }
    case Primitive::expand: {
      check_dim(op, act.a, "expand");
      f.erase(f.begin() + act.a);
      break;
    }
    case Primitive::reduce: {
      DSEEK_CHECK(!act.size.is_one(), "[synth] reduce: extent 1");
      Expr e;
      e.kind = ExprKind::iter;
      e.iter = op.iterator_count();
      op.reduce.push_back(act.size);
      f.push_back({act.size, add_expr(op.exprs, e)});
      break;
    }
    case Primitive::share: {
      check_dim(op, act.a, "share");
      DSEEK_CHECK(act.b >= 0 && act.b <= int(op.weights.size()), "[synth] share: weight {} of {}",
                  act.b, op.weights.size());
      if (act.b == int(op.weights.size())) op.weights.emplace_back();
      op.weights[size_t(act.b)].push_back(f[size_t(act.a)]);
      break;
    }
    case Primitive::finalize: {
      DSEEK_CHECK(act.perm.size() == f.size(),
                  "[synth] finalize: {} input dims for {} frontier dims", act.perm.size(),
                  f.size());
      std::vector<bool> seen(f.size(), false);
      for (int p : act.perm) {
        check_dim(op, p, "finalize");
        DSEEK_CHECK(!seen[size_t(p)], "[synth] finalize: frontier position {} twice", p);
        seen[size_t(p)] = true;
        op.input.push_back(f[size_t(p)]);
      }
      f.clear();
      op.complete = true;
      break;
    }
  }
  op.history.push_back(act);
}

bool is_complete(const Operator& op) {
  return op.complete;
}

std::string action_str(const Action& act, const Vars& vars) {
  switch (act.kind) {
    case Primitive::split: return fmt::format("split({},{})", act.a, act.b);
    case Primitive::merge: return fmt::format("merge({};{})", act.a, act.size.str(vars));
    case Primitive::shift: return fmt::format("shift({})", act.a);
    case Primitive::stride: return fmt::format("stride({};{})", act.a, act.size.str(vars));
    case Primitive::unfold: return fmt::format("unfold({},{})", act.a, act.b);
    case Primitive::expand: return fmt::format("expand({})", act.a);
    case Primitive::reduce: return fmt::format("reduce({})", act.size.str(vars));
    case Primitive::share: return fmt::format("share({}->w{})", act.a, act.b);
    case Primitive::finalize: return fmt::format("finalize({})", fmt::join(act.perm, ","));
  }
  return "?";
}

std::string history_str(const Operator& op, const Vars& vars) {
  std::string s;
  for (const auto& a : op.history) s += (s.empty() ? "" : " ; ") + action_str(a, vars);
  return s;
}

Action split_action(int major, int minor) {
  return {Primitive::split, major, minor, {}, {}};
}
Action merge_action(int dim, const Size& block) {
  return {Primitive::merge, dim, -1, block, {}};
}
Action shift_action(int dim) {
  return {Primitive::shift, dim, -1, {}, {}};
}
Action stride_action(int dim, const Size& factor) {
  return {Primitive::stride, dim, -1, factor, {}};
}
Action unfold_action(int dim, int window) {
  return {Primitive::unfold, dim, window, {}, {}};
}
Action expand_action(int dim) {
  return {Primitive::expand, dim, -1, {}, {}};
}
Action reduce_action(const Size& extent) {
  return {Primitive::reduce, -1, -1, extent, {}};
}
Action share_action(int dim, int weight) {
  return {Primitive::share, dim, weight, {}, {}};
}
Action finalize_action(std::vector<int> perm) {
  return {Primitive::finalize, -1, -1, {}, std::move(perm)};
}

}  // namespace dseek::synth
