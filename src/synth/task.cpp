// Synthesis tasks as specs (see task.h).
#include "synth/task.h"

#include <cctype>

#include "core/error.h"

namespace dseek::synth {

namespace {

void add_unique(std::vector<Size>& sizes, const Size& s, const Spec& spec) {
  if (!is_legal(s, spec.vars, spec.valuations)) return;
  for (const auto& x : sizes)
    if (x == s) return;
  sizes.push_back(s);
}

// Reduce extents and merge blocks from the feature sizes and the coefficients (task.h).
void add_coefficient_sizes(Spec& spec, const Size& in, const Size& out,
                           const std::vector<int>& coeff_vars) {
  add_unique(spec.reduce_sizes, in, spec);
  for (int c : coeff_vars) {
    const Size sc = Size::var(c);
    add_unique(spec.reduce_sizes, sc, spec);
    add_unique(spec.reduce_sizes, in / sc, spec);
    add_unique(spec.merge_blocks, sc, spec);
    add_unique(spec.merge_blocks, out / sc, spec);
    add_unique(spec.merge_blocks, in / sc, spec);
  }
}

std::vector<int> add_coeffs(Vars& vars, Valuation& values, const TaskOptions& o) {
  std::vector<int> ids;
  for (const auto& [name, value] : o.coeffs) {
    for (const auto& n : vars.names)
      DSEEK_CHECK(n != name, "[synth] task: coefficient '{}' clashes with a variable of {}", name,
                  o.task);
    DSEEK_CHECK(vars.count() < kMaxVars, "[synth] task: too many coefficients (at most {} in all)",
                kMaxVars - vars.count());
    ids.push_back(vars.add(name, VarKind::coefficient));
    values.push_back(value);
  }
  return ids;
}

Operator build(const std::vector<Size>& output, const std::vector<Action>& actions) {
  Operator op = make_operator(output);
  for (const auto& a : actions) apply(op, a);
  return op;
}

Task linear_task(const TaskOptions& o, const char* in_name, const char* out_name) {
  Task task;
  task.name = o.task;
  Spec& spec = task.spec;
  Valuation v;
  const int T = spec.vars.add("T", VarKind::primary);
  const int din = spec.vars.add(in_name, VarKind::primary);
  const int dout = spec.vars.add(out_name, VarKind::primary);
  v = {o.tokens, o.d_in, o.d_out};
  const std::vector<int> coeffs = add_coeffs(spec.vars, v, o);
  spec.valuations = {v};
  const Size sT = Size::var(T), sin = Size::var(din), sout = Size::var(dout);
  spec.input = {sT, sin};
  spec.output = {sT, sout};
  add_coefficient_sizes(spec, sin, sout, coeffs);
  // Feature dims have no neighbourhood: a Shift of one is a relabelling of the features and an
  // Unfold a convolution across them, so the lm tasks leave both out (conv keeps them).
  spec.allow_shift = false;
  spec.allow_unfold = false;
  spec.max_primitives = o.max_depth;
  spec.max_weights = 2;
  spec.max_reductions = 2;
  spec.max_frontier = 3;
  // At most 4x the dense layer's weights and 16x its interpreter loop: keeps every candidate's
  // interpreter check and teacher fit cheap.
  spec.max_params = 4 * o.d_in * o.d_out;
  spec.max_flops = 16 * 2 * o.tokens * o.d_in * o.d_out;
  task.baseline = build({sT, sout}, {share_action(1, 0), expand_action(1), reduce_action(sin),
                                     share_action(1, 0), finalize_action({0, 1})});
  task.token_var = T;
  task.admissible = is_token_wise;
  return task;
}

Task conv_task(const TaskOptions& o) {
  Task task;
  task.name = o.task;
  Spec& spec = task.spec;
  const int N = spec.vars.add("N", VarKind::primary);
  const int C = spec.vars.add("C", VarKind::primary);
  const int Cout = spec.vars.add("C_out", VarKind::primary);
  const int H = spec.vars.add("H", VarKind::primary);
  const int W = spec.vars.add("W", VarKind::primary);
  Valuation v = {o.tokens, o.d_in, o.d_out, o.image, o.image};
  const std::vector<int> coeffs = add_coeffs(spec.vars, v, o);
  spec.valuations = {v};
  const Size sN = Size::var(N), sC = Size::var(C), sCout = Size::var(Cout), sH = Size::var(H),
             sW = Size::var(W);
  spec.input = {sN, sC, sH, sW};
  spec.output = {sN, sCout, sH, sW};
  add_coefficient_sizes(spec, sC, sCout, coeffs);
  spec.allow_shift = true;
  spec.allow_unfold = true;
  spec.max_primitives = o.max_depth;
  spec.max_weights = 2;
  spec.max_reductions = 3;
  spec.max_frontier = 5;
  int k = -1;
  for (int c : coeffs)
    if (spec.vars.names[size_t(c)] == "k") k = c;
  const int64_t window = k >= 0 ? v[size_t(k)] : 1;
  spec.max_params = 4 * o.d_in * o.d_out * window * window;
  spec.max_flops = 16 * 2 * o.tokens * o.d_in * o.d_out * o.image * o.image * window * window;
  std::vector<Action> dense = {share_action(1, 0), expand_action(1), reduce_action(sC),
                               share_action(3, 0)};
  if (k >= 0) {  // the k×k convolution (docs/SYNTH.md)
    const Size sk = Size::var(k);
    dense.insert(dense.end(), {reduce_action(sk), share_action(4, 0), unfold_action(1, 4),
                               reduce_action(sk), share_action(4, 0), unfold_action(2, 4)});
  }
  dense.push_back(finalize_action({0, 3, 1, 2}));
  task.baseline = build({sN, sCout, sH, sW}, dense);
  task.admissible = is_token_wise;  // per image: nothing mixes the batch dim N (output dim 0)
  if (o.translation_equivariant)
    task.admissible = [](const Operator& op) {
      return is_token_wise(op) && !weights_read(op, {2, 3});  // shares only add: prunes early
    };
  return task;
}

}  // namespace

bool weights_read(const Operator& op, const std::vector<int>& iters) {
  for (const auto& w : op.weights)
    for (const Dim& d : w) {
      std::vector<bool> used(size_t(op.iterator_count()), false);
      expr_iters(op.exprs, d.expr, used);
      for (int i : iters)
        if (i < op.iterator_count() && used[size_t(i)]) return true;
    }
  return false;
}

bool is_token_wise(const Operator& op) {
  auto reads_token = [&](const Dim& d) {
    std::vector<bool> used(size_t(op.iterator_count()), false);
    expr_iters(op.exprs, d.expr, used);
    return bool(used[0]);  // not the vector<bool> proxy into a dead vector
  };
  auto bare_token = [&](const Dim& d) {
    const Expr& e = op.exprs[size_t(d.expr)];
    return e.kind == ExprKind::iter && e.iter == 0;
  };
  int copies = 0;
  // A complete operator's frontier is its input (Finalize keeps both).
  for (const Dim& d : op.complete ? op.input : op.frontier) {
    if (!reads_token(d)) continue;
    if (!bare_token(d)) return false;
    ++copies;
  }
  for (const auto& w : op.weights)
    for (const Dim& d : w)
      if (reads_token(d)) return false;
  return copies == 1;
}

std::vector<std::pair<std::string, int64_t>> parse_coeffs(const std::string& text) {
  std::vector<std::pair<std::string, int64_t>> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    start = end + 1;
    const size_t eq = item.find('=');
    DSEEK_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < item.size(),
                "[synth] --coeffs: '{}' is not name=value (e.g. k=3,g=4)", item);
    const std::string name = item.substr(0, eq), value = item.substr(eq + 1);
    bool ident = std::isalpha(static_cast<unsigned char>(name[0])) != 0;
    for (char ch : name)
      ident = ident && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_');
    DSEEK_CHECK(ident, "[synth] --coeffs: '{}' is not a name (letters, digits, _)", name);
    bool digits = value.size() <= 9;
    for (char ch : value) digits = digits && std::isdigit(static_cast<unsigned char>(ch));
    DSEEK_CHECK(digits && std::stoll(value) >= 1, "[synth] --coeffs: {}={} is not an integer >= 1",
                name, value);
    for (const auto& [n, x] : out)
      DSEEK_CHECK(n != name, "[synth] --coeffs: '{}' given twice", name);
    out.emplace_back(name, std::stoll(value));
  }
  return out;
}

Task make_task(const TaskOptions& o) {
  DSEEK_CHECK(o.d_in >= 1 && o.d_out >= 1 && o.tokens >= 1 && o.image >= 1,
              "[synth] task: sizes must be >= 1 (d_in {}, d_out {}, tokens {}, image {})", o.d_in,
              o.d_out, o.tokens, o.image);
  DSEEK_CHECK(o.max_depth >= 1 && o.max_depth <= 16, "[synth] task: max depth {} not in [1, 16]",
              o.max_depth);
  DSEEK_CHECK(!o.translation_equivariant || o.task == "conv",
              "[synth] task: translation equivariance is a conv constraint, not {}'s", o.task);
  if (o.task == "lm-proj") return linear_task(o, "d_in", "d_out");
  if (o.task == "lm-ffn") return linear_task(o, "d_model", "d_ff");
  if (o.task == "conv") return conv_task(o);
  fail("[synth] task: unknown task '{}' (lm-proj, lm-ffn or conv)", o.task);
}

}  // namespace dseek::synth
