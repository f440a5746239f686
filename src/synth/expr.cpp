// Index expressions: construction, printing, dependencies and evaluation (see expr.h).
#include "synth/expr.h"

#include <fmt/format.h>

#include <cassert>

namespace dseek::synth {

int add_expr(std::vector<Expr>& arena, const Expr& e) {
  assert(e.kind == ExprKind::iter || (e.a >= 0 && e.a < int(arena.size())));
  assert(e.b < int(arena.size()));
  arena.push_back(e);
  return int(arena.size()) - 1;
}

std::string expr_str(const std::vector<Expr>& arena, int id, const Vars& vars,
                     const std::vector<std::string>& iter_names) {
  const Expr& e = arena[size_t(id)];
  auto sub = [&](int child) { return expr_str(arena, child, vars, iter_names); };
  switch (e.kind) {
    case ExprKind::iter: return iter_names[size_t(e.iter)];
    case ExprKind::split:
      return fmt::format("split({},{};{})", sub(e.a), sub(e.b), e.size.str(vars));
    case ExprKind::div: return fmt::format("div({};{})", sub(e.a), e.size.str(vars));
    case ExprKind::mod: return fmt::format("mod({};{})", sub(e.a), e.size.str(vars));
    case ExprKind::shift: return fmt::format("shift({};{})", sub(e.a), e.size.str(vars));
    case ExprKind::stride: return fmt::format("stride({};{})", sub(e.a), e.size.str(vars));
    case ExprKind::unfold:
      return fmt::format("unfold({},{};{},{})", sub(e.a), sub(e.b), e.size.str(vars),
                         e.size2.str(vars));
  }
  return "?";
}

void expr_iters(const std::vector<Expr>& arena, int id, std::vector<bool>& used) {
  const Expr& e = arena[size_t(id)];
  if (e.kind == ExprKind::iter) {
    used[size_t(e.iter)] = true;
    return;
  }
  expr_iters(arena, e.a, used);
  if (e.b >= 0) expr_iters(arena, e.b, used);
}

void eval_exprs(const std::vector<Expr>& arena, const std::vector<int64_t>& sizes,
                const std::vector<int64_t>& sizes2, const std::vector<int64_t>& iters,
                std::vector<int64_t>& values) {
  values.resize(arena.size());
  for (size_t i = 0; i < arena.size(); ++i) {
    const Expr& e = arena[i];
    if (e.kind == ExprKind::iter) {
      values[i] = iters[size_t(e.iter)];
      continue;
    }
    const int64_t a = values[size_t(e.a)];
    const int64_t b = e.b >= 0 ? values[size_t(e.b)] : 0;
    if (a < 0 || b < 0) {  // a padded coordinate stays padded
      values[i] = -1;
      continue;
    }
    const int64_t n = sizes[i];
    switch (e.kind) {
      case ExprKind::iter: break;
      case ExprKind::split: values[i] = a * n + b; break;
      case ExprKind::div: values[i] = a / n; break;
      case ExprKind::mod: values[i] = a % n; break;
      case ExprKind::shift: values[i] = (a + 1) % n; break;
      case ExprKind::stride: values[i] = a * n; break;
      case ExprKind::unfold: {
        const int64_t v = a + b - sizes2[i] / 2;
        values[i] = (v >= 0 && v < n) ? v : -1;
        break;
      }
    }
  }
}

}  // namespace dseek::synth
