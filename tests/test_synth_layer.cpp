// SynthLayer (synth/synth_layer.h): a synthesised operator as a [T, d_in] -> [T, d_out] layer —
// forward equals the interpreter for several token counts, backward matches finite differences
// and accumulates, the fan-in init keeps the output's scale, and operators that mix tokens or
// have weights over T are refused; a layer loads from an operator file.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "gradcheck.h"
#include "synth/interpreter.h"
#include "synth/serialize.h"
#include "synth/synth_layer.h"
#include "test_synth_util.h"

using namespace dseek;
using namespace dseek::synth;
using namespace dseek::synth::test;

namespace {

std::vector<double> doubles(const Tensor& t) {
  const auto f = t.to_vector();
  return {f.begin(), f.end()};
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / double(v.size()));
}

}  // namespace

TEST(SynthLayer, ForwardMatchesInterpreterForEachTokenCount) {
  LinearProblem p;
  const Valuation base{0, 12, 8, 2, 4};  // T (per call), d_in, d_out, r, g
  for (const Operator& op : {dense_linear(p), low_rank(p), grouped_linear(p)}) {
    SynthLayer layer(op, p.vars, base, p.T, 3);
    EXPECT_EQ(layer.d_in(), 12);
    EXPECT_EQ(layer.d_out(), 8);
    std::mt19937 rng(5);
    for (int64_t T : {1, 5, 7, 5}) {  // 5 twice: the kept plan
      const Tensor x = dseek::testing::nonzero_tensor({T, 12}, rng);
      SynthLayerCache cache;
      const Tensor y = layer.forward(x, cache);
      ASSERT_EQ(y.shape(), Shape({T, 8}));
      Valuation v = base;
      v[size_t(p.T)] = T;
      std::vector<std::vector<double>> w;
      for (const auto& t : layer.weights()) w.push_back(doubles(t));
      const std::vector<double> want = interpret(op, v, doubles(x), w);
      const std::vector<double> got = doubles(y);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << history_str(op, p.vars);
    }
  }
}

TEST(SynthLayer, BackwardMatchesFiniteDifferencesAndAccumulates) {
  LinearProblem p;
  const Valuation base{0, 12, 8, 2, 4};
  for (const Operator& op : {dense_linear(p), low_rank(p), grouped_linear(p)}) {
    SynthLayer layer(op, p.vars, base, p.T, 4);
    std::mt19937 rng(6);
    Tensor x = dseek::testing::nonzero_tensor({6, 12}, rng);
    const Tensor r = dseek::testing::nonzero_tensor({6, 8}, rng);
    SynthLayerCache cache;
    layer.forward(x, cache);
    const Tensor dx = layer.backward(cache, r);
    std::vector<Tensor> first;
    for (const auto& g : layer.grads()) first.push_back(g.clone());
    std::vector<dseek::testing::GradInput> inputs{{"x", x, dx}};
    for (size_t w = 0; w < layer.weights().size(); ++w)
      inputs.push_back({"w" + std::to_string(w), layer.weights()[w], first[w]});
    const auto rep = dseek::testing::check_gradients(
        [&] {
          SynthLayerCache c;
          return layer.forward(x, c);
        },
        r, inputs, 1e-2f, 64);
    EXPECT_LT(rep.worst, 2e-3) << history_str(op, p.vars) << ": " << rep.where;
    // A second backward adds the same gradients again.
    layer.backward(cache, r);
    for (size_t w = 0; w < first.size(); ++w) {
      const auto a = first[w].to_vector(), b = layer.grads()[w].to_vector();
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(b[i], 2 * a[i], 1e-5 * (1 + std::abs(a[i])));
    }
    layer.zero_grad();
    EXPECT_EQ(rms(layer.grads()[0].to_vector()), 0.0);
  }
}

TEST(SynthLayer, FanInInitKeepsTheOutputScale) {
  LinearProblem p;
  const Valuation base{0, 256, 256, 16, 4};
  for (const Operator& op : {dense_linear(p), low_rank(p), grouped_linear(p)}) {
    SynthLayer layer(op, p.vars, base, p.T, 7);
    std::mt19937 rng(8);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> xv(64 * 256);
    for (float& v : xv) v = n01(rng);
    SynthLayerCache cache;
    const double y_rms = rms(layer.forward(Tensor::from_vector(xv, {64, 256}), cache).to_vector());
    EXPECT_GT(y_rms, 0.8) << history_str(op, p.vars);
    EXPECT_LT(y_rms, 1.25) << history_str(op, p.vars);
  }
}

TEST(SynthLayer, RefusesOperatorsThatMixTokens) {
  LinearProblem p;
  const Valuation base{0, 12, 8, 2, 4};
  // The token coordinate shifted: y[t] reads x[t + 1].
  const Operator shifted =
      build({p.sT, p.sdout}, {shift_action(0), share_action(1, 0), expand_action(1),
                              reduce_action(p.sdin), share_action(1, 0), finalize_action({0, 1})});
  // A weight per position: y[t, o] = Σ_i x[t, i] W[t, o, i].
  const Operator per_token =
      build({p.sT, p.sdout}, {share_action(0, 0), share_action(1, 0), expand_action(1),
                              reduce_action(p.sdin), share_action(1, 0), finalize_action({0, 1})});
  for (const auto& [op, what] :
       {std::pair{shifted, "mixes tokens"}, std::pair{per_token, "depends on the token count"}}) {
    try {
      SynthLayer layer(op, p.vars, base, p.T, 1);
      ADD_FAILURE() << "accepted " << history_str(op, p.vars);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
  SynthLayer dense(dense_linear(p), p.vars, base, p.T, 1);
  SynthLayerCache cache;
  EXPECT_THROW(dense.forward(Tensor::zeros({3, 11}), cache), Error);
}

TEST(SynthLayer, LoadsFromAnOperatorFile) {
  // The file's operator builds the same layer: same weights from the same seed, same outputs.
  LinearProblem p;
  Spec spec;
  spec.vars = p.vars;
  spec.valuations = {{4, 12, 8, 2, 4}};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  const OperatorRecord rec = operator_from_json(operator_to_json(spec, grouped_linear(p)));
  SynthLayer original(grouped_linear(p), p.vars, spec.valuations[0], p.T, 9);
  SynthLayer loaded(rec.op, rec.spec.vars, rec.spec.valuations[0], p.T, 9);
  std::mt19937 rng(10);
  const Tensor x = dseek::testing::nonzero_tensor({5, 12}, rng);
  SynthLayerCache a, b;
  EXPECT_EQ(original.forward(x, a).to_vector(), loaded.forward(x, b).to_vector());
  EXPECT_EQ(loaded.param_count(), 4 * 2 * 3);  // g · (d_out/g) · (d_in/g)
}
