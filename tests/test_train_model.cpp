// The training model (src/train): its forward must equal the inference model's (which matches
// transformers on the committed fixtures) on the same weights, and its backward must match finite
// differences of its own total loss, for every architecture: DeepSeek-V3 (MLA with q_lora,
// sigmoid noaux_tc gate with a non-zero correction bias, groups, shared experts, MTP, sequence-wise
// balance loss), DeepSeek-V2 (MLA without q_lora, YaRN, softmax group-limited gate), DeepSeekMoE
// (multi-head attention, softmax greedy gate, expert-level loss) and Llama (GQA, tied head).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "model/model.h"
#include "ops/cross_entropy.h"
#include "param_gradcheck.h"
#include "test_model_util.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;
using dseek::testing::add_moe;
using dseek::testing::add_v3_routing;
using dseek::testing::tiny_config;
using dseek::testing::TinyCheckpoint;

namespace {

ModelConfig v3_config() {
  ModelConfig c = tiny_config("deepseek_v3");
  add_moe(c);
  add_v3_routing(c);
  return c;
}

ModelConfig v2_config() {
  ModelConfig c = tiny_config("deepseek_v2");
  add_moe(c);
  c.q_lora_rank = 0;
  c.topk_method = "group_limited_greedy";
  c.n_group = 2;
  c.topk_group = 1;
  c.routed_scaling_factor = 1.5;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.707;
  return c;
}

ModelConfig deepseekmoe_config() {
  ModelConfig c = tiny_config("deepseek");
  add_moe(c);
  c.norm_topk_prob = true;
  return c;
}

ModelConfig llama_config() {
  ModelConfig c = tiny_config("llama");
  c.num_key_value_heads = 2;
  c.tie_word_embeddings = true;
  return c;
}

// A checkpoint the inference model and TrainModel::load_params both read: MTP modules use the main
// embedding and head (their own copies removed), noaux_tc gates get a random correction bias.
std::string write_checkpoint(const ModelConfig& c, const std::string& tag, uint32_t seed) {
  TinyCheckpoint ckpt(c, seed);
  std::mt19937 rng(seed + 100);
  std::uniform_real_distribution<float> bias(-0.3f, 0.3f);
  const int64_t layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    if (l >= c.num_hidden_layers) {
      ckpt.remove(p + ".embed_tokens.weight");
      ckpt.remove(p + ".shared_head.head.weight");
    }
    if (c.is_moe_layer(l) && c.topk_method == "noaux_tc") {
      std::vector<float> b(static_cast<size_t>(c.n_routed_experts));
      for (float& v : b) v = bias(rng);
      ckpt.weights().emplace_back(p + ".mlp.gate.e_score_correction_bias",
                                  Tensor::from_vector(b, {c.n_routed_experts}));
    }
  }
  return ckpt.write(tag);
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& v : ids) v = d(rng);
  return ids;
}

double ce_of(const Tensor& logits, const std::vector<int32_t>& targets) {
  return ops::cross_entropy_forward(logits, targets).loss;
}

struct Case {
  std::string name;
  ModelConfig config;
  LossOptions loss;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  Case v3{"v3", v3_config(), {}};
  v3.loss.mtp_lambda = 0.3;
  v3.loss.balance = {"sequence", 0.05, 1};
  out.push_back(v3);
  Case v2{"v2", v2_config(), {}};
  v2.loss.balance = {"device", 0.05, 2};
  out.push_back(v2);
  Case moe{"deepseekmoe", deepseekmoe_config(), {}};
  moe.loss.balance = {"expert", 0.05, 1};
  out.push_back(moe);
  out.push_back({"llama", llama_config(), {}});
  return out;
}

}  // namespace

TEST(TrainModel, ForwardMatchesInferenceModel) {
  for (const Case& tc : cases()) {
    SCOPED_TRACE(tc.name);
    const std::string dir = write_checkpoint(tc.config, "train_fwd_" + tc.name, 11);
    auto model = Model::load(dir);
    ParamSet params;
    TrainModel::load_params(tc.config, dir, params);
    TrainModel train(tc.config, params);

    const std::vector<int32_t> seq = random_ids(20, tc.config.vocab_size, 5);
    const std::vector<int32_t> inputs(seq.begin(), seq.end() - 1), targets(seq.begin() + 1, seq.end());
    LossOptions opts = tc.loss;
    const SequenceLosses l = train.forward(inputs, targets, opts);
    const double expect_main = ce_of(model->forward(inputs), targets);
    EXPECT_NEAR(l.main_ce, expect_main, 2e-5 * std::max(1.0, expect_main));
    EXPECT_EQ(l.main_tokens, int64_t(targets.size()));
    if (tc.config.num_nextn_predict_layers > 0) {
      ASSERT_EQ(l.mtp_ce.size(), 1u);
      const std::vector<int32_t> mtp_targets(targets.begin() + 1, targets.end());
      const double expect_mtp = ce_of(model->forward_mtp(inputs, 1), mtp_targets);
      EXPECT_NEAR(l.mtp_ce[0], expect_mtp, 2e-5 * std::max(1.0, expect_mtp));
      EXPECT_NEAR(l.total, l.main_ce + 0.3 * l.mtp_ce[0] + l.aux, 1e-9);
    }
    if (tc.config.n_routed_experts > 0) {
      EXPECT_GT(l.aux, 0.0);
      ASSERT_FALSE(l.expert_load.empty());
      int64_t routed = 0;
      for (int64_t n : l.expert_load[0]) routed += n;
      EXPECT_EQ(routed, int64_t(inputs.size()) * tc.config.num_experts_per_tok);
    }
    std::filesystem::remove_all(dir);
  }
}

// Central differences of the total loss (main CE + MTP + balance) for sampled elements of every
// parameter, against the accumulated gradients. The forward runs in f32, so weights are O(0.4)
// (large gradients) and eps is 1e-2; an element whose ±eps perturbation changes an expert choice
// (the loss is piecewise smooth) is skipped.
TEST(TrainModel, GradientsMatchFiniteDifferences) {
  for (const Case& tc : cases()) {
    SCOPED_TRACE(tc.name);
    const std::string dir = write_checkpoint(tc.config, "train_grad_" + tc.name, 3);
    ParamSet params;
    TrainModel::load_params(tc.config, dir, params);
    std::filesystem::remove_all(dir);
    TrainModel train(tc.config, params);
    const std::vector<int32_t> seq = random_ids(13, tc.config.vocab_size, 9);
    const std::vector<int32_t> inputs(seq.begin(), seq.end() - 1), targets(seq.begin() + 1, seq.end());
    const float scale = 0.75f;  // the gradient is of scale · loss
    params.zero_grad();
    const SequenceLosses base = train.forward_backward(inputs, targets, tc.loss, scale);
    ASSERT_TRUE(std::isfinite(base.total));

    auto loss = [&] {
      const SequenceLosses l = train.forward(inputs, targets, tc.loss);
      return dseek::testing::LossPoint{l.total, l.expert_load};
    };
    const dseek::testing::ParamGradReport r = dseek::testing::check_param_gradients(
        params, loss, {base.total, base.expert_load}, 4, 17, scale);
    EXPECT_LT(r.worst, 2e-2) << r.where;
    EXPECT_GT(r.checked, 3 * r.skipped) << "too many routing flips to check";
  }
}

// Gradients accumulate: two half-scaled passes equal one full pass.
TEST(TrainModel, GradientsAccumulate) {
  const ModelConfig c = v3_config();
  ParamSet params;
  TrainModel::init_params(c, 4, 0.2, params);
  TrainModel train(c, params);
  const std::vector<int32_t> seq = random_ids(10, c.vocab_size, 2);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  LossOptions o;
  o.mtp_lambda = 0.3;
  train.forward_backward(in, tg, o, 1.0f);
  std::vector<std::vector<float>> once;
  for (const Param& p : params.all())
    if (p.trainable) once.push_back(p.grad.to_vector());
  params.zero_grad();
  train.forward_backward(in, tg, o, 0.5f);
  train.forward_backward(in, tg, o, 0.5f);
  size_t k = 0;
  for (const Param& p : params.all()) {
    if (!p.trainable) continue;
    const std::vector<float> twice = p.grad.to_vector();
    for (size_t i = 0; i < twice.size(); ++i)
      ASSERT_NEAR(twice[i], once[k][i], 1e-5f * (1.0f + std::abs(once[k][i]))) << p.name;
    ++k;
  }
}

TEST(TrainModel, InitParamsLayout) {
  const ModelConfig c = v3_config();
  ParamSet params;
  TrainModel::init_params(c, 1, 0.02, params);
  // MTP shares the main embedding and head; the correction bias is a zero buffer.
  EXPECT_FALSE(params.has("model.layers.2.embed_tokens.weight"));
  EXPECT_FALSE(params.has("model.layers.2.shared_head.head.weight"));
  const Param& bias = params.at("model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_FALSE(bias.trainable);
  for (float b : bias.value.to_vector()) EXPECT_EQ(b, 0.0f);
  EXPECT_FALSE(params.at("model.norm.weight").decay);
  EXPECT_TRUE(params.at("model.layers.0.self_attn.kv_b_proj.weight").decay);
  TrainModel train(c, params);
  EXPECT_EQ(train.moe_layers(),
            (std::vector<std::string>{"model.layers.1.mlp", "model.layers.2.mlp"}));
}

TEST(TrainModel, RejectsBadInput) {
  const ModelConfig c = llama_config();
  ParamSet params;
  TrainModel::init_params(c, 1, 0.02, params);
  TrainModel train(c, params);
  LossOptions o;
  EXPECT_THROW(train.forward({1, 2, 500}, {2, 3, 4}, o), Error);  // id outside the vocabulary
  EXPECT_THROW(train.forward({1, 2}, {2}, o), Error);             // length mismatch
  ParamSet missing;
  EXPECT_THROW(TrainModel(c, missing), Error);
}

// A batch of sequences run together equals the sequences run one by one (losses, loads and
// gradients), including MTP (shifted per sequence) and the sequence-wise balance loss.
TEST(TrainModel, BatchEqualsSequences) {
  const ModelConfig c = v3_config();
  ParamSet batched, single;
  TrainModel::init_params(c, 6, 0.3, batched);
  TrainModel::init_params(c, 6, 0.3, single);
  TrainModel mb(c, batched), ms(c, single);
  LossOptions o;
  o.mtp_lambda = 0.3;
  o.balance = {"sequence", 0.05, 1};
  const int64_t B = 3, S = 9;
  const std::vector<int32_t> seq = random_ids(B * S + 1, c.vocab_size, 4);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  const SequenceLosses all = mb.forward_backward(in, tg, o, 1.0f, S);
  double ce = 0, mtp = 0, aux = 0;
  std::vector<int64_t> load(static_cast<size_t>(c.n_routed_experts), 0);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int32_t> i(in.begin() + b * S, in.begin() + (b + 1) * S),
        t(tg.begin() + b * S, tg.begin() + (b + 1) * S);
    const SequenceLosses one = ms.forward_backward(i, t, o, 1.0f / B);
    ce += one.main_ce / B;
    mtp += one.mtp_ce[0] / B;
    aux += one.aux / B;
    for (size_t e = 0; e < load.size(); ++e) load[e] += one.expert_load[0][e];
  }
  EXPECT_NEAR(all.main_ce, ce, 1e-5);
  EXPECT_NEAR(all.mtp_ce[0], mtp, 1e-5);
  EXPECT_NEAR(all.aux, aux, 1e-6);
  EXPECT_EQ(all.expert_load[0], load);
  for (const Param& p : batched.all()) {
    if (!p.trainable) continue;
    const std::vector<float> a = p.grad.to_vector(), b = single.grad(p.name).to_vector();
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_NEAR(a[i], b[i], 2e-5f * (1.0f + std::abs(b[i]))) << p.name << "[" << i << "]";
  }
}

// Mixed precision: with bf16 compute copies the losses and gradients stay close to f32 (the
// matmuls see bf16-rounded weights), the masters stay f32, routers keep no copy, and the copies
// follow the masters after refresh_compute().
TEST(TrainModel, Bf16ComputeKeepsF32Masters) {
  const ModelConfig c = v3_config();
  ParamSet f32, bf16;
  TrainModel::init_params(c, 8, 0.3, f32);
  TrainModel::init_params(c, 8, 0.3, bf16);
  bf16.set_compute_dtype(DType::BF16);
  const Param& kvb = bf16.at("model.layers.0.self_attn.kv_b_proj.weight");
  ASSERT_TRUE(kvb.compute.defined());
  EXPECT_EQ(kvb.compute.dtype(), DType::BF16);
  EXPECT_EQ(kvb.value.dtype(), DType::F32);
  EXPECT_FALSE(bf16.at("model.layers.1.mlp.gate.weight").compute.defined());
  EXPECT_FALSE(bf16.at("model.norm.weight").compute.defined());
  TrainModel m32(c, f32), m16(c, bf16);
  LossOptions o;
  o.mtp_lambda = 0.3;
  const std::vector<int32_t> seq = random_ids(17, c.vocab_size, 3);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  const SequenceLosses a = m32.forward_backward(in, tg, o, 1.0f);
  const SequenceLosses b = m16.forward_backward(in, tg, o, 1.0f);
  EXPECT_NE(a.main_ce, b.main_ce);  // the bf16 copies are really used
  EXPECT_NEAR(a.main_ce, b.main_ce, 0.02 * a.main_ce);
  double num = 0, den = 0;
  for (const Param& p : f32.all()) {
    if (!p.trainable) continue;
    const std::vector<float> x = p.grad.to_vector(), y = bf16.grad(p.name).to_vector();
    for (size_t i = 0; i < x.size(); ++i) {
      num += (x[i] - y[i]) * double(x[i] - y[i]);
      den += double(x[i]) * x[i];
    }
  }
  EXPECT_LT(std::sqrt(num / den), 0.05);  // relative gradient difference
  // After a change of the master, refresh_compute() re-rounds the copy.
  Param& w = bf16.at("model.layers.0.self_attn.kv_b_proj.weight");
  w.value.data<float>()[0] = 1.25f;
  bf16.refresh_compute();
  EXPECT_EQ(w.compute.to_vector()[0], 1.25f);
}

// An untied embedding keeps no bf16 copy (its lookup reads the master's rows, so a copy would only
// cost the optimizer a write a step): the losses and gradients are the same bits as with a copy
// forced onto it. A tied one keeps its copy, which the head multiplies.
TEST(TrainModel, Bf16ComputeLeavesAnUntiedEmbeddingWithoutACopy) {
  const ModelConfig c = v3_config();
  ASSERT_FALSE(c.tie_word_embeddings);
  ParamSet without, with;
  TrainModel::init_params(c, 8, 0.3, without);
  TrainModel::init_params(c, 8, 0.3, with);
  without.set_compute_dtype(DType::BF16);
  with.set_compute_dtype(DType::BF16);
  const std::string embed = "model.embed_tokens.weight";
  EXPECT_FALSE(without.at(embed).compute.defined());
  EXPECT_TRUE(without.at("lm_head.weight").compute.defined());
  with.at(embed).compute = with.at(embed).value.to(DType::BF16);
  TrainModel a(c, without), b(c, with);
  LossOptions o;
  o.mtp_lambda = 0.3;
  const std::vector<int32_t> seq = random_ids(17, c.vocab_size, 3);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  const SequenceLosses x = a.forward_backward(in, tg, o, 1.0f);
  const SequenceLosses y = b.forward_backward(in, tg, o, 1.0f);
  EXPECT_EQ(x.main_ce, y.main_ce);
  ASSERT_EQ(x.mtp_ce.size(), y.mtp_ce.size());
  for (size_t k = 0; k < x.mtp_ce.size(); ++k) EXPECT_EQ(x.mtp_ce[k], y.mtp_ce[k]);
  for (const Param& p : without.all()) {
    if (p.trainable) {
      EXPECT_EQ(p.grad.to_vector(), with.grad(p.name).to_vector()) << p.name;
    }
  }

  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  ParamSet t;
  TrainModel::init_params(tied, 8, 0.3, t);
  ASSERT_FALSE(t.has("lm_head.weight"));
  t.set_compute_dtype(DType::BF16);
  EXPECT_TRUE(t.at(embed).compute.defined());

  // A pipeline's first stage holds the embedding without the head: untied, it gets no copy
  // either (it did when the rule was "an lm_head beside it"); its layer's matrices do.
  ParamSet first;
  TrainModel::init_params(c, 8, 0.3, first, ModelPart{0, 1, true, false});
  ASSERT_TRUE(first.has(embed));
  ASSERT_FALSE(first.has("lm_head.weight"));
  first.set_compute_dtype(DType::BF16);
  EXPECT_FALSE(first.at(embed).compute.defined());
  EXPECT_TRUE(first.at("model.layers.0.self_attn.o_proj.weight").compute.defined());
}
