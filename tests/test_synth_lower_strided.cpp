// The lowering's strided contractions (synth/lower.h step 2): the known designs and the operator
// files of docs/synth-ops lower to plans that copy no activation — the input read as it stands,
// one batched_matmul per contraction over strided views of the registers, the last one written in
// the output's layout, gathers and sums only of weights — at a real model's shapes; and those
// plans compute what the interpreter computes, with a backward that matches finite differences
// (on the CPU; tests/backend runs them on a GPU).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"
#include "gradcheck.h"
#include "synth/bench.h"
#include "synth/interpreter.h"
#include "synth/lower.h"
#include "synth/serialize.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;

namespace {

std::vector<BenchOperator> operators() {
  std::vector<BenchOperator> ops = known_operators("dense,lowrank/8,grouped/4");
  for (const char* name : {"kron-g-48c8ebd6", "lowrank-r=din_g-5fb44bd6", "lowrank-r=g-e1a5d649",
                           "rank1-63a5697c"}) {
    std::ifstream in(std::string(DSEEK_SOURCE_DIR) + "/docs/synth-ops/" + name + ".json");
    EXPECT_TRUE(in.good()) << name;
    std::stringstream text;
    text << in.rdbuf();
    BenchOperator b;
    b.label = name;
    b.record = operator_from_json(text.str());
    ops.push_back(b);
  }
  return ops;
}

struct Shape2 {
  int64_t tokens;
  BenchShape shape;
};

// The plan's contractions, each one batched_matmul with no copies around it: the input is read
// as it stands; a gather or a sum may only touch weights (a weight read transposed, a weight
// summed on its own: work independent of the token count, on device constants).
void expect_fast(const LoweredPlan& plan, const std::string& what) {
  int contractions = 0;
  int64_t params = 0;
  for (const Shape& w : plan.weight_shapes) params += shape_numel(w);
  for (const Step& s : plan.steps) {
    switch (s.kind) {
      case StepKind::gather:
        if (s.source < 0) {
          EXPECT_TRUE(s.identity) << what << "\n" << plan.description;
        }
        break;
      case StepKind::sum:
        EXPECT_LE(s.m * s.k, params) << what << ": a sum over activations\n" << plan.description;
        break;
      case StepKind::contract:
        ++contractions;
        EXPECT_TRUE(s.strided) << what << "\n" << plan.description;
        break;
      case StepKind::finish: {
        std::vector<int> identity(s.perm_a.size());
        std::iota(identity.begin(), identity.end(), 0);
        EXPECT_EQ(s.perm_a, identity) << what << ": the output is permuted\n" << plan.description;
        EXPECT_TRUE(s.broadcast.empty()) << what;
        EXPECT_EQ(s.scale, 1.0f) << what;
        break;
      }
    }
  }
  EXPECT_GE(contractions, 1) << what;
}

}  // namespace

TEST(SynthLowerStrided, KnownDesignsAndFilesAreOneGemmPerContraction) {
  const std::vector<Shape2> shapes{{4096, {"o_proj", 2048, 2048}},
                                   {4096, {"q_proj", 2048, 3072}},
                                   {4096, {"expert.up", 2048, 1408}},
                                   {64, {"dense_ffn.up", 2048, 10944}}};
  for (const BenchOperator& b : operators()) {
    for (const Shape2& sh : shapes) {
      Valuation v;
      try {
        v = bench_valuation(b, sh.tokens, sh.shape);
      } catch (const Error&) {
        continue;  // a size that is not an integer at this shape (a row with a note in the bench)
      }
      const LoweredPlan plan = lower(b.record.op, v);
      const std::string what = b.label + " at " + sh.shape.name;
      std::printf("%s:\n%s", what.c_str(), plan.description.c_str());
      expect_fast(plan, what);
      for (const Step& s : plan.steps) {
        if (s.kind != StepKind::contract) continue;
        if (b.label == "grouped g=4") {  // the block-diagonal GEMM: 4 blocks, nothing else
          EXPECT_EQ(s.batch, 4) << what;
          EXPECT_EQ(s.m, sh.tokens) << what;
          EXPECT_EQ(s.n * 4, sh.shape.d_out) << what;
        }
        if (b.label == "dense") {
          EXPECT_EQ(s.batch * s.m * s.n * s.k, sh.tokens * 2048 * sh.shape.d_out) << what;
        }
      }
    }
  }
}

TEST(SynthLowerStrided, PlansMatchInterpreterAndFiniteDifferences) {
  uint64_t seed = 300;
  // The small shape, and the one tests/backend/test_backend_synth.cpp runs on the GPU.
  for (const BenchOperator& b : operators()) {
    for (const Shape2& sh : {Shape2{6, {"small", 32, 48}}, Shape2{67, {"s", 96, 136}}}) {
      const Valuation v = bench_valuation(b, sh.tokens, sh.shape);
      const LoweredPlan plan = lower(b.record.op, v);
      expect_fast(plan, b.label);
      Rng rng(seed);
      std::vector<double> x = test::random_values(shape_numel(plan.input_shape), rng);
      std::vector<std::vector<double>> w;
      std::vector<Tensor> wt;
      for (const Shape& s : plan.weight_shapes) {
        w.push_back(test::random_values(shape_numel(s), rng));
        wt.push_back(
            Tensor::from_vector(std::vector<float>(w.back().begin(), w.back().end()), s));
      }
      const Tensor xt =
          Tensor::from_vector(std::vector<float>(x.begin(), x.end()), plan.input_shape);
      const std::vector<double> want = interpret(b.record.op, v, x, w);
      const std::vector<float> got = lowered_forward(plan, xt, wt).to_vector();
      ASSERT_EQ(got.size(), want.size()) << b.label;
      double scale = 1.0, worst = 0.0;
      for (double y : want) scale = std::max(scale, std::abs(y));
      for (size_t i = 0; i < got.size(); ++i)
        worst = std::isfinite(got[i]) ? std::max(worst, std::abs(double(got[i]) - want[i]))
                                      : INFINITY;
      EXPECT_LT(worst / scale, 1e-5) << b.label << "\n" << plan.description;

      std::mt19937 grng(uint32_t(seed) + 1);
      const Tensor r = dseek::testing::nonzero_tensor(plan.output_shape, grng);
      LoweredCache cache;
      lowered_forward(plan, xt, wt, &cache);
      const LoweredGrads g = lowered_backward(plan, cache, r);
      std::vector<dseek::testing::GradInput> inputs{{"input", xt, g.dinput}};
      for (size_t i = 0; i < wt.size(); ++i)
        inputs.push_back({"w" + std::to_string(i), wt[i], g.dweights[i]});
      const dseek::testing::GradReport rep = dseek::testing::check_gradients(
          [&] { return lowered_forward(plan, xt, wt); }, r, inputs, 1e-2f, 64);
      std::printf("%-28s T=%-3lld forward %.1e  backward checked %lld worst %.2e\n",
                  b.label.c_str(), (long long)sh.tokens, worst / scale, (long long)rep.checked,
                  rep.worst);
      // The differences are taken of L = Σ r·y in double from an f32 forward: at 67 tokens the
      // sum has 9k terms and its rounding noise, divided by 2·eps, reaches ~2e-3 of a gradient
      // (a wrong gradient is off by O(1)).
      EXPECT_LT(rep.worst, sh.tokens > 6 ? 1e-2 : 2e-3)
          << b.label << ": " << rep.where << "\n" << plan.description;
      EXPECT_GT(rep.checked, 0) << b.label;
      ++seed;
    }
  }
}
