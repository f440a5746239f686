// Shape-guided enumeration (synth/enumerate.h): the shape distance, the legal actions of a state,
// and the exhaustive enumeration of [T, d_in] -> [T, d_out] operators, which must contain dense
// linear and low rank (by canonical key) while canonicalisation shrinks the raw counts. The
// count table printed here is the one in docs/SYNTH.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "synth/canonical.h"
#include "synth/cost.h"
#include "synth/enumerate.h"
#include "synth/interpreter.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

// Reduce over d_in or r, Split, Expand, Share into <= 2 weights; `views` adds Merge by g and Shift.
Spec linear_spec(const LinearProblem& p, int depth, bool views = false) {
  Spec spec;
  spec.vars = p.vars;
  spec.valuations = {{8, 12, 6, 2, 3}, {16, 24, 12, 4, 3}};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  spec.reduce_sizes = {p.sdin, p.sr};
  if (views) spec.merge_blocks = {p.sg};
  spec.allow_shift = views;
  spec.allow_unfold = false;
  spec.max_primitives = depth;
  spec.max_weights = 2;
  spec.max_reductions = 2;
  spec.max_frontier = 3;
  return spec;
}

bool contains(const Enumeration& e, const std::string& key) {
  return std::find(e.keys.begin(), e.keys.end(), key) != e.keys.end();
}

}  // namespace

TEST(SynthEnumerate, ShapeDistanceCountsUnmatchedDims) {
  LinearProblem p;
  const Spec spec = linear_spec(p, 8);
  Operator op = make_operator(spec.output);  // [T, d_out] vs [T, d_in]: U = 2
  EXPECT_EQ(shape_distance(op, spec), 1);
  apply(op, expand_action(1));  // [T]: U = 1
  EXPECT_EQ(shape_distance(op, spec), 1);
  apply(op, reduce_action(p.sdin));  // [T, d_in]
  EXPECT_EQ(shape_distance(op, spec), 0);
  apply(op, merge_action(1, p.sg));  // [T, d_in/g, g]: U = 3
  EXPECT_EQ(shape_distance(op, spec), 1);
  apply(op, merge_action(0, p.sg));  // [T/g, g, d_in/g, g]: U = 6
  EXPECT_EQ(shape_distance(op, spec), 2);
}

TEST(SynthEnumerate, LegalActionsAreShapeGuided) {
  LinearProblem p;
  Spec spec = linear_spec(p, 2, true);
  const Operator root = make_operator(spec.output);
  // Two primitives left: every legal action must leave a state one primitive from [T, d_in].
  const auto actions = legal_actions(root, spec);
  ASSERT_FALSE(actions.empty());
  for (const auto& a : actions) {
    Operator child = root;
    apply(child, a);
    EXPECT_LE(shape_distance(child, spec), 1) << action_str(a, spec.vars);
  }
  // With one primitive left nothing reaches [T, d_in] (it needs Expand and Reduce).
  spec.max_primitives = 1;
  for (const auto& a : legal_actions(root, spec)) {
    Operator child = root;
    apply(child, a);
    EXPECT_TRUE(legal_actions(child, spec).empty()) << action_str(a, spec.vars);
  }
  // Finalize appears exactly when the frontier is the input.
  Operator ready = build(spec.output, {expand_action(1), reduce_action(p.sdin)});
  spec.max_primitives = 8;
  const auto fin = legal_actions(ready, spec);
  ASSERT_FALSE(fin.empty());
  EXPECT_EQ(fin[0].kind, Primitive::finalize);
  EXPECT_EQ(fin[0].perm, (std::vector<int>{0, 1}));
  // A parameter budget below d_out·d_in rules out sharing both dims into one weight.
  Operator half = build(spec.output, {share_action(1, 0), expand_action(1), reduce_action(p.sdin)});
  auto shares_into_w0 = [&](const Spec& s) {
    const auto acts = legal_actions(half, s);
    return std::any_of(acts.begin(), acts.end(), [](const Action& a) {
      return a.kind == Primitive::share && a.a == 1 && a.b == 0;
    });
  };
  EXPECT_TRUE(shares_into_w0(spec));
  spec.max_params = 12 * 6 - 1;  // d_in·d_out is 72 under the first valuation
  EXPECT_FALSE(shares_into_w0(spec));
}

TEST(SynthEnumerate, LinearSearchFindsDenseAndLowRank) {
  LinearProblem p;
  const Spec spec = linear_spec(p, 8);
  const auto start = std::chrono::steady_clock::now();
  const Enumeration e = enumerate(spec);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[T,d_in] -> [T,d_out], reduce {d_in, r}, <= 2 weights, depth <= %d (%.1f s):\n%s",
              spec.max_primitives, seconds, depth_table(e).c_str());
  EXPECT_TRUE(contains(e, canonical_key(dense_linear(p), p.vars)));
  EXPECT_TRUE(contains(e, canonical_key(low_rank(p), p.vars)));
  // Every operator found has the target shapes and evaluates.
  for (const auto& op : e.operators) {
    ASSERT_TRUE(op.complete);
    std::vector<Size> in;
    for (const auto& d : op.input) in.push_back(d.size);
    ASSERT_EQ(in, spec.input) << history_str(op, spec.vars);
    ASSERT_EQ(op.output, spec.output);
  }
  // Canonicalisation shrinks the counts: never more canonical than raw, strictly fewer deeper.
  uint64_t raw = 0, canonical = 0;
  for (const auto& d : e.depths) {
    EXPECT_LE(d.distinct_states, d.raw_states);
    EXPECT_LE(d.distinct_complete, d.raw_complete);
    raw += d.raw_complete;
    canonical += d.distinct_complete;
  }
  EXPECT_EQ(canonical, e.operators.size());
  EXPECT_LT(canonical * 2, raw);
  EXPECT_LT(e.depths.back().distinct_states, e.depths.back().raw_states);
}

TEST(SynthEnumerate, CountTable) {
  // The table of docs/SYNTH.md: all view primitives of the linear spec (Merge by g, Shift), so the
  // view rules have pairs to remove. DSEEK_SYNTH_DEPTH deepens it (7 takes a few minutes).
  LinearProblem p;
  const char* env = std::getenv("DSEEK_SYNTH_DEPTH");
  const Spec spec = linear_spec(p, env ? std::atoi(env) : 6, true);
  const auto start = std::chrono::steady_clock::now();
  const Enumeration e = enumerate(spec);
  const Enumeration by_order = enumerate(spec, {.view_rules = false});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "[T,d_in] -> [T,d_out], reduce {d_in, r}, merge {g}, shift, <= 2 weights, "
      "depth <= %d (%.1f s):\n%s",
      spec.max_primitives, seconds, depth_table(by_order, e).c_str());
  EXPECT_TRUE(contains(e, canonical_key(dense_linear(p), p.vars)));
  ASSERT_EQ(e.depths.size(), by_order.depths.size());
  uint64_t ordered = 0, canonical = 0;
  for (size_t i = 0; i < e.depths.size(); ++i) {
    EXPECT_LE(e.depths[i].distinct_states, by_order.depths[i].distinct_states);
    EXPECT_LE(by_order.depths[i].distinct_states, by_order.depths[i].raw_states);
    EXPECT_LE(by_order.depths[i].distinct_complete, by_order.depths[i].raw_complete);
    ordered += by_order.depths[i].distinct_states;
    canonical += e.depths[i].distinct_states;
  }
  EXPECT_LT(canonical, ordered) << "the view rules must merge some states (merge/split pairs)";
  EXPECT_LT(e.operators.size(), by_order.operators.size());
  // Every operator found computes what its simplified form computes (spot check, 50 of them).
  Rng rng(7);
  const Valuation& v = spec.valuations[0];
  for (size_t i = 0; i < e.operators.size(); i += std::max<size_t>(1, e.operators.size() / 50)) {
    const Operator& op = e.operators[i];
    auto count = [&](const std::vector<Dim>& dims) {
      int64_t n = 1;
      for (int64_t x : concrete_shape(dims, v)) n *= x;
      return n;
    };
    const auto x = random_values(count(op.input), rng);
    std::vector<std::vector<double>> w;
    for (const auto& wd : op.weights) w.push_back(random_values(count(wd), rng));
    const auto a = interpret(op, v, x, w), b = interpret(simplify(op), v, x, w);
    for (size_t j = 0; j < a.size(); ++j) ASSERT_NEAR(a[j], b[j], 1e-9) << history_str(op, p.vars);
  }
}

namespace {

// Replays op's history from the root, requiring each action to be among the legal ones.
void expect_reachable(const Operator& op, const Spec& spec, const char* name) {
  Operator state = make_operator(spec.output);
  for (const auto& a : op.history) {
    const auto legal = legal_actions(state, spec);
    const std::string want = action_str(a, spec.vars);
    const bool found = std::any_of(legal.begin(), legal.end(), [&](const Action& b) {
      return action_str(b, spec.vars) == want;
    });
    ASSERT_TRUE(found) << name << ": " << want << " not legal after "
                       << history_str(state, spec.vars);
    apply(state, a);
  }
  EXPECT_TRUE(is_complete(state)) << name;
  EXPECT_EQ(canonical_key(state, spec.vars), canonical_key(op, spec.vars)) << name;
}

}  // namespace

TEST(SynthEnumerate, HandBuiltLayersAreReachable) {
  // The shape-guided rules never cut the classic layers off: every step of their construction is
  // a legal action of the spec with their own sizes and depth.
  LinearProblem p;
  Spec lin = linear_spec(p, 8);
  expect_reachable(dense_linear(p), lin, "dense");
  expect_reachable(low_rank(p), lin, "low rank");
  lin.reduce_sizes = {p.sdin / p.sg};
  lin.merge_blocks = {p.sdout / p.sg};
  lin.max_weights = 1;
  expect_reachable(grouped_linear(p), lin, "grouped");

  ConvProblem c;
  Spec conv;
  conv.vars = c.vars;
  conv.valuations = {{2, 4, 6, 8, 8, 3}};
  conv.input = {c.sN, c.sC, c.sH, c.sW};
  conv.output = {c.sN, c.sCout, c.sH, c.sW};
  conv.reduce_sizes = {c.sC, c.sk};
  conv.max_primitives = 10;
  conv.max_weights = 1;
  conv.max_reductions = 3;
  conv.max_frontier = 5;
  expect_reachable(conv2d(c), conv, "conv");
  conv.output = {c.sN, c.sC, c.sH, c.sW};
  conv.max_primitives = 7;
  expect_reachable(depthwise_conv2d(c), conv, "depthwise");
}
