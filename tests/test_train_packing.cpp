// Packed documents in TrainModel (variable-length segments, train/layers.h): a packed row trains
// each document exactly as if it ran alone (no attention, RoPE, MTP or balance-loss leakage), its
// gradients match finite differences (with per-token weighted cross-entropy, the DPO path), and
// DPO's loss and gradient match values worked out by hand and by finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "ops/cross_entropy.h"
#include "param_gradcheck.h"
#include "test_model_util.h"
#include "train/dpo.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;
using dseek::testing::add_moe;
using dseek::testing::tiny_config;

namespace {

ModelConfig v3_config() {
  ModelConfig c = tiny_config("deepseek_v3");
  add_moe(c);
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.num_nextn_predict_layers = 1;
  return c;
}

ModelConfig llama_config() {
  ModelConfig c = tiny_config("llama");
  c.num_key_value_heads = 2;
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& t : ids) t = pick(rng);
  return ids;
}

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t a, int64_t n) {
  return std::vector<int32_t>(v.begin() + a, v.begin() + a + n);
}

}  // namespace

// Documents of lengths 6, 1, 9, 4 packed into one row: every position's log-probability, the MTP
// and balance losses and the expert loads equal those of the documents run one by one; a row run
// as one sequence instead gives different log-probs after the first document (the test can fail).
TEST(TrainPacking, PackedDocumentsEqualSeparateRuns) {
  const ModelConfig c = v3_config();
  ParamSet packed_params, single_params;
  TrainModel::init_params(c, 6, 0.3, packed_params);
  TrainModel::init_params(c, 6, 0.3, single_params);
  TrainModel packed(c, packed_params), single(c, single_params);
  LossOptions o;
  o.mtp_lambda = 0.3;
  o.balance = {"sequence", 0.05, 1};
  const Segments segments = {6, 1, 9, 4};
  const std::vector<int32_t> in = random_ids(20, c.vocab_size, 4);
  std::vector<int32_t> tg = random_ids(20, c.vocab_size, 5);
  tg[2] = ops::kIgnoreIndex;  // masked targets stay masked
  tg[11] = ops::kIgnoreIndex;
  const SequenceLosses all = packed.forward(in, tg, o, segments);
  // The balance loss is a mean over sequences per layer; without MTP every layer sees 4 documents.
  LossOptions no_mtp = o;
  no_mtp.mtp_lambda = 0.0;
  const SequenceLosses all_main = packed.forward(in, tg, no_mtp, segments);
  const SequenceLosses whole = packed.forward(in, tg, o, Segments{20});

  double mtp_sum = 0, aux = 0;
  int64_t mtp_count = 0, at = 0, docs = 0;
  std::vector<int64_t> load(size_t(c.n_routed_experts), 0);
  for (int64_t n : segments) {
    const SequenceLosses one = single.forward(slice(in, at, n), slice(tg, at, n), o);
    for (int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(all.token_logp[size_t(at + i)], one.token_logp[size_t(i)], 1e-5)
          << "document at " << at << " position " << i;
    if (!one.mtp_ce.empty()) {
      int64_t counted = 0;  // MTP targets of the document: positions 1.. that are not ignored
      for (int64_t i = 1; i < n; ++i) counted += tg[size_t(at + i)] != ops::kIgnoreIndex;
      mtp_sum += one.mtp_ce[0] * double(counted);
      mtp_count += counted;
    }
    const SequenceLosses one_main = single.forward(slice(in, at, n), slice(tg, at, n), no_mtp);
    aux += one_main.aux;
    for (size_t e = 0; e < load.size(); ++e) load[e] += one.expert_load[0][e];
    ++docs;
    at += n;
  }
  ASSERT_EQ(all.mtp_ce.size(), 1u);
  EXPECT_NEAR(all.mtp_ce[0], mtp_sum / double(mtp_count), 1e-5);
  EXPECT_NEAR(all_main.aux, aux / double(docs), 1e-6);
  EXPECT_EQ(all.expert_load[0], load);
  double leak = 0;
  for (int64_t i = 6; i < 20; ++i)
    leak = std::max(leak, std::abs(whole.token_logp[size_t(i)] - all.token_logp[size_t(i)]));
  EXPECT_GT(leak, 1e-3) << "one long sequence should differ from packed documents";
}

// With every token weighted 1 (a summed loss) the gradients of a packed row equal the sum of the
// documents' own gradients.
TEST(TrainPacking, PackedGradientsEqualSumOfDocuments) {
  const ModelConfig c = llama_config();
  ParamSet packed_params, single_params;
  TrainModel::init_params(c, 7, 0.3, packed_params);
  TrainModel::init_params(c, 7, 0.3, single_params);
  TrainModel packed(c, packed_params), single(c, single_params);
  LossOptions o;
  o.token_weights = [](const std::vector<double>& logp) {
    return std::vector<float>(logp.size(), 1.0f);
  };
  const Segments segments = {5, 8, 3};
  const std::vector<int32_t> in = random_ids(16, c.vocab_size, 8), tg = random_ids(16, c.vocab_size, 9);
  const SequenceLosses all = packed.forward_backward(in, tg, o, 1.0f, segments);
  double sum = 0;
  int64_t at = 0;
  for (int64_t n : segments) {
    sum += single.forward_backward(slice(in, at, n), slice(tg, at, n), o, 1.0f).main_ce;
    at += n;
  }
  EXPECT_NEAR(all.main_ce, sum, 1e-4 * std::abs(sum));
  for (const Param& p : packed_params.all()) {
    if (!p.trainable) continue;
    const std::vector<float> a = p.grad.to_vector(), b = single_params.grad(p.name).to_vector();
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_NEAR(a[i], b[i], 2e-5f * (1.0f + std::abs(b[i]))) << p.name << "[" << i << "]";
  }
}

// Central differences of the total loss of a packed row (MTP, sequence-wise balance loss and
// fixed per-token weights of both signs on the main cross-entropy), as in test_train_model.cpp.
TEST(TrainPacking, PackedGradientsMatchFiniteDifferences) {
  for (const ModelConfig& c : {v3_config(), llama_config()}) {
    SCOPED_TRACE(c.model_type);
    ParamSet params;
    TrainModel::init_params(c, 3, 0.25, params);
    TrainModel train(c, params);
    const Segments segments = {4, 1, 7};
    const std::vector<int32_t> in = random_ids(12, c.vocab_size, 11);
    std::vector<int32_t> tg = random_ids(12, c.vocab_size, 12);
    tg[6] = ops::kIgnoreIndex;
    std::vector<float> weights(12);
    for (size_t i = 0; i < weights.size(); ++i) weights[i] = (i % 3 == 0 ? -0.4f : 0.7f) + 0.05f * float(i);
    LossOptions o;
    o.mtp_lambda = 0.3;
    o.balance = {"sequence", 0.05, 1};
    o.token_weights = [&](const std::vector<double>&) { return weights; };
    const float scale = 0.75f;
    params.zero_grad();
    const SequenceLosses base = train.forward_backward(in, tg, o, scale, segments);
    ASSERT_TRUE(std::isfinite(base.total));
    auto loss = [&] {
      const SequenceLosses l = train.forward(in, tg, o, segments);
      return dseek::testing::LossPoint{l.total, l.expert_load};
    };
    const dseek::testing::ParamGradReport r = dseek::testing::check_param_gradients(
        params, loss, {base.total, base.expert_load}, 3, 17, scale);
    EXPECT_LT(r.worst, 2e-2) << r.where;
    EXPECT_GT(r.checked, 3 * r.skipped);
  }
}

TEST(TrainPacking, RejectsSegmentsThatDoNotTileTheBatch) {
  const ModelConfig c = llama_config();
  ParamSet params;
  TrainModel::init_params(c, 1, 0.02, params);
  TrainModel train(c, params);
  const std::vector<int32_t> ids = random_ids(6, c.vocab_size, 1);
  try {
    train.forward(ids, ids, LossOptions{}, Segments{2, 3});
    ADD_FAILURE() << "segments summing to 5 for 6 tokens accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("segment lengths sum to 5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(train.forward(ids, ids, LossOptions{}, Segments{7, -1}), Error);
}

// One pair worked by hand: log-probs chosen (−1, −2) → −3, rejected (−0.5, −1.5) → −2; reference
// −4 and −1.5; β = 0.5: rewards 0.5·(−3 + 4) = 0.5 and 0.5·(−2 + 1.5) = −0.25, z = 0.75,
// loss = log(1 + e^−0.75) = 0.386871, weights ±β·σ(−0.75) = ±0.160411. A second pair with the
// rejected response preferred: z = 0.5·((−1 + 1) − (−1 + 2)) = −0.5, loss log(1 + e^0.5) = 0.974077.
TEST(Dpo, LossAndWeightsMatchHandComputedValues) {
  const std::vector<double> logp = {-1, -2, -0.5, -1.5, 0, -1, -1};
  std::vector<DpoPair> pairs = {{0, 2, 2, 4}};
  std::vector<float> w;
  DpoStats s = dpo_loss(logp, pairs, {{-4.0, -1.5}}, 0.5, w);
  EXPECT_NEAR(s.loss, 0.386871, 1e-6);
  EXPECT_NEAR(s.reward_chosen, 0.5, 1e-12);
  EXPECT_NEAR(s.reward_rejected, -0.25, 1e-12);
  EXPECT_NEAR(s.margin, 0.75, 1e-12);
  EXPECT_EQ(s.accuracy, 1.0);
  ASSERT_EQ(w.size(), logp.size());
  EXPECT_NEAR(w[0], 0.160411, 1e-6);
  EXPECT_NEAR(w[1], 0.160411, 1e-6);
  EXPECT_NEAR(w[2], -0.160411, 1e-6);
  EXPECT_EQ(w[4], 0.0f);

  pairs.push_back({5, 6, 6, 7});
  s = dpo_loss(logp, pairs, {{-4.0, -1.5}, {-1.0, -2.0}}, 0.5, w);
  const DpoStats m = s.mean();
  EXPECT_NEAR(m.loss, (0.386871 + 0.974077) / 2, 1e-6);
  EXPECT_NEAR(m.accuracy, 0.5, 1e-12);
  EXPECT_NEAR(m.margin, (0.75 - 0.5) / 2, 1e-12);
  // Weights of the mean over 2 pairs: ±β·σ(−z)/2, σ(0.5) = 0.622459.
  EXPECT_NEAR(w[0], 0.160411 / 2, 1e-6);
  EXPECT_NEAR(w[5], 0.5 * 0.622459 / 2, 1e-6);
  EXPECT_NEAR(w[6], -0.5 * 0.622459 / 2, 1e-6);
  EXPECT_THROW(dpo_loss(logp, pairs, {{0.0, 0.0}}, 0.5, w), Error);
}

// The DPO gradient through TrainModel's per-token weights equals finite differences of the DPO
// loss itself, on a tiny model with a chosen and a rejected response packed in one row.
TEST(Dpo, GradientMatchesFiniteDifferencesOfTheLoss) {
  const ModelConfig c = llama_config();
  ParamSet params;
  TrainModel::init_params(c, 5, 0.4, params);
  TrainModel train(c, params);
  // Row: chosen (prompt 3 positions ignored + 4 response) | rejected (3 + 3).
  const Segments segments = {7, 6};
  const std::vector<int32_t> in = random_ids(13, c.vocab_size, 21);
  std::vector<int32_t> tg = random_ids(13, c.vocab_size, 22);
  for (int i : {0, 1, 2, 7, 8, 9}) tg[size_t(i)] = ops::kIgnoreIndex;
  const std::vector<DpoPair> pairs = {{0, 7, 7, 13}};
  const std::vector<std::pair<double, double>> ref = {{-20.0, -17.0}};
  const double beta = 0.3;
  auto dpo_value = [&]() {
    const SequenceLosses l = train.forward(in, tg, LossOptions{}, segments);
    std::vector<float> w;
    return dpo_loss(l.token_logp, pairs, ref, beta, w).loss;
  };
  LossOptions o;
  double loss = 0;
  o.token_weights = [&](const std::vector<double>& logp) {
    std::vector<float> w;
    loss = dpo_loss(logp, pairs, ref, beta, w).loss;
    return w;
  };
  params.zero_grad();
  train.forward_backward(in, tg, o, 1.0f, segments);
  EXPECT_NEAR(loss, dpo_value(), 1e-9);
  // llama_config has no experts: one smooth piece.
  const dseek::testing::ParamGradReport r = dseek::testing::check_param_gradients(
      params,
      [&] {
        return dseek::testing::LossPoint{dpo_value(), {}};
      },
      {loss, {}}, 3, 3, 1.0, 1e-5);
  EXPECT_LT(r.worst, 2e-2) << r.where;
}

// LossOptions::token_logp off (the trainer's language-model steps) leaves
// SequenceLosses::token_logp empty and changes nothing else; on (the default) it holds log
// p(target) — the picked logit minus the row's log-sum-exp, 0 at an ignored target — and
// token_weights fill it whatever the option.
TEST(TrainPacking, TokenLogpOnlyWhenAsked) {
  const ModelConfig c = llama_config();
  ParamSet params;
  TrainModel::init_params(c, 6, 0.3, params);
  TrainModel model(c, params);
  const std::vector<int32_t> in = random_ids(12, c.vocab_size, 8);
  std::vector<int32_t> tg = random_ids(12, c.vocab_size, 9);
  tg[3] = ops::kIgnoreIndex;
  LossOptions on, off;
  off.token_logp = false;
  const SequenceLosses with = model.forward(in, tg, on, Segments{5, 7});
  const SequenceLosses without = model.forward(in, tg, off, Segments{5, 7});
  EXPECT_TRUE(without.token_logp.empty());
  EXPECT_EQ(without.total, with.total);
  EXPECT_EQ(without.main_ce, with.main_ce);
  ASSERT_EQ(with.token_logp.size(), in.size());
  EXPECT_EQ(with.token_logp[3], 0.0);
  // The mean of −log p over counted targets is the cross-entropy.
  double sum = 0;
  for (size_t t = 0; t < tg.size(); ++t) {
    if (tg[t] == ops::kIgnoreIndex) continue;
    EXPECT_LT(with.token_logp[t], 0.0) << "position " << t;
    sum -= with.token_logp[t];
  }
  EXPECT_NEAR(sum / double(with.main_tokens), with.main_ce, 1e-5);
  LossOptions weighted = off;
  std::vector<double> seen;
  weighted.token_weights = [&seen](const std::vector<double>& logp) {
    seen = logp;
    return std::vector<float>(logp.size(), 1.0f);
  };
  const SequenceLosses w = model.forward(in, tg, weighted, Segments{5, 7});
  EXPECT_EQ(seen, with.token_logp);
  EXPECT_EQ(w.token_logp, with.token_logp);
}
