// Operators at a real model's projection shapes (see bench.h).
#include "synth/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "synth/cost.h"
#include "synth/evaluate.h"
#include "synth/interpreter.h"
#include "synth/linear_problem.h"
#include "synth/lower.h"

namespace dseek::synth {

namespace {

// The first size of `op` that is not a positive integer under `v`, printed; "" when all are.
std::string bad_size(const Operator& op, const Vars& vars, const Valuation& v) {
  auto bad = [&](const Size& s) { return !s.eval(v).has_value(); };
  for (const Size& s : op.output)
    if (bad(s)) return s.str(vars);
  for (const Size& s : op.reduce)
    if (bad(s)) return s.str(vars);
  for (const Dim& d : op.input)
    if (bad(d.size)) return d.size.str(vars);
  for (const auto& w : op.weights)
    for (const Dim& d : w)
      if (bad(d.size)) return d.size.str(vars);
  for (const Expr& e : op.exprs)
    for (const Size* s : {&e.size, &e.size2})
      if (bad(*s)) return s->str(vars);
  return "";
}

std::string coefficients_str(const Vars& vars, const Valuation& v) {
  std::string out;
  for (int i = 0; i < vars.count(); ++i)
    if (vars.kinds[size_t(i)] == VarKind::coefficient)
      out += fmt::format("{}{} = {}", out.empty() ? "" : ", ", vars.names[size_t(i)], v[size_t(i)]);
  return out.empty() ? "no coefficients" : out;
}

// A built-in design of `p` (synth/linear_problem.h) as a bench operator: `op` with g = `groups`
// and every other variable 1 in its one valuation (the rank is set per shape).
BenchOperator built_in(const LinearProblem& p, const std::string& label, Operator op,
                       int64_t groups) {
  BenchOperator b;
  b.label = label;
  b.record.spec.vars = p.vars;
  Valuation v(size_t(p.vars.count()), 1);
  v[size_t(p.g)] = groups;
  b.record.spec.valuations = {v};
  b.record.spec.input = {p.sT, p.sdin};
  b.record.spec.output = {p.sT, p.sdout};
  b.record.op = std::move(op);
  DSEEK_CHECK(b.record.op.complete, "[synth bench] built-in {}: not complete", label);
  return b;
}

std::string plan_summary(const LoweredPlan& plan) {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  for (const Step& s : plan.steps) {
    switch (s.kind) {
      case StepKind::gather:
        if (!s.identity)
          add(fmt::format("gather {} rows of {}{}", s.ids.size(), s.D,
                          s.padded ? " (padded)" : ""));
        break;
      case StepKind::contract:
        add((s.batch == 1 ? fmt::format("gemm {}x{}x{}", s.m, s.n, s.k)
                          : fmt::format("{} gemms {}x{}x{}", s.batch, s.m, s.n, s.k)) +
            (s.strided ? "" : " (operands copied)"));
        break;
      case StepKind::sum: add(fmt::format("sum {}x{}", s.m, s.k)); break;
      case StepKind::finish:
        if (!s.broadcast.empty() || s.scale != 1.0f) add("broadcast/scale");
        break;
    }
  }
  return out;
}

// The most elements one tensor or gather index of the plan holds.
int64_t largest(const LoweredPlan& plan) {
  int64_t n = std::max(shape_numel(plan.input_shape), shape_numel(plan.output_shape));
  for (const Shape& s : plan.weight_shapes) n = std::max(n, shape_numel(s));
  for (const Step& s : plan.steps) {
    n = std::max(n, shape_numel(s.out_shape));
    n = std::max(n, int64_t(s.ids.size()));
  }
  return n;
}

std::string ms_str(double ms) {
  return ms >= 100.0 ? fmt::format("{:.1f}", ms) : fmt::format("{:.3f}", ms);
}

std::string count_str(double n) {
  if (n >= 1e12) return fmt::format("{:.2f}T", n / 1e12);
  if (n >= 1e9) return fmt::format("{:.2f}G", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.2f}K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

}  // namespace

std::vector<BenchShape> parse_bench_shapes(const std::string& text) {
  if (text == "v2-lite")
    return {{"q_proj", 2048, 3072},
            {"o_proj", 2048, 2048},
            {"expert.up", 2048, 1408},
            {"expert.down", 1408, 2048},
            {"dense_ffn.up", 2048, 10944}};
  std::vector<BenchShape> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    pos = comma + 1;
    BenchShape s;
    std::string dims = item;
    if (const size_t eq = item.find('='); eq != std::string::npos) {
      s.name = item.substr(0, eq);
      dims = item.substr(eq + 1);
    }
    const size_t x = dims.find('x');
    auto number = [&](const std::string& t) -> int64_t {
      if (t.empty() || t.size() > 9 || t.find_first_not_of("0123456789") != std::string::npos)
        return 0;
      return std::stoll(t);
    };
    if (x != std::string::npos) {
      s.d_in = number(dims.substr(0, x));
      s.d_out = number(dims.substr(x + 1));
    }
    DSEEK_CHECK(s.d_in > 0 && s.d_out > 0,
                "[synth bench] --shapes: '{}' is not [NAME=]D_INxD_OUT with positive sizes (e.g. "
                "2048x3072 or q_proj=2048x3072), nor v2-lite",
                item);
    if (s.name.empty()) s.name = dims;
    out.push_back(s);
  }
  return out;
}

KnownName parse_known_name(const std::string& name) {
  const size_t slash = name.find('/');
  KnownName k{name.substr(0, slash), 0, slash == std::string::npos};
  if (!k.plain) {
    const std::string num = name.substr(slash + 1);
    if (!num.empty() && num.size() < 7 && num.find_first_not_of("0123456789") == std::string::npos)
      k.n = std::stoll(num);
  }
  return k;
}

std::vector<std::string> split_known_names(const std::string& list) {
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    names.push_back(list.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return names;
}

BenchOperator known_operator(const std::string& name) {
  const LinearProblem p;
  const KnownName k = parse_known_name(name);
  if (k.kind == "dense" && k.plain) return built_in(p, "dense", dense_linear(p), 1);
  if (k.kind == "lowrank" && k.n >= 1) {
    BenchOperator b = built_in(p, fmt::format("low rank r=d/{}", k.n), low_rank(p), 1);
    b.rank_var = p.r;
    b.rank_div = k.n;
    return b;
  }
  if (k.kind == "grouped" && k.n >= 1)
    return built_in(p, fmt::format("grouped g={}", k.n), grouped_linear(p), k.n);
  fail(
      "[synth] known operator '{}': dense, lowrank/N (rank min(d_in, d_out)/N) or grouped/N "
      "(N groups), N >= 1",
      name);
}

std::vector<BenchOperator> known_operators(const std::string& list) {
  const std::string text =
      list == "default" ? "dense,lowrank/4,lowrank/8,grouped/2,grouped/4,grouped/8" : list;
  std::vector<BenchOperator> ops;
  for (const std::string& name : split_known_names(text)) ops.push_back(known_operator(name));
  DSEEK_CHECK(ops[0].label == "dense",
              "[synth] known operators '{}': dense must come first (the reference)", list);
  return ops;
}

Valuation bench_valuation(const BenchOperator& b, int64_t tokens, const BenchShape& shape) {
  const Operator& op = b.record.op;
  const Vars& vars = b.record.spec.vars;
  const std::string where = fmt::format("[synth bench] {} at {} ({} -> {})", b.label, shape.name,
                                        shape.d_in, shape.d_out);
  DSEEK_CHECK(!b.record.spec.valuations.empty(), "{}: the operator's spec has no valuation", where);
  const int T = op.output.size() == 2 ? op.output[0].bare_var() : -1;
  const int X = op.input.size() == 2 ? op.input[1].size.bare_var() : -1;
  const int Y = op.output.size() == 2 ? op.output[1].bare_var() : -1;
  auto primary = [&](int v) { return v >= 0 && vars.kinds[size_t(v)] == VarKind::primary; };
  DSEEK_CHECK(primary(T) && primary(X) && primary(Y) && X != T && Y != T && op.input.size() == 2 &&
                  op.input[0].size.bare_var() == T,
              "{}: not a projection [T, X] -> [T, Y] over primary variables (input dims {}, "
              "output dims {})",
              where, op.input.size(), op.output.size());
  DSEEK_CHECK(X != Y || shape.d_in == shape.d_out,
              "{}: its input and output are both {}, so it only fits d_in = d_out", where,
              vars.names[size_t(X)]);
  Valuation v = b.record.spec.valuations[0];
  v[size_t(T)] = tokens;
  v[size_t(X)] = shape.d_in;
  v[size_t(Y)] = shape.d_out;
  if (b.rank_var >= 0) {
    v[size_t(b.rank_var)] = std::min(shape.d_in, shape.d_out) / b.rank_div;
    DSEEK_CHECK(v[size_t(b.rank_var)] >= 1, "{}: rank min(d_in, d_out)/{} is 0", where, b.rank_div);
  }
  const std::string bad = bad_size(op, vars, v);
  DSEEK_CHECK(bad.empty(), "{}: size {} is not a positive integer with {}", where, bad,
              coefficients_str(vars, v));
  return v;
}

std::vector<BenchRow> run_bench(const std::vector<BenchOperator>& ops,
                                const std::vector<BenchShape>& shapes, const BenchOptions& o,
                                const std::function<void(const BenchRow&)>& progress) {
  DSEEK_CHECK(!ops.empty() && o.tokens > 0 && o.runs > 0 && o.warmup >= 0,
              "[synth bench] {} operators, tokens {}, runs {}, warm-up {}: need operators and "
              "positive counts",
              ops.size(), o.tokens, o.runs, o.warmup);
  std::vector<BenchRow> rows;
  for (const BenchShape& shape : shapes) {
    const size_t first = rows.size();
    for (const BenchOperator& b : ops) {
      BenchRow row;
      row.shape = shape.name;
      row.op = b.label;
      row.d_in = shape.d_in;
      row.d_out = shape.d_out;
      try {
        const Valuation v = bench_valuation(b, o.tokens, shape);
        row.flops = flops(b.record.op, v);
        row.params = param_count(b.record.op, v);
        // Every tensor of a token-wise plan is constant or linear in T: size it from T = 1 and
        // 2 before building the real plan (whose gather indexes alone could be huge).
        Valuation v1 = v, v2 = v;
        const int T = b.record.op.output[0].bare_var();
        v1[size_t(T)] = 1;
        v2[size_t(T)] = 2;
        const int64_t n1 = largest(lower(b.record.op, v1)), n2 = largest(lower(b.record.op, v2));
        const double need =
            double(n1) + double(std::max<int64_t>(n2 - n1, 0)) * double(o.tokens - 1);
        if (need > double(o.max_elements)) {
          row.note = fmt::format("skipped: a lowered tensor of ~{} elements (limit {})",
                                 count_str(need), count_str(double(o.max_elements)));
        } else {
          const LoweredPlan plan = lower(b.record.op, v);
          row.plan = plan_summary(plan);
          const PlanInputs inputs = random_plan_inputs(b.record.op, v, plan, 1);
          LatencyOptions lo;
          lo.device = o.device;
          lo.dtype = o.dtype;
          lo.backward = o.backward;
          lo.warmup = o.warmup;
          lo.runs = o.runs;
          lo.max_ms = o.row_ms;
          lo.keep_output = o.check && o.dtype != DType::F32;
          const Latency lat = measure_latency(plan, inputs, lo);
          row.forward_ms = lat.forward_ms;
          row.train_ms = lat.train_ms;
          row.runs = lat.runs;
          if (lat.runs < o.runs) row.note = fmt::format("{} runs (time cap)", lat.runs);
          if (lo.keep_output) {
            LatencyOptions ref;
            ref.device = o.device;
            ref.warmup = 0;
            ref.runs = 1;
            ref.keep_output = true;
            const std::vector<float> want = measure_latency(plan, inputs, ref).output.to_vector();
            const std::vector<float> got = lat.output.to_vector();
            double scale = 0.0, worst = 0.0;
            for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
              scale = std::max(scale, double(std::abs(want[i])));
              const double d = std::abs(double(got[i]) - double(want[i]));
              worst = std::isnan(d) ? INFINITY : std::max(worst, d);
            }
            row.bf16_rel_diff =
                got.size() == want.size() ? worst / std::max(scale, 1e-30) : INFINITY;
          }
          row.ok = true;
        }
      } catch (const Error& e) {
        row.note = e.what();
      }
      rows.push_back(row);
      if (progress) progress(rows.back());
    }
    // Against the first operator (dense) at this shape.
    const BenchRow& dense = rows[first];
    for (size_t i = first; i < rows.size(); ++i) {
      BenchRow& r = rows[i];
      if (dense.flops > 0 && r.flops > 0) r.flops_ratio = double(r.flops) / double(dense.flops);
      if (!dense.ok || !r.ok) continue;
      r.speedup = dense.forward_ms / r.forward_ms;
      if (o.backward) r.train_speedup = dense.train_ms / r.train_ms;
    }
  }
  return rows;
}

std::string bench_markdown(const std::vector<BenchRow>& rows, const BenchOptions& o) {
  const bool bf16 = o.dtype == DType::BF16 && o.check;
  std::string out = fmt::format(
      "operators at {} tokens on {}, {}: median of up to {} runs after {} warm-up; speed-up = "
      "dense time / time at the same shape\n\n",
      o.tokens, device_name(o.device), dtype_name(o.dtype), o.runs, o.warmup);
  out += "| shape | d_in→d_out | operator | FLOPs | FLOPs/dense | params | fwd ms | fwd speed-up |";
  std::string rule = "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |";
  if (o.backward) {
    out += " fwd+bwd ms | fwd+bwd speed-up |";
    rule += " ---: | ---: |";
  }
  if (bf16) {
    out += " bf16 vs f32 |";
    rule += " ---: |";
  }
  out += " note |\n" + rule + " --- |\n";
  for (const BenchRow& r : rows) {
    auto cell = [&](bool have, const std::string& s) { return have ? s : std::string("—"); };
    out += fmt::format("| {} | {}→{} | {} | {} | {} | {} | {} | {} |", r.shape, r.d_in, r.d_out,
                       r.op, cell(r.flops > 0, count_str(double(r.flops))),
                       cell(r.flops_ratio > 0, fmt::format("{:.3f}", r.flops_ratio)),
                       cell(r.flops > 0, count_str(double(r.params))),
                       cell(r.ok, ms_str(r.forward_ms)),
                       cell(r.speedup > 0, fmt::format("{:.2f}", r.speedup)));
    if (o.backward)
      out += fmt::format(" {} | {} |", cell(r.ok, ms_str(r.train_ms)),
                         cell(r.train_speedup > 0, fmt::format("{:.2f}", r.train_speedup)));
    if (bf16)
      out +=
          fmt::format(" {} |", cell(r.bf16_rel_diff >= 0, fmt::format("{:.1e}", r.bf16_rel_diff)));
    std::string note = r.note;
    std::replace(note.begin(), note.end(), '|', '/');
    out += fmt::format(" {} |\n", note);
  }
  return out;
}

std::string bench_json(const std::vector<BenchRow>& rows, const BenchOptions& o) {
  nlohmann::ordered_json j;
  j["device"] = std::string(device_name(o.device));
  j["dtype"] = std::string(dtype_name(o.dtype));
  j["tokens"] = o.tokens;
  j["backward"] = o.backward;
  j["warmup"] = o.warmup;
  j["runs"] = o.runs;
  j["rows"] = nlohmann::ordered_json::array();
  for (const BenchRow& r : rows) {
    nlohmann::ordered_json row = {{"shape", r.shape},
                                  {"d_in", r.d_in},
                                  {"d_out", r.d_out},
                                  {"operator", r.op},
                                  {"ok", r.ok},
                                  {"note", r.note},
                                  {"flops", r.flops},
                                  {"params", r.params},
                                  {"flops_ratio", r.flops_ratio},
                                  {"forward_ms", r.forward_ms},
                                  {"speedup", r.speedup},
                                  {"runs", r.runs},
                                  {"plan", r.plan}};
    if (o.backward) {
      row["train_ms"] = r.train_ms;
      row["train_speedup"] = r.train_speedup;
    }
    if (r.bf16_rel_diff >= 0)
      row["bf16_rel_diff"] = std::isfinite(r.bf16_rel_diff) ? r.bf16_rel_diff : -1.0;
    j["rows"].push_back(row);
  }
  return j.dump(2);
}

}  // namespace dseek::synth
