// Canonicalisation (synth/canonical.h): operators built differently but equivalent get one key
// (inverse view pairs, stride fusion, commuting reductions, sibling and weight order), different
// operators keep different keys, and no rule changes what an operator computes — checked with the
// interpreter on random data, for hand-built cases and for many random operators.
#include <gtest/gtest.h>

#include <cmath>

#include "synth/canonical.h"
#include "synth/enumerate.h"
#include "synth/interpreter.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

// Random input and weights for a complete operator.
struct Data {
  std::vector<double> input;
  std::vector<std::vector<double>> weights;
};

Data draw_data(const Operator& op, const Valuation& v, Rng& rng) {
  auto count = [&](const std::vector<Dim>& dims) {
    int64_t n = 1;
    for (int64_t e : concrete_shape(dims, v)) n *= e;
    return n;
  };
  Data d;
  d.input = random_values(count(op.input), rng);
  for (const auto& w : op.weights) d.weights.push_back(random_values(count(w), rng));
  return d;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// Both operators compute the same function on one random draw (same data layout).
void expect_same_function(const Operator& a, const Operator& b, const Valuation& v, uint64_t seed) {
  Rng rng(seed);
  const Data d = draw_data(a, v, rng);
  EXPECT_LT(max_diff(interpret(a, v, d.input, d.weights), interpret(b, v, d.input, d.weights)),
            1e-9);
}

const Valuation kLinear{4, 6, 5, 2, 3};  // T, d_in, d_out, r, g

}  // namespace

TEST(SynthCanonical, InverseViewPairsAndStrideFusionVanish) {
  LinearProblem p;
  const Operator dense = dense_linear(p);
  const std::string key = canonical_key(dense, p.vars);
  // V2: merge the reduced dim into (d_in/r, r) and split it back.
  const Operator merge_split =
      build({p.sT, p.sdout},
            {share_action(1, 0), expand_action(1), reduce_action(p.sdin), merge_action(1, p.sr),
             split_action(1, 2), share_action(1, 0), finalize_action({0, 1})});
  // V1: split (t, i) into one dim of T·d_in, then merge it back.
  const Operator split_merge =
      build({p.sT, p.sdout},
            {share_action(1, 0), expand_action(1), reduce_action(p.sdin), share_action(1, 0),
             split_action(0, 1), merge_action(0, p.sdin), finalize_action({0, 1})});
  for (const Operator* op : {&merge_split, &split_merge}) {
    EXPECT_EQ(canonical_key(*op, p.vars), key) << history_str(*op, p.vars);
    EXPECT_NE(canonical_key(*op, p.vars, {.view_rules = false}), key);  // the rule did it
    expect_same_function(*op, dense, kLinear, 11);
    expect_same_function(*op, simplify(*op), kLinear, 12);
  }
  // V3: stride 2 then stride 3 is stride 6.
  const Operator twice =
      build({p.sT, p.sdin}, {stride_action(1, Size::constant(2)),
                             stride_action(1, Size::constant(3)), finalize_action({0, 1})});
  const Operator once =
      build({p.sT, p.sdin}, {stride_action(1, Size::constant(6)), finalize_action({0, 1})});
  EXPECT_EQ(canonical_key(twice, p.vars), canonical_key(once, p.vars));
  expect_same_function(twice, once, kLinear, 13);
}

TEST(SynthCanonical, ReductionsCommute) {
  LinearProblem p;
  const Operator a = low_rank(p);  // reduces r, then d_in
  // Reduce d_in first, then r; weights laid out as in low_rank (w0 [d_out, r], w1 [r, d_in]).
  const Operator b =
      build({p.sT, p.sdout}, {reduce_action(p.sdin), reduce_action(p.sr), share_action(1, 0),
                              share_action(3, 0), share_action(3, 1), share_action(2, 1),
                              expand_action(3), expand_action(1), finalize_action({0, 1})});
  EXPECT_EQ(b.reduce[0], p.sdin);
  EXPECT_EQ(canonical_key(a, p.vars), canonical_key(b, p.vars));
  expect_same_function(a, b, kLinear, 21);
}

TEST(SynthCanonical, SiblingAndWeightOrderDoNotMatter) {
  LinearProblem p;
  const Operator dense = dense_linear(p);
  // Weight laid out [d_in, d_out] instead of [d_out, d_in], other primitive order.
  const Operator transposed =
      build({p.sT, p.sdout}, {reduce_action(p.sdin), share_action(2, 0), share_action(1, 0),
                              expand_action(1), finalize_action({0, 1})});
  EXPECT_EQ(canonical_key(transposed, p.vars), canonical_key(dense, p.vars));
  {  // same function once the weight is transposed
    Rng rng(31);
    const Data d = draw_data(dense, kLinear, rng);
    const int64_t din = 6, dout = 5;
    std::vector<double> wt(d.weights[0].size());
    for (int64_t o = 0; o < dout; ++o)
      for (int64_t i = 0; i < din; ++i)
        wt[size_t(i * dout + o)] = d.weights[0][size_t(o * din + i)];
    EXPECT_LT(max_diff(interpret(dense, kLinear, d.input, d.weights),
                       interpret(transposed, kLinear, d.input, {wt})),
              1e-9);
  }
  // Low rank with its two weights created in the other order.
  const Operator swapped =
      build({p.sT, p.sdout}, {reduce_action(p.sr), share_action(2, 0), share_action(1, 1),
                              share_action(2, 1), expand_action(1), expand_action(1),
                              reduce_action(p.sdin), share_action(1, 0), finalize_action({0, 1})});
  EXPECT_EQ(canonical_key(swapped, p.vars), canonical_key(low_rank(p), p.vars));
  EXPECT_NE(canonical_hash(swapped, p.vars), 0u);
  EXPECT_EQ(canonical_hash(swapped, p.vars), canonical_hash(low_rank(p), p.vars));
}

TEST(SynthCanonical, DifferentOperatorsKeepDifferentKeys) {
  LinearProblem p;
  const Operator shifted =
      build({p.sT, p.sdout}, {share_action(1, 0), expand_action(1), reduce_action(p.sdin),
                              share_action(1, 0), shift_action(0), finalize_action({0, 1})});
  const Operator unshared =  // y[t,o] = Σ_i x[t,i] W[i]: the weight does not see o
      build({p.sT, p.sdout},
            {expand_action(1), reduce_action(p.sdin), share_action(1, 0), finalize_action({0, 1})});
  std::vector<std::string> keys{canonical_key(dense_linear(p), p.vars),
                                canonical_key(low_rank(p), p.vars),
                                canonical_key(grouped_linear(p), p.vars),
                                canonical_key(shifted, p.vars), canonical_key(unshared, p.vars)};
  ConvProblem c;
  keys.push_back(canonical_key(conv2d(c), c.vars));
  keys.push_back(canonical_key(depthwise_conv2d(c), c.vars));
  for (size_t i = 0; i < keys.size(); ++i)
    for (size_t j = i + 1; j < keys.size(); ++j) EXPECT_NE(keys[i], keys[j]) << i << " vs " << j;
  EXPECT_EQ(keys[0], "out[T,d_out] red[d_in] in[o0,r0] w[(o1,r0)]");
}

TEST(SynthCanonical, RulesPreserveSemanticsOnRandomOperators) {
  // Random walks through the legal actions of a spec with every view primitive; each complete
  // operator is compared with its simplified form on random data.
  LinearProblem p;
  Spec spec;
  spec.vars = p.vars;
  spec.valuations = {{4, 6, 6, 2, 3}};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  spec.reduce_sizes = {p.sdin, p.sr, p.sg};
  spec.merge_blocks = {p.sr, p.sg, p.sdin};
  spec.strides = {Size::constant(2)};
  spec.max_primitives = 8;
  spec.max_frontier = 4;
  Rng rng(41);
  int checked = 0, simplified = 0, attempts = 0;
  while (checked < 300 && attempts < 20000) {
    ++attempts;
    Operator op = make_operator(spec.output);
    while (!op.complete) {
      const auto actions = legal_actions(op, spec);
      if (actions.empty()) break;
      // Finalize as soon as it is legal half of the time, so short operators appear too.
      const bool fin = actions[0].kind == Primitive::finalize && rng.uniform() < 0.5;
      apply(op, actions[fin ? 0 : size_t(rng.next_u64() % actions.size())]);
    }
    if (!op.complete) continue;
    const Operator s = simplify(op);
    if (canonical_key(op, spec.vars, {.view_rules = false}) !=
        canonical_key(s, spec.vars, {.view_rules = false}))
      ++simplified;
    EXPECT_EQ(canonical_key(s, spec.vars), canonical_key(op, spec.vars));
    Rng data_rng(static_cast<uint64_t>(checked));
    const Data d = draw_data(op, spec.valuations[0], data_rng);
    EXPECT_LT(max_diff(interpret(op, spec.valuations[0], d.input, d.weights),
                       interpret(s, spec.valuations[0], d.input, d.weights)),
              1e-9)
        << history_str(op, spec.vars);
    ++checked;
  }
  EXPECT_EQ(checked, 300);
  EXPECT_GT(simplified, 5) << "the walks should exercise the view rules";
  std::printf("random operators: %d checked, %d changed by view rules (%d walks)\n", checked,
              simplified, attempts);
}
