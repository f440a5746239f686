#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "model/config.h"
#include "model/init_weights.h"
#include "model/safetensors.h"

using namespace dseek;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_v3() {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.vocab_size = 97;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.moe_intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 16;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.n_routed_experts = 4;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
  c.max_position_embeddings = 64;
  c.eos_token_ids = {1};
  return c;
}

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("dseek_test_init_" + name);
  fs::remove_all(dir);
  return dir;
}

}  // namespace

TEST(InitWeights, LayoutNamesEveryHfTensorOfAV3Model) {
  const ModelConfig c = tiny_v3();
  std::map<std::string, Shape> layout;
  for (const WeightSpec& spec : checkpoint_layout(c)) {
    EXPECT_TRUE(layout.emplace(spec.name, spec.shape).second) << "duplicate " << spec.name;
  }
  EXPECT_EQ(layout.at("model.embed_tokens.weight"), (Shape{97, 24}));
  EXPECT_EQ(layout.at("lm_head.weight"), (Shape{97, 24}));
  // Layer 0 is dense, with MLA attention through q_lora.
  EXPECT_EQ(layout.at("model.layers.0.self_attn.q_a_proj.weight"), (Shape{16, 24}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.q_b_proj.weight"), (Shape{2 * 12, 16}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.kv_a_proj_with_mqa.weight"), (Shape{8 + 4, 24}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.kv_b_proj.weight"), (Shape{2 * (8 + 6), 8}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.o_proj.weight"), (Shape{24, 2 * 6}));
  EXPECT_EQ(layout.at("model.layers.0.mlp.down_proj.weight"), (Shape{24, 40}));
  EXPECT_EQ(layout.count("model.layers.0.self_attn.q_proj.weight"), 0u);
  // Layers 1, 2 are MoE: gate with the noaux_tc bias, 4 experts, a shared MLP of 2 × 12.
  EXPECT_EQ(layout.at("model.layers.2.mlp.gate.weight"), (Shape{4, 24}));
  EXPECT_EQ(layout.at("model.layers.2.mlp.gate.e_score_correction_bias"), (Shape{4}));
  EXPECT_EQ(layout.at("model.layers.2.mlp.experts.3.up_proj.weight"), (Shape{12, 24}));
  EXPECT_EQ(layout.at("model.layers.2.mlp.shared_experts.down_proj.weight"), (Shape{24, 24}));
  EXPECT_EQ(layout.count("model.layers.2.mlp.experts.4.up_proj.weight"), 0u);
  // The MTP layer (index 3): its own embedding, projections, a full MoE block and head.
  EXPECT_EQ(layout.at("model.layers.3.eh_proj.weight"), (Shape{24, 48}));
  EXPECT_EQ(layout.at("model.layers.3.embed_tokens.weight"), (Shape{97, 24}));
  EXPECT_EQ(layout.at("model.layers.3.shared_head.head.weight"), (Shape{97, 24}));
  EXPECT_EQ(layout.at("model.layers.3.enorm.weight"), (Shape{24}));
  EXPECT_EQ(layout.at("model.layers.3.mlp.experts.0.gate_proj.weight"), (Shape{12, 24}));
  // per layer: 2 norms + 7 attention; dense MLP 3; MoE 1 + 1 + 4 * 3 + 3; MTP extras 6; embed,
  // norm, head.
  EXPECT_EQ(layout.size(), size_t(3 + 9 * 4 + 3 + 17 * 3 + 6));
}

TEST(InitWeights, LayoutOfMhaModelsAndTiedEmbeddings) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.intermediate_size = 20;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.tie_word_embeddings = true;
  c.attention_bias = true;
  std::map<std::string, Shape> layout;
  for (const WeightSpec& spec : checkpoint_layout(c)) layout.emplace(spec.name, spec.shape);
  EXPECT_EQ(layout.count("lm_head.weight"), 0u);
  EXPECT_EQ(layout.at("model.layers.0.self_attn.q_proj.weight"), (Shape{16, 16}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.k_proj.weight"), (Shape{8, 16}));
  EXPECT_EQ(layout.at("model.layers.0.self_attn.v_proj.bias"), (Shape{8}));
  EXPECT_EQ(layout.at("model.layers.0.mlp.gate_proj.weight"), (Shape{20, 16}));
}

TEST(InitWeights, ShardedCheckpointRoundTripsThroughWeightStore) {
  const ModelConfig c = tiny_v3();
  const fs::path dir = temp_dir("sharded");
  InitOptions options;
  options.dtype = DType::BF16;
  options.seed = 11;
  options.shard_bytes = 8 << 10;  // forces several shards
  write_random_checkpoint(c, dir.string(), options);
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(dir / "model-00001-of-00004.safetensors") ||
              fs::exists(dir / "model-00001-of-00005.safetensors") ||
              !fs::exists(dir / "model.safetensors"));
  const ModelConfig loaded = load_model_config(dir.string());
  EXPECT_EQ(loaded.model_type, "deepseek_v3");
  EXPECT_EQ(loaded.torch_dtype, "bfloat16");
  EXPECT_EQ(loaded.num_nextn_predict_layers, 1);

  WeightStore store = WeightStore::open(dir.string());
  EXPECT_GT(store.files().size(), 2u);
  const std::vector<WeightSpec> layout = checkpoint_layout(c);
  EXPECT_EQ(store.names().size(), layout.size());
  for (const WeightSpec& spec : layout) {
    const Tensor stored = store.get(spec.name, spec.shape);
    EXPECT_EQ(stored.dtype(), DType::BF16);
    EXPECT_EQ(stored.to_vector(), init_tensor(spec, options).to_vector()) << spec.name;
  }
  // Values: norms are 1, linears have about the requested spread and are not all equal.
  EXPECT_EQ(store.get("model.norm.weight").to_vector(), std::vector<float>(24, 1.0f));
  const std::vector<float> emb = store.get("model.embed_tokens.weight").to_vector();
  double sum_sq = 0.0;
  for (float x : emb) sum_sq += double(x) * x;
  EXPECT_NEAR(std::sqrt(sum_sq / double(emb.size())), 0.02, 0.002);
  fs::remove_all(dir);
}

TEST(InitWeights, SeedAndDtypeDecideTheValues) {
  const WeightSpec spec{"model.layers.0.mlp.up_proj.weight", {40, 24}, WeightSpec::Init::Normal};
  InitOptions a;
  a.dtype = DType::F32;
  a.seed = 1;
  InitOptions b = a;
  b.seed = 2;
  const std::vector<float> va = init_tensor(spec, a).to_vector();
  EXPECT_EQ(va, init_tensor(spec, a).to_vector());
  EXPECT_NE(va, init_tensor(spec, b).to_vector());
  const WeightSpec other{"model.layers.1.mlp.up_proj.weight", {40, 24}, WeightSpec::Init::Normal};
  EXPECT_NE(va, init_tensor(other, a).to_vector());

  const fs::path dir = temp_dir("f32");
  ModelConfig c = tiny_v3();
  c.num_nextn_predict_layers = 0;
  write_random_checkpoint(c, dir.string(), a);
  ASSERT_TRUE(fs::exists(dir / "model.safetensors"));
  WeightStore store = WeightStore::open(dir.string());
  const Tensor stored = store.get(spec.name);
  EXPECT_EQ(stored.dtype(), DType::F32);
  EXPECT_EQ(stored.to_vector(), va);
  fs::remove_all(dir);
}

TEST(InitWeights, RejectsBadOptionsAndConfigs) {
  const fs::path dir = temp_dir("bad");
  InitOptions options;
  options.dtype = DType::F16;
  EXPECT_THROW(write_random_checkpoint(tiny_v3(), dir.string(), options), Error);
  options.dtype = DType::BF16;
  ModelConfig c = tiny_v3();
  c.hidden_size = 0;
  EXPECT_THROW(write_random_checkpoint(c, dir.string(), options), Error);
  options.tokenizer = (dir / "missing.json").string();
  EXPECT_THROW(write_random_checkpoint(tiny_v3(), dir.string(), options), Error);
  fs::remove_all(dir);
}
