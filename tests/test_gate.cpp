// MoE gate: every variant against hand-worked examples (softmax/sigmoid scoring, greedy,
// group_limited_greedy, noaux_tc with a correction bias), the per-model_type weight rules of
// transformers / the hub code, and the refusal of unknown fields.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/gate.h"

using namespace dseek;

namespace {

ModelConfig gate_config(const std::string& model_type, int64_t experts, int64_t top_k) {
  ModelConfig c;
  c.model_type = model_type;
  c.hidden_size = 4;
  c.n_routed_experts = experts;
  c.num_experts_per_tok = top_k;
  return c;
}

std::vector<double> softmax(const std::vector<double>& z) {
  double max = z[0], sum = 0;
  for (double v : z) max = std::max(max, v);
  std::vector<double> p(z.size());
  for (size_t i = 0; i < z.size(); ++i) sum += p[i] = std::exp(z[i] - max);
  for (double& v : p) v /= sum;
  return p;
}

double logit(double p) {
  return std::log(p / (1 - p));
}

Tensor one_token(const std::vector<double>& z) {
  return Tensor::from_vector(std::vector<float>(z.begin(), z.end()), {1, int64_t(z.size())});
}

std::vector<int32_t> ids_of(const Routing& r, int64_t t) {
  return {r.expert_ids.begin() + t * r.top_k, r.expert_ids.begin() + (t + 1) * r.top_k};
}

std::string error_of(const ModelConfig& c) {
  try {
    route_from_logits(c,
                      Tensor::from_vector(std::vector<float>(size_t(c.n_routed_experts), 0.5f),
                                          {1, c.n_routed_experts}),
                      nullptr);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Gate, SoftmaxGreedyPicksTopKInScoreOrder) {
  // DeepSeekMoE 16B style: softmax + greedy, no normalisation, no scaling.
  ModelConfig c = gate_config("deepseek", 5, 2);
  c.routed_scaling_factor = 3.0;  // the 16B gate has no scaling factor: must be ignored
  const std::vector<double> z = {1.0, 3.0, -0.5, 2.0, 0.25};
  const Routing r = route_from_logits(c, one_token(z), nullptr);
  const std::vector<double> p = softmax(z);
  ASSERT_EQ(r.tokens, 1);
  ASSERT_EQ(r.top_k, 2);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(r.weights[0], p[1], 1e-6);
  EXPECT_NEAR(r.weights[1], p[3], 1e-6);
  for (int e = 0; e < 5; ++e) EXPECT_NEAR(r.scores[size_t(e)], p[size_t(e)], 1e-6);
}

TEST(Gate, DeepseekMoENormalisesOnlyWhenAskedAndKAboveOne) {
  ModelConfig c = gate_config("deepseek", 5, 2);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 3.0;
  const std::vector<double> z = {1.0, 3.0, -0.5, 2.0, 0.25};
  const std::vector<double> p = softmax(z);
  Routing r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_NEAR(r.weights[0], p[1] / (p[1] + p[3]), 1e-6);
  EXPECT_NEAR(r.weights[1], p[3] / (p[1] + p[3]), 1e-6);
  // K = 1: the hub MoEGate skips the normalisation (which would make every weight 1).
  c.num_experts_per_tok = 1;
  r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1}));
  EXPECT_NEAR(r.weights[0], p[1], 1e-6);
}

TEST(Gate, GroupLimitedGreedyKeepsBestGroupsByMax) {
  // E = 8 in 4 groups of 2, keep 2 groups, K = 3. Group maxima (in logits, softmax is monotone):
  // g0 5.0, g1 4.8, g2 4.9, g3 1.0 -> keep g0 and g2. Greedy would take {0, 4, 2}; limited to
  // groups 0 and 2 the third pick is expert 5 (0.2) over expert 1 (0.0).
  ModelConfig c = gate_config("deepseek_v2", 8, 3);
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.0;
  const std::vector<double> z = {5.0, 0.0, 4.8, 4.7, 4.9, 0.2, 1.0, 0.3};
  const std::vector<double> p = softmax(z);

  c.topk_method = "greedy";
  Routing r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{0, 4, 2}));

  c.topk_method = "group_limited_greedy";
  r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{0, 4, 5}));
  // V2 always multiplies by routed_scaling_factor and never normalises.
  EXPECT_NEAR(r.weights[0], 2.0 * p[0], 1e-6);
  EXPECT_NEAR(r.weights[1], 2.0 * p[4], 1e-6);
  EXPECT_NEAR(r.weights[2], 2.0 * p[5], 1e-6);
}

TEST(Gate, DeepseekV2IgnoresNormTopkProbLikeTransformers) {
  ModelConfig c = gate_config("deepseek_v2", 5, 2);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 16.0;
  const std::vector<double> z = {1.0, 3.0, -0.5, 2.0, 0.25};
  const std::vector<double> p = softmax(z);
  const Routing r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_NEAR(r.weights[0], 16.0 * p[1], 1e-5);
  EXPECT_NEAR(r.weights[1], 16.0 * p[3], 1e-5);
}

TEST(Gate, NoauxTcGroupsBySumOfTopTwoAndBiasSteersSelectionOnly) {
  // Sigmoid scores s, E = 8 in 4 groups of 2, keep 2 groups, K = 2.
  // Top-2 sums: g0 0.9+0.1 = 1.0, g1 0.6+0.55 = 1.15, g2 0.8+0.25 = 1.05, g3 0.3+0.25 = 0.55.
  // Kept: g1, g2 -> experts 4 (0.8) and 2 (0.6), although expert 0 (0.9) is the best single one:
  // with max as the group score g0 would have been kept.
  ModelConfig c = gate_config("deepseek_v3", 8, 2);
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 4;
  c.topk_group = 2;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  const std::vector<double> s = {0.9, 0.1, 0.6, 0.55, 0.8, 0.25, 0.3, 0.25};
  std::vector<double> z;
  for (double v : s) z.push_back(logit(v));

  Routing r = route_from_logits(c, one_token(z), nullptr);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{4, 2}));
  EXPECT_NEAR(r.weights[0], 2.5 * 0.8 / 1.4, 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * 0.6 / 1.4, 1e-6);
  for (int e = 0; e < 8; ++e) EXPECT_NEAR(r.scores[size_t(e)], s[size_t(e)], 1e-6);

  // A bias on group 3 (0.8 + 0.65 = 1.45) makes it the best group; g1 (1.15) stays second.
  // Selection by biased score: expert 6 (0.8), expert 7 (0.65). Weights come from the unbiased
  // scores 0.3 and 0.25.
  const std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0.5f, 0.4f};
  r = route_from_logits(c, one_token(z), bias.data());
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{6, 7}));
  EXPECT_NEAR(r.weights[0], 2.5 * 0.3 / 0.55, 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * 0.25 / 0.55, 1e-6);
  EXPECT_NEAR(r.scores[6], 0.3, 1e-6);  // scores stay unbiased

  // Without normalisation V3 still scales.
  c.norm_topk_prob = false;
  r = route_from_logits(c, one_token(z), bias.data());
  EXPECT_NEAR(r.weights[0], 2.5 * 0.3, 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * 0.25, 1e-6);
}

TEST(Gate, MaskedExpertsScoreZeroNotMinusInfinity) {
  // transformers masks the dropped groups with 0.0. With a negative bias every kept expert's
  // biased score is below 0, so a dropped expert (masked to 0) outranks them: reproduce that.
  ModelConfig c = gate_config("deepseek_v3", 4, 2);
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  const std::vector<double> s = {0.6, 0.5, 0.2, 0.1};
  std::vector<double> z;
  for (double v : s) z.push_back(logit(v));
  const std::vector<float> bias = {-0.7f, -0.8f, -0.9f, -0.95f};
  // Biased: -0.1, -0.3 | -0.7, -0.85 -> keep g0; masked g1 = 0, 0 -> top-2 = experts 2, 3.
  const Routing r = route_from_logits(c, one_token(z), bias.data());
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 0.2, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.1, 1e-6);
}

TEST(Gate, ManyTokensRouteIndependentlyAndCountLoads) {
  ModelConfig c = gate_config("deepseek", 6, 2);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t T = 9;
  std::vector<float> z(size_t(T * 6));
  for (float& v : z) v = dist(rng);
  const Routing all = route_from_logits(c, Tensor::from_vector(z, {T, 6}), nullptr);
  std::vector<int64_t> load(6, 0);
  for (int64_t t = 0; t < T; ++t) {
    const Tensor row = Tensor::from_vector({z.begin() + t * 6, z.begin() + (t + 1) * 6}, {1, 6});
    const Routing one = route_from_logits(c, row, nullptr);
    EXPECT_EQ(ids_of(all, t), ids_of(one, 0)) << "token " << t;
    EXPECT_FLOAT_EQ(all.weight(t, 0), one.weights[0]);
    EXPECT_FLOAT_EQ(all.weight(t, 1), one.weights[1]);
    EXPECT_GT(all.weight(t, 0), all.weight(t, 1));  // descending score order
    for (int64_t k = 0; k < 2; ++k) ++load[size_t(all.expert(t, k))];
  }
  EXPECT_EQ(all.expert_load(), load);
}

TEST(Gate, StridedLogitsAreReadInLogicalOrder) {
  ModelConfig c = gate_config("deepseek", 3, 1);
  // [E, T] transposed to [T, E]: token 0 = {0, 2, 1}, token 1 = {5, 3, 4}.
  const Tensor et = Tensor::from_vector({0, 5, 2, 3, 1, 4}, {3, 2});
  const Routing r = route_from_logits(c, et.transpose(0, 1), nullptr);
  EXPECT_EQ(r.expert(0, 0), 1);
  EXPECT_EQ(r.expert(1, 0), 0);
}

TEST(Gate, EqualScoresGoToTheLowerIndex) {
  ModelConfig c = gate_config("deepseek", 4, 2);
  const Routing r = route_from_logits(c, one_token({1.0, 2.0, 2.0, 2.0}), nullptr);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1, 2}));
}

TEST(Gate, RefusesUnknownFieldsNamingThem) {
  ModelConfig c = gate_config("deepseek_v3", 8, 2);
  c.scoring_func = "relu";
  EXPECT_NE(error_of(c).find("scoring_func"), std::string::npos) << error_of(c);
  c = gate_config("deepseek_v3", 8, 2);
  c.topk_method = "random";
  EXPECT_NE(error_of(c).find("topk_method"), std::string::npos) << error_of(c);
  c = gate_config("llama", 8, 2);
  EXPECT_NE(error_of(c).find("model_type"), std::string::npos) << error_of(c);
  c = gate_config("deepseek", 8, 9);
  EXPECT_NE(error_of(c).find("num_experts_per_tok"), std::string::npos) << error_of(c);
  c = gate_config("deepseek_v2", 8, 2);
  c.topk_method = "group_limited_greedy";
  c.n_group = 3;
  EXPECT_NE(error_of(c).find("n_group"), std::string::npos) << error_of(c);
  c.n_group = 4;
  c.topk_group = 5;
  EXPECT_NE(error_of(c).find("topk_group"), std::string::npos) << error_of(c);
  c = gate_config("deepseek_v3", 8, 2);
  c.topk_method = "noaux_tc";
  c.n_group = 8;
  c.topk_group = 2;
  EXPECT_NE(error_of(c).find("noaux_tc"), std::string::npos) << error_of(c);
  // Wrong logits width names the router logits.
  c = gate_config("deepseek", 8, 2);
  EXPECT_THROW(route_from_logits(c, Tensor::from_vector({1, 2, 3}, {1, 3}), nullptr), Error);
}

TEST(Gate, RoutesFromHiddenStatesWithBf16Weight) {
  ModelConfig c = gate_config("deepseek_v3", 8, 2);
  c.hidden_size = 12;
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.5;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> w(8 * 12), x(5 * 12);
  for (float& v : w) v = dist(rng);
  for (float& v : x) v = dist(rng);
  const Tensor weight = Tensor::from_vector(w, {8, 12}).to(DType::BF16);
  const std::vector<float> bias = {0.05f, -0.02f, 0.1f, 0.0f, -0.1f, 0.03f, 0.2f, -0.05f};
  const Gate gate(c, weight, bias);
  const Tensor xt = Tensor::from_vector(x, {5, 12});

  // Reference logits in double from the bf16-rounded weight.
  const std::vector<float> wr = weight.to_vector();
  std::vector<float> z(5 * 8);
  for (int t = 0; t < 5; ++t) {
    for (int e = 0; e < 8; ++e) {
      double acc = 0;
      for (int d = 0; d < 12; ++d) acc += double(x[size_t(t * 12 + d)]) * wr[size_t(e * 12 + d)];
      z[size_t(t * 8 + e)] = float(acc);
    }
  }
  const Tensor logits = gate.logits(xt);
  ASSERT_EQ(logits.shape(), (Shape{5, 8}));
  const std::vector<float> got = logits.to_vector();
  for (size_t i = 0; i < z.size(); ++i) EXPECT_NEAR(got[i], z[i], 1e-5) << i;

  const Routing r = gate.route(xt);
  const Routing expect = route_from_logits(c, Tensor::from_vector(z, {5, 8}), bias.data());
  EXPECT_EQ(r.expert_ids, expect.expert_ids);
  for (size_t i = 0; i < r.weights.size(); ++i) EXPECT_NEAR(r.weights[i], expect.weights[i], 1e-5);
  // Normalised and scaled: every token's weights sum to routed_scaling_factor.
  for (int t = 0; t < 5; ++t) EXPECT_NEAR(r.weight(t, 0) + r.weight(t, 1), 1.5, 1e-5);
  EXPECT_THROW(gate.route(Tensor::from_vector(x, {6, 10})), Error);
}

// No tokens: an empty routing of the config's shape (the op's empty outputs read as no values).
TEST(Gate, NoTokensRouteToNothing) {
  const ModelConfig c = gate_config("deepseek", 6, 2);
  const Routing r = route_from_logits(c, Tensor::empty({0, 6}), nullptr);
  EXPECT_EQ(r.tokens, 0);
  EXPECT_EQ(r.top_k, 2);
  EXPECT_EQ(r.experts, 6);
  EXPECT_TRUE(r.expert_ids.empty());
  EXPECT_TRUE(r.weights.empty());
  EXPECT_TRUE(r.scores.empty());
  EXPECT_EQ(r.expert_load(), std::vector<int64_t>(6, 0));
}
