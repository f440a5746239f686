// FP8 training in the training model (train.precision fp8): which parameters run FP8 GEMMs (the
// attention and MLP/expert projections, not the embedding, head, routers, eh_proj or norms), and a
// DeepSeek-V3-shaped model's loss and gradients in FP8 against f32 on the same weights and tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_model_util.h"
#include "train/train_config.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;

namespace {

ModelConfig v3_config() {
  ModelConfig c = dseek::testing::tiny_config("deepseek_v3");
  dseek::testing::add_moe(c);
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& v : ids) v = d(rng);
  return ids;
}

}  // namespace

TEST(TrainFp8, MarksTheProjectionsOnly) {
  const ModelConfig c = v3_config();
  ParamSet params;
  TrainModel::init_params(c, 8, 0.3, params);
  const int64_t marked = mark_fp8_linears(params);
  std::set<std::string> fp8;
  for (const Param& p : params.all())
    if (p.fp8) fp8.insert(p.name);
  EXPECT_EQ(int64_t(fp8.size()), marked);
  for (const char* name : {"model.layers.0.self_attn.q_a_proj.weight",
                           "model.layers.0.self_attn.q_b_proj.weight",
                           "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                           "model.layers.0.self_attn.kv_b_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight",  // the dense MLP
                           "model.layers.0.mlp.down_proj.weight",
                           "model.layers.1.mlp.experts.3.up_proj.weight",
                           "model.layers.1.mlp.shared_experts.down_proj.weight",
                           "model.layers.2.self_attn.o_proj.weight"})  // the MTP block
    EXPECT_EQ(fp8.count(name), 1u) << name;
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight",
                           "model.layers.1.mlp.gate.weight", "model.layers.2.eh_proj.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.kv_a_layernorm.weight", "model.norm.weight"})
    EXPECT_EQ(fp8.count(name), 0u) << name;
  // Per attention: q_a, q_b, kv_a, kv_b, o (5); dense MLP 3; MoE: 4 experts + shared, 3 each.
  EXPECT_EQ(marked, 3 * 5 + 3 + 2 * 5 * 3);
}

// Same weights and tokens: the FP8 model's loss is within 2% of f32 (yet not equal: FP8 is really
// used) and its gradients within 10% relative RMS — E4M3's 2^-4 relative rounding per operand,
// averaged over the sums of the GEMMs. Masters stay f32 and untouched.
TEST(TrainFp8, LossAndGradientsCloseToF32) {
  const ModelConfig c = v3_config();
  ParamSet f32, fp8;
  TrainModel::init_params(c, 8, 0.3, f32);
  TrainModel::init_params(c, 8, 0.3, fp8);
  mark_fp8_linears(fp8);
  TrainModel m32(c, f32), m8(c, fp8);
  LossOptions o;
  o.mtp_lambda = 0.3;
  o.balance = {"sequence", 0.05, 1};
  const std::vector<int32_t> seq = random_ids(33, c.vocab_size, 5);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  const SequenceLosses a = m32.forward_backward(in, tg, o, 1.0f);
  const SequenceLosses b = m8.forward_backward(in, tg, o, 1.0f);
  EXPECT_NE(a.main_ce, b.main_ce);
  EXPECT_NEAR(a.main_ce, b.main_ce, 0.02 * a.main_ce);
  double num = 0, den = 0;
  for (const Param& p : f32.all()) {
    if (!p.trainable) continue;
    EXPECT_EQ(fp8.at(p.name).value.dtype(), DType::F32);
    const std::vector<float> x = p.grad.to_vector(), y = fp8.grad(p.name).to_vector();
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y[i])) << p.name;
      num += (x[i] - y[i]) * double(x[i] - y[i]);
      den += double(x[i]) * x[i];
    }
  }
  const double rel = std::sqrt(num / den);
  std::printf("fp8 vs f32: main CE %.5f vs %.5f, relative gradient RMS difference %.4f\n",
              b.main_ce, a.main_ce, rel);
  EXPECT_GT(rel, 0.0);
  EXPECT_LT(rel, 0.1);
}

TEST(TrainFp8, ConfigAcceptsDefaultAndFp8Only) {
  TrainConfig c;
  EXPECT_EQ(c.precision, "default");
  apply_train_config_override("train.precision=fp8", c);
  EXPECT_EQ(c.precision, "fp8");
  c.precision = "fp4";
  c.data = "x";
  try {
    validate_train_config(c);
    FAIL() << "fp4 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.precision: 'fp4'"), std::string::npos) << e.what();
  }
}
