// FP8 training in the training model (train.precision fp8): which parameters run FP8 GEMMs (the
// attention and MLP/expert projections, not the embedding, head, routers, eh_proj or norms), and a
// DeepSeek-V3-shaped model's loss and gradients in FP8 against f32 on the same weights and tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
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
  dseek::testing::add_v3_routing(c);
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

// FP8 linears quantise their f32 masters, so under bf16 compute they hold no bf16 copy (the
// optimizer would write it every step for nothing), before or after a refresh; the other
// matrices keep theirs.
TEST(TrainFp8, MarkedProjectionsDropTheirComputeCopies) {
  const ModelConfig c = v3_config();
  ParamSet params;
  TrainModel::init_params(c, 8, 0.3, params);
  params.set_compute_dtype(DType::BF16);
  const Param& o_proj = params.at("model.layers.0.self_attn.o_proj.weight");
  const Param& head = params.at("lm_head.weight");
  ASSERT_TRUE(o_proj.compute.defined());
  mark_fp8_linears(params);
  for (int refresh = 0; refresh < 2; ++refresh) {
    for (const Param& p : params.all()) {
      if (p.fp8) {
        EXPECT_FALSE(p.compute.defined()) << p.name << " refresh " << refresh;
      }
    }
    EXPECT_EQ(&o_proj.weight(), &o_proj.value);
    ASSERT_TRUE(head.compute.defined());
    EXPECT_EQ(head.compute.dtype(), DType::BF16);
    params.refresh_compute();
  }
}

// Relative RMS difference of every trainable gradient of `other` from `base`.
double grad_difference(const ParamSet& base, const ParamSet& other) {
  double num = 0, den = 0;
  for (const Param& p : base.all()) {
    if (!p.trainable) continue;
    const std::vector<float> x = p.grad.to_vector(), y = other.grad(p.name).to_vector();
    for (size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(y[i])) return INFINITY;
      num += (x[i] - y[i]) * double(x[i] - y[i]);
      den += double(x[i]) * x[i];
    }
  }
  return std::sqrt(num / den);
}

// Same weights and tokens in f32, bf16 (compute copies) and FP8. A perturbation of relative size ε
// in every GEMM operand moves this small model's loss and gradients about in proportion to ε
// (routing and attention make it sensitive: at init std 0.3 bf16 already moves the gradients by a
// few percent). E4M3's unit roundoff is 2^-4 against bf16's 2^-8, so the FP8 deviation must stay
// within 16× bf16's (24× allowed for the scales' rounding and the wgrad's double quantisation) —
// far below what a misplaced tile or transposed operand does (the gradients become unrelated:
// relative difference ≈ 1 or more). At a realistic init (std 0.02) FP8 stays within 5% of f32.
// Masters stay f32.
TEST(TrainFp8, LossAndGradientsTrackF32LikeBf16ScaledByTheirPrecision) {
  const ModelConfig c = v3_config();
  LossOptions o;
  o.mtp_lambda = 0.3;
  o.balance = {"sequence", 0.05, 1};
  const std::vector<int32_t> seq = random_ids(33, c.vocab_size, 5);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
  for (double init_std : {0.3, 0.02}) {
    ParamSet f32, bf16, fp8;
    TrainModel::init_params(c, 8, init_std, f32);
    TrainModel::init_params(c, 8, init_std, bf16);
    TrainModel::init_params(c, 8, init_std, fp8);
    bf16.set_compute_dtype(DType::BF16);
    mark_fp8_linears(fp8);
    TrainModel m32(c, f32), m16(c, bf16), m8(c, fp8);
    const double ce32 = m32.forward_backward(in, tg, o, 1.0f).main_ce;
    const double ce16 = m16.forward_backward(in, tg, o, 1.0f).main_ce;
    const double ce8 = m8.forward_backward(in, tg, o, 1.0f).main_ce;
    for (const Param& p : fp8.all()) EXPECT_EQ(p.value.dtype(), DType::F32) << p.name;
    const double g16 = grad_difference(f32, bf16), g8 = grad_difference(f32, fp8);
    const double l16 = std::abs(ce16 - ce32), l8 = std::abs(ce8 - ce32);
    std::printf("init std %.2f: main CE f32 %.5f bf16 %.5f fp8 %.5f; relative gradient "
                "difference bf16 %.4f fp8 %.4f (ratio %.1f)\n",
                init_std, ce32, ce16, ce8, g16, g8, g8 / g16);
    EXPECT_GT(l8, 0.0);  // FP8 is really used
    EXPECT_GT(g8, 0.0);
    EXPECT_LT(l8, 24 * l16 + 1e-4 * ce32) << init_std;
    EXPECT_LT(g8, 24 * g16) << init_std;
    if (init_std < 0.1) {
      EXPECT_LT(l8, 0.01 * ce32);
      EXPECT_LT(g8, 0.05);
    }
  }
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
