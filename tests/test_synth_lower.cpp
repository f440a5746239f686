// Lowering (synth/lower.h): every lowered plan computes what the reference interpreter computes,
// for the classic layers, for operators built around each primitive and for random operators from
// the legal-action walks; its backward matches central finite differences; its GEMMs are the cost
// model's FLOPs for the classic layers; and the lowered forward is timed against the interpreter
// on medium shapes (printed, not asserted).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "gradcheck.h"
#include "synth/cost.h"
#include "synth/enumerate.h"
#include "synth/interpreter.h"
#include "synth/lower.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

struct Case {
  std::string name;
  Operator op;
  Valuation values;
};

Tensor to_tensor(const std::vector<double>& v, const Shape& shape) {
  return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), shape);
}

std::vector<double> to_doubles(const Tensor& t) {
  const auto f = t.to_vector();
  return {f.begin(), f.end()};
}

// Random f32-representable data for the operator's input and weights.
struct Data {
  Tensor input;
  std::vector<Tensor> weights;
};

Data draw(const LoweredPlan& plan, uint64_t seed) {
  Rng rng(seed);
  Data d;
  d.input = to_tensor(random_values(shape_numel(plan.input_shape), rng), plan.input_shape);
  for (const auto& s : plan.weight_shapes)
    d.weights.push_back(to_tensor(random_values(shape_numel(s), rng), s));
  return d;
}

// Largest |lowered − interpreted| over the output, relative to the output's largest value.
double forward_error(const Operator& op, const Valuation& values, uint64_t seed,
                     const LoweredPlan& plan) {
  const Data d = draw(plan, seed);
  std::vector<std::vector<double>> w;
  for (const auto& t : d.weights) w.push_back(to_doubles(t));
  const std::vector<double> want = interpret(op, values, to_doubles(d.input), w);
  const Tensor got = lowered_forward(plan, d.input, d.weights);
  EXPECT_EQ(got.shape(), plan.output_shape);
  const std::vector<double> g = to_doubles(got);
  if (g.size() != want.size()) return INFINITY;
  double scale = 1.0, worst = 0.0;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < g.size(); ++i) {
    const double e = std::abs(g[i] - want[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst / scale;
}

// Backward vs finite differences on the input and every weight (the operator is linear in each,
// so central differences are exact up to f32 rounding of the forward).
dseek::testing::GradReport backward_report(const LoweredPlan& plan, uint64_t seed) {
  Data d = draw(plan, seed);
  std::mt19937 rng(uint32_t(seed) + 1);
  const Tensor r = dseek::testing::nonzero_tensor(plan.output_shape, rng);
  LoweredCache cache;
  lowered_forward(plan, d.input, d.weights, &cache);
  const LoweredGrads g = lowered_backward(plan, cache, r);
  std::vector<dseek::testing::GradInput> inputs{{"input", d.input, g.dinput}};
  for (size_t w = 0; w < d.weights.size(); ++w)
    inputs.push_back({"w" + std::to_string(w), d.weights[w], g.dweights[w]});
  return dseek::testing::check_gradients([&] { return lowered_forward(plan, d.input, d.weights); },
                                         r, inputs, 1e-2f, 64);
}

// The hand-built operators, each around one primitive or lowering path.
std::vector<Case> hand_built() {
  LinearProblem p;
  const Valuation lin{3, 6, 9, 2, 3};  // T, d_in, d_out, r, g
  ConvProblem c;
  const Valuation conv{2, 3, 4, 5, 6, 3};  // N, C, C_out, H, W, k
  std::vector<Case> cases{
      {"dense", dense_linear(p), lin},          {"low_rank", low_rank(p), lin},
      {"grouped", grouped_linear(p), lin},      {"conv2d", conv2d(c), conv},
      {"depthwise", depthwise_conv2d(c), conv},
  };
  // y[t, o] = x[t, 2·o] · w[o]: a strided gather (odd columns never read).
  cases.push_back({"stride",
                   build({p.sT, p.sdout}, {share_action(1, 0), stride_action(1, Size::constant(2)),
                                           finalize_action({0, 1})}),
                   lin});
  // y[t, o] = Σ_i x[t, i] · w[(o + 1) mod d_out, i]: a shifted weight.
  cases.push_back(
      {"shift",
       build({p.sT, p.sdout}, {shift_action(1), share_action(1, 0), expand_action(1),
                               reduce_action(p.sdin), share_action(1, 0), finalize_action({0, 1})}),
       lin});
  // y[t, o] = Σ_i x[t, i]: broadcast over o, a lone sum, no weight.
  cases.push_back(
      {"broadcast_sum",
       build({p.sT, p.sdout}, {expand_action(1), reduce_action(p.sdin), finalize_action({0, 1})}),
       lin});
  // y[t, i] = r · x[t, i] · w[i]: a reduction no operand reads only scales.
  cases.push_back({"unused_reduce",
                   build({p.sT, p.sdin}, {reduce_action(p.sr), expand_action(2), share_action(1, 0),
                                          finalize_action({0, 1})}),
                   lin});
  // y[t, o] = x[t, o mod g, ⌊o/g⌋] · w[o mod g]: an output dim merged into two input dims that
  // Finalize swaps (a transposing gather).
  cases.push_back({"merge_transposed",
                   build({p.sT, p.sdout},
                         {merge_action(1, p.sg), share_action(2, 0), finalize_action({0, 2, 1})}),
                   lin});
  // y[t, o] = Σ_j w0[j] · x[t, o] · w1[o]: a reduction only one weight reads (summed alone).
  cases.push_back(
      {"weight_only_reduce",
       build({p.sT, p.sdout}, {reduce_action(p.sr), share_action(2, 0), expand_action(2),
                               share_action(1, 1), finalize_action({0, 1})}),
       lin});
  return cases;
}

// Random complete operators from walks through the legal actions (every view primitive).
std::vector<Case> random_cases(int count, uint64_t seed) {
  LinearProblem p;
  const Spec spec = random_linear_spec(p, {3, 6, 6, 2, 3});
  std::vector<Case> out;
  for (const Operator& op : test::random_operators(spec, count, seed))
    out.push_back({history_str(op, spec.vars), op, spec.valuations[0]});
  return out;
}

}  // namespace

TEST(SynthLower, HandBuiltOperatorsMatchInterpreter) {
  uint64_t seed = 1;
  for (const Case& c : hand_built()) {
    const LoweredPlan plan = lower(c.op, c.values);
    std::printf("%s:\n%s", c.name.c_str(), plan.description.c_str());
    EXPECT_LT(forward_error(c.op, c.values, seed++, plan), 1e-5) << c.name;
  }
  // The plans take the intended paths: the dense layer gathers nothing, the convolution pads.
  LinearProblem p;
  const LoweredPlan dense = lower(dense_linear(p), {3, 6, 9, 2, 3});
  EXPECT_EQ(dense.steps.size(), 4u);  // two identity gathers, one contraction, the output
  EXPECT_TRUE(dense.steps[0].identity && dense.steps[1].identity);
  ConvProblem c;
  const LoweredPlan conv = lower(conv2d(c), {2, 3, 4, 5, 6, 3});
  EXPECT_TRUE(conv.steps[0].padded);
  const LoweredPlan grouped = lower(grouped_linear(p), {3, 6, 9, 2, 3});
  EXPECT_EQ(grouped.steps[2].kind, StepKind::contract);
  EXPECT_EQ(grouped.steps[2].batch, 3);  // one GEMM per group
  // Merges of merges refine all the way: y[t, o] = x[t, o] · w[⌊⌊o/2⌋/3⌋]... read as
  // w0[hi] over o = (hi·3 + mid)·2 + lo, the input untouched.
  const Operator nested =
      build({p.sT, p.sdout},
            {merge_action(1, Size::constant(2)), merge_action(1, p.sg), share_action(1, 0),
             split_action(1, 2), split_action(1, 2), finalize_action({0, 1})});
  const LoweredPlan nested_plan = lower(nested, {3, 6, 12, 2, 3});
  EXPECT_LT(forward_error(nested, {3, 6, 12, 2, 3}, 7, nested_plan), 1e-5);
  EXPECT_TRUE(nested_plan.steps[0].identity && nested_plan.steps[1].identity)
      << nested_plan.description;
  // At a model's sizes the classic layers still need no gather (found symbolically, not by
  // computing an index per element).
  for (const Operator& op : {dense_linear(p), low_rank(p), grouped_linear(p)}) {
    const LoweredPlan big = lower(op, {4096, 8192, 8192, 64, 8});
    for (const Step& s : big.steps) {
      if (s.kind == StepKind::gather) {
        EXPECT_TRUE(s.identity) << history_str(op, p.vars);
      }
    }
  }
}

TEST(SynthLower, RandomOperatorsMatchInterpreter) {
  int padded = 0, strided_rows = 0, batched = 0, summed = 0, checked = 0, strided = 0, copied = 0;
  for (const Case& c : random_cases(250, 5)) {
    const LoweredPlan plan = lower(c.op, c.values);
    for (const Step& s : plan.steps) {
      padded += s.kind == StepKind::gather && s.padded;
      strided_rows += s.kind == StepKind::gather && !s.identity && s.D > 1;
      batched += s.kind == StepKind::contract && s.batch > 1;
      summed += s.kind == StepKind::sum;
      strided += s.kind == StepKind::contract && s.strided;
      copied += s.kind == StepKind::contract && !s.strided;
    }
    EXPECT_LT(forward_error(c.op, c.values, uint64_t(checked), plan), 1e-5) << c.name << "\n"
                                                                            << plan.description;
    ++checked;
  }
  EXPECT_EQ(checked, 250);
  // The walks reach every path of the lowering.
  EXPECT_GT(padded, 0);
  EXPECT_GT(strided_rows, 0);
  EXPECT_GT(batched, 0);
  EXPECT_GT(summed, 0);
  EXPECT_GT(strided, 0);  // contractions over strided views (one batched_matmul)
  EXPECT_GT(copied, 0);   // and ones whose operands are permuted copies first
  std::printf(
      "random operators: %d, padded gathers %d, row gathers %d, batched GEMMs %d, "
      "sums %d, strided contractions %d, copied %d\n",
      checked, padded, strided_rows, batched, summed, strided, copied);
}

TEST(SynthLower, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 100;
  for (const Case& c : hand_built()) {
    const dseek::testing::GradReport rep = backward_report(lower(c.op, c.values), seed++);
    std::printf("%-20s checked %3lld  worst %.2e  %s\n", c.name.c_str(), (long long)rep.checked,
                rep.worst, rep.where.c_str());
    EXPECT_LT(rep.worst, 2e-3) << c.name << ": " << rep.where;
    EXPECT_GT(rep.checked, 0);
  }
  for (const Case& c : random_cases(40, 9)) {
    const LoweredPlan plan = lower(c.op, c.values);
    const dseek::testing::GradReport rep = backward_report(plan, seed++);
    EXPECT_LT(rep.worst, 2e-3) << c.name << ": " << rep.where << "\n" << plan.description;
  }
}

TEST(SynthLower, ForwardTimeVsInterpreter) {
  // Medium shapes; the times are printed for docs/SYNTH.md, not asserted.
  LinearProblem p;
  ConvProblem c;
  const std::vector<Case> cases{
      {"dense 64x256->256", dense_linear(p), {64, 256, 256, 16, 4}},
      {"low rank 64x256->256 r16", low_rank(p), {64, 256, 256, 16, 4}},
      {"grouped 64x256->256 g4", grouped_linear(p), {64, 256, 256, 16, 4}},
      {"conv 2x16x16x16 k3", conv2d(c), {2, 16, 16, 16, 16, 3}},
  };
  for (const Case& cs : cases) {
    const LoweredPlan plan = lower(cs.op, cs.values);
    const Data d = draw(plan, 3);
    std::vector<std::vector<double>> w;
    for (const auto& t : d.weights) w.push_back(to_doubles(t));
    const std::vector<double> x = to_doubles(d.input);
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    const std::vector<double> want = interpret(cs.op, cs.values, x, w);
    const double interp_s = std::chrono::duration<double>(clock::now() - t0).count();
    const int reps = 5;
    t0 = clock::now();
    Tensor y;
    for (int i = 0; i < reps; ++i) y = lowered_forward(plan, d.input, d.weights);
    const double lowered_s = std::chrono::duration<double>(clock::now() - t0).count() / reps;
    EXPECT_EQ(y.numel(), int64_t(want.size()));
    std::printf("%-26s interpreter %9.3f ms   lowered %8.3f ms   (%.0fx)\n", cs.name.c_str(),
                interp_s * 1e3, lowered_s * 1e3, interp_s / lowered_s);
  }
}

TEST(SynthLower, ClassicLayersRunTheCostModelsFlops) {
  // The GEMMs the plan runs are the contractions flops() counts (2·b·m·n·k each), so the
  // analytic cost is what the lowering executes (dense 2·T·d_in·d_out, grouped ÷ g, ...).
  LinearProblem p;
  ConvProblem c;
  const std::vector<Case> cases{
      {"dense", dense_linear(p), {8, 24, 12, 4, 3}},
      {"low_rank", low_rank(p), {8, 24, 12, 4, 3}},
      {"grouped", grouped_linear(p), {8, 24, 12, 4, 3}},
      {"conv2d", conv2d(c), {2, 3, 4, 5, 6, 3}},
      {"depthwise", depthwise_conv2d(c), {2, 3, 4, 5, 6, 3}},
  };
  for (const Case& cs : cases) {
    int64_t executed = 0;
    for (const Step& s : lower(cs.op, cs.values).steps)
      if (s.kind == StepKind::contract) executed += 2 * s.batch * s.m * s.n * s.k;
    EXPECT_EQ(executed, flops(cs.op, cs.values)) << cs.name;
  }
}
