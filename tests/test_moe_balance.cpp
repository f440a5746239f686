// Balance losses and statistics of MoE routing: hand-worked values, consistency between the
// expert-level and sequence-wise forms, gradients against finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/error.h"
#include "model/moe_balance.h"

using namespace dseek;

namespace {

Routing make_routing(int64_t E, int64_t K, const std::vector<int32_t>& ids,
                     const std::vector<float>& scores) {
  Routing r;
  r.experts = E;
  r.top_k = K;
  r.tokens = int64_t(ids.size()) / K;
  r.expert_ids = ids;
  r.weights.assign(ids.size(), 1.0f);
  r.scores = scores;
  return r;
}

Routing random_routing(int64_t T, int64_t E, int64_t K, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(0.05f, 1.0f);
  std::vector<float> scores(size_t(T * E));
  for (float& s : scores) s = dist(rng);
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> all(static_cast<size_t>(E));
    for (int32_t e = 0; e < E; ++e) all[size_t(e)] = e;
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + K);
  }
  return make_routing(E, K, ids, scores);
}

void expect_gradient_matches(const Routing& r, const BalanceLoss& loss,
                             const std::function<double(const Routing&)>& value) {
  const double h = 1e-3;
  for (size_t i = 0; i < r.scores.size(); ++i) {
    Routing plus = r, minus = r;
    plus.scores[i] += float(h);
    minus.scores[i] -= float(h);
    const double step = double(plus.scores[i]) - double(minus.scores[i]);
    const double numeric = (value(plus) - value(minus)) / step;
    EXPECT_NEAR(loss.grad_scores[i], numeric, 1e-4 * std::max(1.0, std::abs(numeric))) << i;
  }
}

}  // namespace

TEST(MoEBalance, ExpertLossHandWorked) {
  // f = 3/(1·2)·[1, 1, 0] = [1.5, 1.5, 0]; P = [0.3, 0.45, 0.25]; Σ f·P = 1.125.
  const Routing r = make_routing(3, 1, {0, 1}, {0.5f, 0.3f, 0.2f, 0.1f, 0.6f, 0.3f});
  const BalanceLoss loss = expert_balance_loss(r, 0.01);
  EXPECT_NEAR(loss.value, 0.01125, 1e-9);
  // dL/ds_{t,i} = α f_i / T.
  EXPECT_NEAR(loss.grad_scores[0], 0.01 * 1.5 / 2, 1e-9);
  EXPECT_NEAR(loss.grad_scores[5], 0.0, 1e-12);
}

TEST(MoEBalance, PerfectBalanceCostsAlpha) {
  // Every expert chosen equally often and uniform scores: f_i = 1, Σ P_i = 1.
  const Routing r = make_routing(4, 2, {0, 1, 2, 3}, std::vector<float>(8, 0.25f));
  EXPECT_NEAR(expert_balance_loss(r, 0.003).value, 0.003, 1e-9);
}

TEST(MoEBalance, SequenceLossHandWorkedWithNormalisedScores) {
  // One sequence of 2 tokens, both to expert 0: f = 2/(1·2)·[2, 0] = [2, 0].
  // s' = [[0.75, 0.25], [0.5, 0.5]] -> P_0 = 0.625 -> L = 1.25 α. Unnormalised: P_0 = 0.45.
  const Routing r = make_routing(2, 1, {0, 0}, {0.6f, 0.2f, 0.3f, 0.3f});
  EXPECT_NEAR(sequence_balance_loss(r, 2, 1e-4, true).value, 1.25e-4, 1e-10);
  EXPECT_NEAR(sequence_balance_loss(r, 2, 1e-4, false).value, 0.9e-4, 1e-10);
}

TEST(MoEBalance, SequenceLossIsTheMeanOverSequences) {
  std::mt19937 rng(3);
  const Routing r = random_routing(12, 6, 2, rng);
  // One sequence spanning every token equals the expert-level loss.
  EXPECT_NEAR(sequence_balance_loss(r, 12, 0.1, false).value, expert_balance_loss(r, 0.1).value,
              1e-9);
  // Three sequences of 4: the mean of each sequence's own loss.
  double mean = 0;
  for (int b = 0; b < 3; ++b) {
    const Routing part =
        make_routing(6, 2, {r.expert_ids.begin() + b * 8, r.expert_ids.begin() + (b + 1) * 8},
                     {r.scores.begin() + b * 24, r.scores.begin() + (b + 1) * 24});
    mean += expert_balance_loss(part, 0.1).value / 3;
  }
  EXPECT_NEAR(sequence_balance_loss(r, 4, 0.1, false).value, mean, 1e-9);
  // Normalisation makes the loss invariant to a per-token rescaling of the scores.
  Routing scaled = r;
  for (size_t i = 0; i < scaled.scores.size(); ++i) scaled.scores[i] *= float(1 + i / 6);
  EXPECT_NEAR(sequence_balance_loss(scaled, 4, 0.1, true).value,
              sequence_balance_loss(r, 4, 0.1, true).value, 1e-7);
}

TEST(MoEBalance, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(4);
  const Routing r = random_routing(6, 5, 2, rng);
  expect_gradient_matches(r, expert_balance_loss(r, 0.2),
                          [](const Routing& x) { return expert_balance_loss(x, 0.2).value; });
  for (bool normalize : {false, true}) {
    expect_gradient_matches(r, sequence_balance_loss(r, 3, 0.2, normalize), [&](const Routing& x) {
      return sequence_balance_loss(x, 3, 0.2, normalize).value;
    });
  }
}

TEST(MoEBalance, DeviceLossHandWorked) {
  // E = 4 on 2 devices {0, 1} | {2, 3}; T = 2, K = 1; tokens to experts 0 and 1 (both device 0).
  // f = 4/(1·2)·[1, 1, 0, 0] = [2, 2, 0, 0] -> f' = [2, 0];
  // P = [0.25, 0.25, 0.3, 0.2] -> P' = [0.5, 0.5]; L = α · 2 · 0.5 = α.
  const Routing r = make_routing(4, 1, {0, 1}, {0.4f, 0.1f, 0.3f, 0.2f, 0.1f, 0.4f, 0.3f, 0.2f});
  const BalanceLoss loss = device_balance_loss(r, 2, 0.05);
  EXPECT_NEAR(loss.value, 0.05, 1e-9);
  // One device per expert is the expert-level loss.
  std::mt19937 rng(6);
  const Routing q = random_routing(8, 6, 2, rng);
  EXPECT_NEAR(device_balance_loss(q, 6, 0.1).value, expert_balance_loss(q, 0.1).value, 1e-9);
  expect_gradient_matches(q, device_balance_loss(q, 3, 0.1),
                          [](const Routing& x) { return device_balance_loss(x, 3, 0.1).value; });
  EXPECT_THROW(device_balance_loss(q, 4, 0.1), Error);
}

TEST(MoEBalance, MaxViolationAndBiasUpdate) {
  const std::vector<int64_t> load = {3, 1, 2, 2};
  EXPECT_DOUBLE_EQ(max_violation(load), 0.5);
  EXPECT_DOUBLE_EQ(max_violation({2, 2, 2}), 0.0);
  std::vector<float> bias = {0.1f, 0.1f, -0.2f, 0.0f};
  update_correction_bias(bias, load, 0.001);
  EXPECT_FLOAT_EQ(bias[0], 0.099f);  // overloaded: lowered
  EXPECT_FLOAT_EQ(bias[1], 0.101f);  // underloaded: raised
  EXPECT_FLOAT_EQ(bias[2], -0.2f);   // at the mean: unchanged
  EXPECT_FLOAT_EQ(bias[3], 0.0f);
  EXPECT_THROW(max_violation({0, 0}), Error);
  EXPECT_THROW(update_correction_bias(bias, {1, 2}, 0.001), Error);
}

TEST(MoEBalance, RejectsIncompleteRouting) {
  std::mt19937 rng(5);
  Routing r = random_routing(6, 4, 2, rng);
  EXPECT_THROW(sequence_balance_loss(r, 4, 0.1, true), Error);  // 6 tokens, sequences of 4
  r.expert_ids[0] = 4;
  EXPECT_THROW(expert_balance_loss(r, 0.1), Error);
  r.expert_ids[0] = 0;
  r.scores.pop_back();
  EXPECT_THROW(expert_balance_loss(r, 0.1), Error);
}
