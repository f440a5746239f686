// Operator files (synth/serialize.h): spec + action list round-trip through JSON (same text, same
// canonical key, same function), sizes parse back from their printed form, and malformed files are
// refused with the offending field named.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "synth/canonical.h"
#include "synth/interpreter.h"
#include "synth/serialize.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

Spec linear_spec(const LinearProblem& p) {
  Spec spec;
  spec.vars = p.vars;
  spec.valuations = {{3, 6, 6, 2, 3}, {5, 12, 6, 2, 3}};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  spec.reduce_sizes = {p.sdin, p.sr, p.sdin / p.sg};
  spec.merge_blocks = {p.sr, p.sg, p.sdout / p.sg};
  spec.strides = {Size::constant(2)};
  spec.max_primitives = 8;
  spec.max_params = 1000;
  return spec;
}

void expect_same_spec(const Spec& a, const Spec& b) {
  EXPECT_EQ(a.vars.names, b.vars.names);
  EXPECT_EQ(a.vars.kinds, b.vars.kinds);
  EXPECT_EQ(a.valuations, b.valuations);
  EXPECT_EQ(a.input, b.input);
  EXPECT_EQ(a.output, b.output);
  EXPECT_EQ(a.reduce_sizes, b.reduce_sizes);
  EXPECT_EQ(a.merge_blocks, b.merge_blocks);
  EXPECT_EQ(a.strides, b.strides);
  EXPECT_EQ(a.allow_shift, b.allow_shift);
  EXPECT_EQ(a.allow_unfold, b.allow_unfold);
  EXPECT_EQ(a.max_primitives, b.max_primitives);
  EXPECT_EQ(a.max_weights, b.max_weights);
  EXPECT_EQ(a.max_reductions, b.max_reductions);
  EXPECT_EQ(a.max_frontier, b.max_frontier);
  EXPECT_EQ(a.max_params, b.max_params);
  EXPECT_EQ(a.max_flops, b.max_flops);
}

// The error message of parsing `text`, or "" if it parsed.
std::string parse_error(const std::string& text) {
  try {
    operator_from_json(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SynthSerialize, SizesParseBackFromTheirPrintedForm) {
  LinearProblem p;
  const std::vector<Size> sizes{p.sdin,
                                p.sdin / p.sg,
                                p.sT * p.sdin / (p.sg * p.sr),
                                Size::constant(2) * p.sr * p.sr,
                                Size::constant(3) / Size::constant(2) * p.sdout,
                                Size::constant(1),
                                p.sdout / (p.sg * p.sg)};
  for (const Size& s : sizes) {
    const std::string text = s.str(p.vars);
    EXPECT_EQ(parse_size(text, p.vars), s) << text;
  }
  EXPECT_EQ(parse_size(" d_in / g ", p.vars), p.sdin / p.sg);
  for (const char* bad : {"", "d_in/", "q", "d_in**g", "d_in^x", "d_in/(g", "(d_in)/g"})
    EXPECT_THROW(parse_size(bad, p.vars), Error) << bad;
}

TEST(SynthSerialize, OperatorsRoundTrip) {
  LinearProblem p;
  const Spec spec = linear_spec(p);
  std::vector<Operator> ops{dense_linear(p), low_rank(p), grouped_linear(p)};
  // And random operators from the legal-action walks (every primitive kind).
  Rng rng(17);
  for (int attempt = 0; ops.size() < 60 && attempt < 5000; ++attempt) {
    Operator op = make_operator(spec.output);
    while (!op.complete) {
      const auto actions = legal_actions(op, spec);
      if (actions.empty()) break;
      apply(op, actions[size_t(rng.next_u64() % actions.size())]);
    }
    if (op.complete) ops.push_back(op);
  }
  ASSERT_EQ(ops.size(), 60u);
  for (const Operator& op : ops) {
    const std::string text = operator_to_json(spec, op);
    const OperatorRecord rec = operator_from_json(text);
    expect_same_spec(rec.spec, spec);
    EXPECT_EQ(history_str(rec.op, rec.spec.vars), history_str(op, spec.vars));
    EXPECT_EQ(canonical_key(rec.op, rec.spec.vars), canonical_key(op, spec.vars));
    EXPECT_EQ(operator_to_json(rec.spec, rec.op), text);
    Rng data(3);
    const Valuation& v = spec.valuations[1];
    auto count = [&](const std::vector<Dim>& dims) {
      int64_t n = 1;
      for (int64_t e : concrete_shape(dims, v)) n *= e;
      return n;
    };
    const auto x = random_values(count(op.input), data);
    std::vector<std::vector<double>> w;
    for (const auto& wd : op.weights) w.push_back(random_values(count(wd), data));
    EXPECT_EQ(interpret(rec.op, v, x, w), interpret(op, v, x, w));
  }
  std::printf("%s\n", operator_to_json(spec, grouped_linear(p)).c_str());
}

TEST(SynthSerialize, ParseErrorsNameTheField) {
  LinearProblem p;
  const std::string good = operator_to_json(linear_spec(p), grouped_linear(p));
  ASSERT_EQ(parse_error(good), "");
  auto edited = [&](auto&& edit) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(good);
    edit(j);
    return parse_error(j.dump());
  };
  const std::vector<std::pair<std::string, std::string>> cases{
      {edited([](auto& j) { j.erase("actions"); }), "actions: missing"},
      {edited([](auto& j) { j["actions"][0]["size"] = "d_out/q"; }),
       "actions[0].size: unknown variable 'q'"},
      {edited([](auto& j) { j["actions"][2]["kind"] = "twist"; }),
       "actions[2].kind: unknown primitive"},
      {edited([](auto& j) { j["actions"][1].erase("b"); }), "actions[1].b: missing"},
      {edited([](auto& j) { j["actions"][1]["a"] = 7; }), "actions[1]: [synth] share"},
      {edited([](auto& j) { j["actions"].erase(j["actions"].size() - 1); }),
       "actions: the operator is not complete"},
      {edited([](auto& j) {
         j["input"] = {"d_in", "T"};
       }),
       "the spec's input"},
      {edited([](auto& j) {
         j["valuations"][1] = {1, 2};
       }),
       "valuations[1]: 2 values for 5"},
      {edited([](auto& j) { j["vars"][3]["kind"] = "free"; }), "vars[3].kind"},
      {edited([](auto& j) { j["max_params"] = "many"; }), "max_params: not an integer"},
      {edited([](auto& j) { j["allow_shift"] = 1; }), "allow_shift: not a boolean"},
      {parse_error("{\"vars\": ["), "(document)"},
  };
  for (const auto& [message, want] : cases)
    EXPECT_NE(message.find(want), std::string::npos) << "want '" << want << "' in: " << message;
}
