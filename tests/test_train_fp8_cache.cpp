// The FP8 activation cache of the training layers (layers.h's LinearInput, docs/FP8.md): the FP8
// projections' inputs are cached as the forward's E4M3 codes, not in the activation dtype. The
// training steps are bit-identical to the layers' earlier way (the inputs kept in the activation
// dtype and quantised again in the backward, ParamSet::set_fp8_input_cache(false)).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "test_model_util.h"
#include "train/optimizer.h"
#include "train/train_model.h"

using namespace dseek;
using namespace dseek::train;

namespace {

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& v : ids) v = d(rng);
  return ids;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Small MoE models whose widths cross the 128-wide tiles (partial tiles; the routed experts get
// more than 128 rows, so the wgrad's column tiles do too): V3-style MLA with q_lora, noaux_tc,
// MTP; MLA without q_lora (V2-Lite's q_proj); multi-head attention with a softmax gate.
std::vector<ModelConfig> moe_configs() {
  std::vector<ModelConfig> out;
  for (const char* type : {"deepseek_v3", "deepseek_v2", "deepseek"}) {
    ModelConfig c = dseek::testing::tiny_config(type);
    dseek::testing::add_moe(c);
    c.hidden_size = 136;
    c.intermediate_size = 200;
    c.moe_intermediate_size = 144;
    c.max_position_embeddings = 256;
    if (c.model_type == "deepseek_v3") {
      c.scoring_func = "sigmoid";
      c.topk_method = "noaux_tc";
      c.n_group = 2;
      c.topk_group = 1;
      c.norm_topk_prob = true;
      c.routed_scaling_factor = 2.5;
      c.num_nextn_predict_layers = 1;
    } else if (c.model_type == "deepseek_v2") {
      c.q_lora_rank = 0;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

// Three AdamW steps of FP8 training with the FP8 input caches against the same steps quantising
// the inputs again in the backward: losses, every gradient and the updated weights equal bit for
// bit. (A cache holding another tensor's codes, or codes of x after it changed, breaks this; the
// f32 run differing shows FP8 is really on.)
TEST(TrainFp8Cache, StepsBitIdenticalToQuantisingTheInputsAgain) {
  for (const ModelConfig& c : moe_configs()) {
    SCOPED_TRACE(c.model_type);
    ParamSet cached, again, f32;
    for (ParamSet* p : {&cached, &again, &f32}) TrainModel::init_params(c, 8, 0.05, *p);
    mark_fp8_linears(cached);
    mark_fp8_linears(again);
    again.set_fp8_input_cache(false);
    TrainModel m_cached(c, cached), m_again(c, again), m_f32(c, f32);
    AdamW opt_cached(cached, AdamWConfig{}), opt_again(again, AdamWConfig{});
    LossOptions o;
    o.mtp_lambda = c.num_nextn_predict_layers > 0 ? 0.3 : 0.0;
    o.balance = {"sequence", 0.05, 1};
    std::mt19937 rng(5);
    for (int step = 0; step < 3; ++step) {
      const std::vector<int32_t> seq = random_ids(301, c.vocab_size, rng);
      const std::vector<int32_t> in(seq.begin(), seq.end() - 1), tg(seq.begin() + 1, seq.end());
      cached.zero_grad();
      again.zero_grad();
      const SequenceLosses a = m_cached.forward_backward(in, tg, o, 1.0f, 150);
      const SequenceLosses b = m_again.forward_backward(in, tg, o, 1.0f, 150);
      EXPECT_EQ(a.total, b.total) << "step " << step;
      EXPECT_EQ(a.main_ce, b.main_ce) << "step " << step;
      EXPECT_EQ(a.aux, b.aux) << "step " << step;
      EXPECT_GT(a.aux, 0.0);
      if (step == 0) {
        EXPECT_NE(a.main_ce, m_f32.forward(in, tg, o, 150).main_ce);
      }
      int64_t grads = 0;
      for (const Param& p : cached.all()) {
        if (!p.grad.defined()) continue;
        EXPECT_TRUE(same_bits(p.grad, again.grad(p.name))) << p.name << ", step " << step;
        grads += p.fp8;
      }
      EXPECT_GT(grads, 0);
      opt_cached.step(1e-3);
      opt_again.step(1e-3);
    }
    for (const Param& p : cached.all())
      EXPECT_TRUE(same_bits(p.value, again.value(p.name))) << p.name;
  }
}
