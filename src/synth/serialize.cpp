// Operator files: JSON writing and parsing with field-named errors (see serialize.h).
#include "synth/serialize.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dseek::synth {

using json = nlohmann::ordered_json;

namespace {

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  fail("[synth] operator json: {}: {}", where, what);
}

const json& field(const json& j, const std::string& key, const std::string& where) {
  if (!j.is_object()) bad(where, "not an object");
  const auto it = j.find(key);
  if (it == j.end()) bad(where.empty() ? key : where + "." + key, "missing");
  return *it;
}

std::string path(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

int64_t get_int(const json& j, const std::string& where) {
  if (!j.is_number_integer()) bad(where, "not an integer: " + j.dump());
  return j.get<int64_t>();
}

int get_small_int(const json& j, const std::string& where) {
  const int64_t v = get_int(j, where);
  if (v < -1 || v > 1000) bad(where, "out of range: " + std::to_string(v));
  return int(v);
}

bool get_bool(const json& j, const std::string& where) {
  if (!j.is_boolean()) bad(where, "not a boolean: " + j.dump());
  return j.get<bool>();
}

std::string get_string(const json& j, const std::string& where) {
  if (!j.is_string()) bad(where, "not a string: " + j.dump());
  return j.get<std::string>();
}

const json& get_array(const json& j, const std::string& where) {
  if (!j.is_array()) bad(where, "not an array: " + j.dump());
  return j;
}

// One product of factors ("2*T*k^2").
Size parse_product(const std::string& text, const std::string& whole, const Vars& vars,
                   const std::string& where) {
  Size s = Size::constant(1);
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find('*', start), text.size());
    const std::string factor = text.substr(start, end - start);
    if (factor.empty()) bad(where, "empty factor in \"" + whole + "\"");
    if (std::isdigit(static_cast<unsigned char>(factor[0]))) {
      for (char c : factor)
        if (!std::isdigit(static_cast<unsigned char>(c)))
          bad(where, "bad number '" + factor + "' in \"" + whole + "\"");
      if (factor.size() > 15) bad(where, "number too large in \"" + whole + "\"");
      s = s * Size::constant(std::stoll(factor));
    } else {
      const size_t caret = factor.find('^');
      const std::string name = factor.substr(0, caret);
      int e = 1;
      if (caret != std::string::npos) {
        const std::string power = factor.substr(caret + 1);
        if (power.empty() || power.size() > 2 ||
            !std::all_of(power.begin(), power.end(),
                         [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }))
          bad(where, "bad exponent '" + power + "' in \"" + whole + "\"");
        e = std::stoi(power);
      }
      int var = -1;
      for (int v = 0; v < vars.count(); ++v)
        if (vars.names[size_t(v)] == name) var = v;
      if (var < 0) bad(where, "unknown variable '" + name + "' in \"" + whole + "\"");
      for (int k = 0; k < e; ++k) s = s * Size::var(var);
    }
    start = end + 1;
  }
  return s;
}

json size_json(const Size& s, const Vars& vars) {
  return s.str(vars);
}

json sizes_json(const std::vector<Size>& sizes, const Vars& vars) {
  json a = json::array();
  for (const auto& s : sizes) a.push_back(size_json(s, vars));
  return a;
}

std::vector<Size> parse_sizes(const json& j, const Vars& vars, const std::string& where) {
  std::vector<Size> out;
  const json& a = get_array(j, where);
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string w = where + "[" + std::to_string(i) + "]";
    out.push_back(parse_size(get_string(a[i], w), vars, w));
  }
  return out;
}

json action_json(const Action& a, const Vars& vars) {
  json j;
  j["kind"] = primitive_name(a.kind);
  switch (a.kind) {
    case Primitive::split:
    case Primitive::unfold:
    case Primitive::share:
      j["a"] = a.a;
      j["b"] = a.b;
      break;
    case Primitive::merge:
    case Primitive::stride:
      j["a"] = a.a;
      j["size"] = size_json(a.size, vars);
      break;
    case Primitive::shift:
    case Primitive::expand: j["a"] = a.a; break;
    case Primitive::reduce: j["size"] = size_json(a.size, vars); break;
    case Primitive::finalize: j["perm"] = a.perm; break;
  }
  return j;
}

Action parse_action(const json& j, const Vars& vars, const std::string& where) {
  const std::string kind = get_string(field(j, "kind", where), path(where, "kind"));
  Action a;
  bool found = false;
  for (Primitive p :
       {Primitive::split, Primitive::merge, Primitive::shift, Primitive::stride, Primitive::unfold,
        Primitive::expand, Primitive::reduce, Primitive::share, Primitive::finalize})
    if (kind == primitive_name(p)) {
      a.kind = p;
      found = true;
    }
  if (!found) bad(path(where, "kind"), "unknown primitive '" + kind + "'");
  auto pos = [&](const char* key) { return get_small_int(field(j, key, where), path(where, key)); };
  auto size = [&] {
    return parse_size(get_string(field(j, "size", where), path(where, "size")), vars,
                      path(where, "size"));
  };
  switch (a.kind) {
    case Primitive::split:
    case Primitive::unfold:
    case Primitive::share:
      a.a = pos("a");
      a.b = pos("b");
      break;
    case Primitive::merge:
    case Primitive::stride:
      a.a = pos("a");
      a.size = size();
      break;
    case Primitive::shift:
    case Primitive::expand: a.a = pos("a"); break;
    case Primitive::reduce: a.size = size(); break;
    case Primitive::finalize: {
      const json& perm = get_array(field(j, "perm", where), path(where, "perm"));
      for (size_t i = 0; i < perm.size(); ++i)
        a.perm.push_back(
            get_small_int(perm[i], path(where, "perm") + "[" + std::to_string(i) + "]"));
      break;
    }
  }
  return a;
}

}  // namespace

Size parse_size(const std::string& text_in, const Vars& vars, const std::string& where) {
  std::string text;
  for (char c : text_in)
    if (!std::isspace(static_cast<unsigned char>(c))) text.push_back(c);
  if (text.empty()) bad(where, "empty size");
  const size_t slash = text.find('/');
  if (slash == std::string::npos) return parse_product(text, text_in, vars, where);
  std::string down = text.substr(slash + 1);
  if (down.size() >= 2 && down.front() == '(' && down.back() == ')')
    down = down.substr(1, down.size() - 2);
  if (down.find_first_of("/()") != std::string::npos ||
      text.substr(0, slash).find('(') != std::string::npos)
    bad(where, "bad size \"" + text_in + "\" (want a/b or a/(b*c))");
  return parse_product(text.substr(0, slash), text_in, vars, where) /
         parse_product(down, text_in, vars, where);
}

std::string operator_to_json(const Spec& spec, const Operator& op) {
  const Vars& vars = spec.vars;
  json j;
  json vs = json::array();
  for (int v = 0; v < vars.count(); ++v)
    vs.push_back({{"name", vars.names[size_t(v)]},
                  {"kind", vars.kinds[size_t(v)] == VarKind::primary ? "primary" : "coefficient"}});
  j["vars"] = vs;
  j["valuations"] = spec.valuations;
  j["input"] = sizes_json(spec.input, vars);
  j["output"] = sizes_json(spec.output, vars);
  j["reduce_sizes"] = sizes_json(spec.reduce_sizes, vars);
  j["merge_blocks"] = sizes_json(spec.merge_blocks, vars);
  j["strides"] = sizes_json(spec.strides, vars);
  j["allow_shift"] = spec.allow_shift;
  j["allow_unfold"] = spec.allow_unfold;
  j["max_primitives"] = spec.max_primitives;
  j["max_weights"] = spec.max_weights;
  j["max_reductions"] = spec.max_reductions;
  j["max_frontier"] = spec.max_frontier;
  j["max_params"] = spec.max_params;
  j["max_flops"] = spec.max_flops;
  json actions = json::array();
  for (const auto& a : op.history) actions.push_back(action_json(a, vars));
  j["actions"] = actions;
  return j.dump(2);
}

OperatorRecord operator_from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    bad("(document)", e.what());
  }
  OperatorRecord rec;
  Spec& spec = rec.spec;
  const json& vars = get_array(field(j, "vars", ""), "vars");
  for (size_t v = 0; v < vars.size(); ++v) {
    const std::string w = "vars[" + std::to_string(v) + "]";
    const std::string name = get_string(field(vars[v], "name", w), w + ".name");
    const std::string kind = get_string(field(vars[v], "kind", w), w + ".kind");
    if (kind != "primary" && kind != "coefficient")
      bad(w + ".kind", "want \"primary\" or \"coefficient\", got \"" + kind + "\"");
    if (name.empty() || !std::isalpha(static_cast<unsigned char>(name[0])))
      bad(w + ".name", "not a name: \"" + name + "\"");
    for (const auto& other : spec.vars.names)
      if (other == name) bad(w + ".name", "repeated: \"" + name + "\"");
    if (spec.vars.count() >= kMaxVars) bad("vars", "more than " + std::to_string(kMaxVars));
    spec.vars.add(name, kind == "primary" ? VarKind::primary : VarKind::coefficient);
  }
  const json& vals = get_array(field(j, "valuations", ""), "valuations");
  for (size_t i = 0; i < vals.size(); ++i) {
    const std::string w = "valuations[" + std::to_string(i) + "]";
    const json& row = get_array(vals[i], w);
    if (int(row.size()) != spec.vars.count())
      bad(w, std::to_string(row.size()) + " values for " + std::to_string(spec.vars.count()) +
                 " vars");
    Valuation v;
    for (size_t k = 0; k < row.size(); ++k) {
      v.push_back(get_int(row[k], w + "[" + std::to_string(k) + "]"));
      if (v.back() <= 0) bad(w + "[" + std::to_string(k) + "]", "not positive");
    }
    spec.valuations.push_back(v);
  }
  spec.input = parse_sizes(field(j, "input", ""), spec.vars, "input");
  spec.output = parse_sizes(field(j, "output", ""), spec.vars, "output");
  spec.reduce_sizes = parse_sizes(field(j, "reduce_sizes", ""), spec.vars, "reduce_sizes");
  spec.merge_blocks = parse_sizes(field(j, "merge_blocks", ""), spec.vars, "merge_blocks");
  spec.strides = parse_sizes(field(j, "strides", ""), spec.vars, "strides");
  spec.allow_shift = get_bool(field(j, "allow_shift", ""), "allow_shift");
  spec.allow_unfold = get_bool(field(j, "allow_unfold", ""), "allow_unfold");
  auto budget = [&](const char* key) { return get_int(field(j, key, ""), key); };
  spec.max_primitives = int(budget("max_primitives"));
  spec.max_weights = int(budget("max_weights"));
  spec.max_reductions = int(budget("max_reductions"));
  spec.max_frontier = int(budget("max_frontier"));
  spec.max_params = budget("max_params");
  spec.max_flops = budget("max_flops");

  rec.op = make_operator(spec.output);
  const json& actions = get_array(field(j, "actions", ""), "actions");
  for (size_t i = 0; i < actions.size(); ++i) {
    const std::string w = "actions[" + std::to_string(i) + "]";
    const Action a = parse_action(actions[i], spec.vars, w);
    try {
      apply(rec.op, a);
    } catch (const Error& e) {
      bad(w, e.what());
    }
  }
  if (!rec.op.complete) bad("actions", "the operator is not complete (no finalize)");
  std::vector<Size> input;
  for (const auto& d : rec.op.input) input.push_back(d.size);
  if (input != spec.input) bad("actions", "the operator's input is not the spec's input");
  return rec;
}

}  // namespace dseek::synth
