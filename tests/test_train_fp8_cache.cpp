// The FP8 activation cache of the training layers (layers.h's LinearInput, docs/FP8.md): the FP8
// projections' inputs are cached as the forward's E4M3 codes, not in the activation dtype. The
// training steps are bit-identical to the layers' earlier way (the inputs kept in the activation
// dtype and quantised again in the backward, ParamSet::set_fp8_input_cache(false)), and the block
// caches shrink by exactly the bytes the moved tensors save.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/rope.h"
#include "ops/fp8_train.h"
#include "test_model_util.h"
#include "train/cache_bytes.h"
#include "train/layers.h"
#include "train/optimizer.h"
#include "train/train_config.h"
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
      dseek::testing::add_v3_routing(c);
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

// A weight cache scope held over two micro-batches (as the trainer holds one over a step's
// train.grad_accum passes): the second pass quantises no weight — the dense projections' blocks
// and, on the GPU's MoE path (here on CPU tensors, LayerContext::moe_ops_on_cpu), the routed
// experts' — and the accumulated gradients are bit for bit those of two passes that each quantise
// their own.
TEST(TrainFp8Cache, WeightsQuantisedOnceOverMicroBatches) {
  for (const ModelConfig& c : moe_configs()) {
    SCOPED_TRACE(c.model_type);
    ParamSet once, each;
    for (ParamSet* p : {&once, &each}) {
      TrainModel::init_params(c, 9, 0.05, *p);
      mark_fp8_linears(*p);
      p->zero_grad();
    }
    TrainModel m_once(c, once), m_each(c, each);
    LossOptions o;
    o.mtp_lambda = c.num_nextn_predict_layers > 0 ? 0.3 : 0.0;
    std::mt19937 rng(6);
    std::vector<std::vector<int32_t>> in, tg;
    for (int m = 0; m < 2; ++m) {
      const std::vector<int32_t> seq = random_ids(201, c.vocab_size, rng);
      in.emplace_back(seq.begin(), seq.end() - 1);
      tg.emplace_back(seq.begin() + 1, seq.end());
    }
    {
      ops::Fp8WeightCacheScope step;
      m_once.forward_backward(in[0], tg[0], o, 0.5f, 100);
      const int64_t first = step.quantised();
      EXPECT_GT(first, 0);
      m_once.forward_backward(in[1], tg[1], o, 0.5f, 100);
      EXPECT_EQ(step.quantised(), first) << "the second micro-batch quantised weights again";
    }
    for (int m = 0; m < 2; ++m) m_each.forward_backward(in[size_t(m)], tg[size_t(m)], o, 0.5f, 100);
    for (const Param& p : once.all()) {
      if (p.grad.defined()) {
        EXPECT_TRUE(same_bits(p.grad, each.grad(p.name))) << p.name;
      }
    }

    // The routed experts on the ops path: quantize_fp8_expert_weights once for both passes.
    const std::string prefix = "model.layers.1.mlp";
    if (!c.is_moe_layer(1)) continue;
    const RopeParams rope = rope_params(c);
    LayerContext ctx{c, rope, once};
    ctx.moe_ops_on_cpu = true;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> xv(size_t(40 * c.hidden_size));
    for (float& v : xv) v = normal(rng);
    const Tensor x = Tensor::from_vector(xv, {40, c.hidden_size});
    ops::Fp8WeightCacheScope step;
    MoeCache cache;
    moe_forward(ctx, prefix, x, {40}, BalanceOptions{}, cache);
    const int64_t first = step.quantised();
    EXPECT_GE(first, 3);  // gate, up and down of the experts (and the shared experts' matrices)
    MoeCache again;
    moe_forward(ctx, prefix, x, {40}, BalanceOptions{}, again);
    EXPECT_EQ(step.quantised(), first);
    EXPECT_TRUE(same_bits(cache.gate_q.data, again.gate_q.data));
    EXPECT_EQ(cache.gate_q.data.raw(), again.gate_q.data.raw()) << "not the kept blocks";
  }
}

// Bytes counted once per memory: aliases and views of one tensor add nothing, FP8 codes add their
// codes and scales.
TEST(TrainFp8Cache, CacheBytesCountSharedMemoryOnce) {
  const Tensor x = Tensor::from_vector(std::vector<float>(6 * 200, 0.5f), {6, 200});
  BlockCache b;
  b.x = x;
  b.h = x.slice(0, 2, 4);
  b.mlp.x.x = x.reshape({1200});
  EXPECT_EQ(cache_bytes(b), int64_t(x.nbytes()));
  b.mlp.inner.fp8 = ops::fp8_linear_cache(x);  // 1 byte a value, an f32 scale per 1×128 tile
  EXPECT_EQ(cache_bytes(b), int64_t(x.nbytes()) + 6 * 200 + 6 * 2 * 4);
  b.mlp.gate = Tensor::from_vector(std::vector<float>(3, 1.0f), {3});
  EXPECT_EQ(cache_bytes(b), int64_t(x.nbytes()) + 6 * 200 + 6 * 2 * 4 + 12);
}

// The memory the block caches hold after the forward of one batch of the `tiny` preset (the model
// of docs/FP8.md's evidence runs: DeepSeek-V3-style, D = 128, 4 layers, 1 dense; 8 routed experts,
// top-2, 1 shared; batch 8 × 128 tokens), f32 against FP8 on the CPU.
//
// What moves to FP8 (DeepSeek-V3 §3.3.3: the linears' inputs cached in FP8) — the inputs that
// only FP8 projections read, each [rows, cols] f32 (4 bytes a value) becoming E4M3 codes (1 byte)
// and an f32 scale per 1×128 tile (4·⌈cols/128⌉ bytes a row), i.e. ~3.9× smaller:
//   attention: x (q_a_proj, kv_a_proj_with_mqa) [T, D], q_a_layernorm's output [T, q_lora],
//              kv_a_layernorm's output c_kv [T, kv_lora], the attention output [T, H·v_head]
//   dense MLP: x [T, D], silu(gate) ⊙ up [T, I]
//   MoE:       the routed experts' inputs [T·K, D] and silu(gate) ⊙ up [T·K, I_moe]; the shared
//              experts' silu(gate) ⊙ up [T, I_moe·shared]
// What stays: the norms' inputs (block x and h, q_a, kv_a), the attention core's q, k, v, SwiGLU's
// gate and up, the MoE input (the f32 router's, which the shared experts read as it is), the
// experts' outputs and the routing. The FP8 cache must be smaller by exactly the sum of the moved
// tensors' savings; quantising the inputs again (set_fp8_input_cache(false)) holds what f32 holds.
TEST(TrainFp8Cache, BlockCachesShrinkByTheMovedInputs) {
  const ModelConfig c = preset_model_config("tiny", 2048);
  const int64_t B = 8, S = 128, T = B * S, D = c.hidden_size, K = c.num_experts_per_tok;
  std::mt19937 rng(3);
  const std::vector<int32_t> ids = random_ids(T, c.vocab_size, rng);
  LossOptions o;
  o.balance = {"sequence", 1e-4, 1};
  auto bytes = [&](bool fp8, bool input_cache) {
    ParamSet params;
    TrainModel::init_params(c, 0, 0.02, params);
    if (fp8) mark_fp8_linears(params);
    params.set_fp8_input_cache(input_cache);
    TrainModel m(c, params);
    std::vector<BlockCache> blocks;
    m.blocks_forward(0, c.num_hidden_layers, m.embed_forward(ids), equal_segments(T, S), o, blocks);
    return cache_bytes(blocks);
  };
  const int64_t f32 = bytes(false, true), fp8 = bytes(true, true), again = bytes(true, false);

  // The moved tensors' bytes in f32 and as codes and scales.
  int64_t moved_f32 = 0, moved_fp8 = 0;
  auto moved = [&](int64_t rows, int64_t cols) {
    moved_f32 += rows * cols * 4;
    moved_fp8 += rows * cols + rows * ((cols + 127) / 128) * 4;
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    moved(T, D);
    moved(T, c.q_lora_rank);
    moved(T, c.kv_lora_rank);
    moved(T, c.num_attention_heads * c.v_head_dim);
    if (c.is_moe_layer(l)) {
      moved(T * K, D);
      moved(T * K, c.moe_intermediate_size);
      moved(T, c.moe_intermediate_size * c.n_shared_experts);
    } else {
      moved(T, D);
      moved(T, c.intermediate_size);
    }
  }
  std::printf(
      "tiny preset, %lld tokens: block caches f32 %lld bytes, FP8 %lld (%.3f of f32; "
      "%lld saved, %.1f%%), FP8 quantising again %lld; the moved tensors %lld bytes in f32 "
      "(%.1f%% of it), %lld as FP8 codes and scales (%.2fx smaller)\n",
      (long long)T, (long long)f32, (long long)fp8, double(fp8) / double(f32),
      (long long)(f32 - fp8), 100.0 * double(f32 - fp8) / double(f32), (long long)again,
      (long long)moved_f32, 100.0 * double(moved_f32) / double(f32), (long long)moved_fp8,
      double(moved_f32) / double(moved_fp8));
  EXPECT_EQ(again, f32);
  EXPECT_EQ(f32 - fp8, moved_f32 - moved_fp8);
}
