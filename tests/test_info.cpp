// Parameter and KV-cache accounting, and the `dseek info` command.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "cli_util.h"
#include "core/error.h"
#include "model/config.h"
#include "model/param_count.h"
#include "model/safetensors.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(DSEEK_SOURCE_DIR) / "tests/fixtures/models";

// The published DeepSeek-V3 config (hub config.json, the fields that size the model).
ModelConfig v3_config() {
  return parse_model_config(R"({"model_type": "deepseek_v3", "vocab_size": 129280,
      "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
      "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128,
      "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
      "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
      "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
      "num_experts_per_tok": 8, "first_k_dense_replace": 3, "scoring_func": "sigmoid"})",
                            "v3");
}

ModelConfig v2_lite_config() {
  return parse_model_config(R"({"model_type": "deepseek_v2", "vocab_size": 102400,
      "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
      "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
      "n_shared_experts": 2, "n_routed_experts": 64, "kv_lora_rank": 512, "q_lora_rank": null,
      "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "greedy",
      "num_experts_per_tok": 6, "first_k_dense_replace": 1})",
                            "v2-lite");
}

// Writes config.json and a checkpoint with every tensor of the config, random values, plus an FP8
// scale tensor that must not count as a parameter.
void write_checkpoint(const fs::path& dir, const ModelConfig& c) {
  std::ofstream(dir / "config.json") << model_config_to_json(c);
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (const auto& [name, shape] : checkpoint_tensor_shapes(c)) {
    Tensor t = Tensor::empty(shape, DType::BF16);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<uint16_t>()[i] = f32_to_bf16(dist(rng));
    tensors.emplace_back(name, t);
  }
  tensors.emplace_back("model.layers.0.mlp.down_proj.weight_scale_inv",
                       Tensor::from_vector({0.5f, 2.0f}, {1, 2}));
  save_safetensors((dir / "model.safetensors").string(), tensors);
}

}  // namespace

TEST(ParamCount, DeepSeekV3MatchesPublishedFigures) {
  ModelConfig c = v3_config();
  ParamCount p = count_params(c);
  // 671B main model; the hub checkpoint's 685B adds the MTP module (~14B with its own
  // embedding and head copies); 37B activated per token.
  EXPECT_NEAR(double(p.total - p.mtp), 671e9, 0.5e9);
  EXPECT_NEAR(double(p.total), 685e9, 1e9);
  EXPECT_NEAR(double(p.mtp), 14e9, 0.6e9);  // 13.46B: "14B" is 685B - 671B of rounded figures
  EXPECT_NEAR(double(p.active), 37e9, 0.5e9);
  std::printf("DeepSeek-V3: %lld total, %lld MTP, %lld active\n", (long long)p.total,
              (long long)p.mtp, (long long)p.active);
  // Latent cache: (512 + 64) values × 61 layers.
  EXPECT_EQ(kv_cache_bytes_per_token(c, DType::BF16), 576 * 61 * 2);
  EXPECT_EQ(kv_cache_bytes_per_token(c, DType::F32), 576 * 61 * 4);
}

TEST(ParamCount, DeepSeekV2LiteMatchesPublishedFigures) {
  ModelConfig c = v2_lite_config();
  ParamCount p = count_params(c);
  EXPECT_NEAR(double(p.total), 15.7e9, 0.05e9);
  EXPECT_EQ(p.mtp, 0);
  EXPECT_NEAR(double(p.active), 2.4e9, 0.06e9);  // 2.45B, published as 2.4B
  EXPECT_EQ(kv_cache_bytes_per_token(c, DType::BF16), 576 * 27 * 2);
}

TEST(ParamCount, DenseMhaCountsByHand) {
  // DeepSeek LLM 7B: 30 layers, hidden 4096, MLP 11008, vocab 102400, MHA.
  ModelConfig c = parse_model_config(R"({"model_type": "llama", "vocab_size": 102400,
      "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30,
      "num_attention_heads": 32, "num_key_value_heads": 32})",
                                     "7b");
  const int64_t D = 4096, I = 11008, V = 102400, L = 30;
  const int64_t per_layer = 4 * D * D + 3 * D * I + 2 * D;
  ParamCount p = count_params(c);
  EXPECT_EQ(p.total, 2 * V * D + L * per_layer + D);
  EXPECT_EQ(p.active, p.total - V * D);  // the embedding lookup is not counted
  EXPECT_EQ(kv_cache_bytes_per_token(c, DType::BF16), 2 * 32 * 128 * 30 * 2);
  // Grouped-query attention shrinks the cache by the group factor.
  c.num_key_value_heads = 8;
  EXPECT_EQ(kv_cache_bytes_per_token(c, DType::F32), 2 * 8 * 128 * 30 * 4);
}

TEST(ParamCount, StoredCountEqualsAnalyticOnWrittenCheckpoints) {
  std::vector<ModelConfig> configs;
  ModelConfig v3 = v3_config();
  v3.vocab_size = 96, v3.hidden_size = 32, v3.intermediate_size = 48, v3.moe_intermediate_size = 8;
  v3.num_hidden_layers = 3, v3.num_attention_heads = 2, v3.num_key_value_heads = 2;
  v3.q_lora_rank = 16, v3.kv_lora_rank = 12, v3.qk_nope_head_dim = 8, v3.qk_rope_head_dim = 4;
  v3.v_head_dim = 6, v3.n_routed_experts = 8, v3.n_group = 4, v3.topk_group = 2;
  v3.num_experts_per_tok = 3, v3.first_k_dense_replace = 1, v3.attention_bias = true;
  configs.push_back(v3);
  ModelConfig moe = parse_model_config(R"({"model_type": "deepseek", "vocab_size": 64,
      "hidden_size": 16, "intermediate_size": 40, "moe_intermediate_size": 8, "num_hidden_layers": 4,
      "num_attention_heads": 2, "n_routed_experts": 6, "n_shared_experts": 2,
      "num_experts_per_tok": 2, "moe_layer_freq": 2, "first_k_dense_replace": 1})",
                                       "moe");
  configs.push_back(moe);
  ModelConfig llama = parse_model_config(R"({"model_type": "llama", "vocab_size": 50,
      "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "tie_word_embeddings": true, "attention_bias": true,
      "mlp_bias": true})",
                                         "llama");
  configs.push_back(llama);
  for (const ModelConfig& c : configs) {
    SCOPED_TRACE(c.model_type);
    TempDir dir;
    write_checkpoint(dir.path, c);
    WeightStore store = WeightStore::open(dir.path.string());
    ParamCount stored = count_stored_params(store, c);
    ParamCount analytic = count_params(c);
    EXPECT_EQ(stored, analytic);
    int64_t sum = 0;
    for (const auto& [name, shape] : checkpoint_tensor_shapes(c)) sum += shape_numel(shape);
    EXPECT_EQ(stored.total, sum);
    EXPECT_GT(stored.active, 0);
    // Tied embeddings count once, as the output head: then every parameter is active.
    if (c.tie_word_embeddings) {
      EXPECT_EQ(stored.active, stored.total);
    } else {
      EXPECT_LT(stored.active, stored.total);
    }
  }
  // With first_k_dense_replace 1 and moe_layer_freq 2 only layer 2 of 0..3 is MoE.
  EXPECT_FALSE(moe.is_moe_layer(1));
  EXPECT_TRUE(moe.is_moe_layer(2));
}

TEST(ParamCount, TransformersFixturesHaveExactlyTheExpectedTensors) {
  for (const auto& entry : fs::directory_iterator(kFixtures)) {
    SCOPED_TRACE(entry.path().filename().string());
    ModelConfig c = load_model_config(entry.path().string());
    WeightStore store = WeightStore::open(entry.path().string());
    std::set<std::string> stored;
    for (const std::string& name : store.names()) {
      if (name.find("_scale_inv") == std::string::npos) stored.insert(name);
    }
    std::set<std::string> expected;
    for (const auto& [name, shape] : checkpoint_tensor_shapes(c)) {
      expected.insert(name);
      EXPECT_EQ(store.get(name).shape(), shape) << name;
    }
    EXPECT_EQ(stored, expected);
    EXPECT_EQ(count_stored_params(store, c), count_params(c));
  }
}

TEST(Info, PrintsTextAndJsonForFixtures) {
  const CliRun r = run_dseek_shell("info --model " + (kFixtures / "v3_fp8").string());
  const std::string out = r.out + r.err;
  ASSERT_EQ(r.exit_code, 0) << out;
  for (const char* expected :
       {"deepseek_v3: MLA", "sigmoid + noaux_tc gate", "+ 1 MTP", "f8_e4m3 (72 tensors)",
        "stored (", "from config.json", "active/token",
        "KV cache/token 672 bytes bf16, 1344 bytes f32", "context        256 tokens"}) {
    EXPECT_NE(out.find(expected), std::string::npos) << expected << "\n" << out;
  }
  const CliRun jr = run_dseek_shell("info --json --model " + (kFixtures / "v2_sharded").string());
  const std::string jout = jr.out + jr.err;
  ASSERT_EQ(jr.exit_code, 0) << jout;
  nlohmann::json j = nlohmann::json::parse(jout);
  ModelConfig c = load_model_config((kFixtures / "v2_sharded").string());
  ParamCount p = count_params(c);
  EXPECT_EQ(j["model_type"], "deepseek_v2");
  EXPECT_EQ(j["attention"], "MLA");
  EXPECT_EQ(j["gate"], "softmax + greedy");
  EXPECT_EQ(j["num_hidden_layers"], c.num_hidden_layers);
  EXPECT_EQ(j["params_stored"]["total"], p.total);
  EXPECT_EQ(j["params_analytic"]["active"], p.active);
  EXPECT_EQ(j["kv_cache_bytes_per_token"]["bf16"], kv_cache_bytes_per_token(c, DType::BF16));
  EXPECT_EQ(j["stored_dtypes"]["f32"],
            int64_t(WeightStore::open((kFixtures / "v2_sharded").string()).names().size()));
  const CliRun lr = run_dseek_shell("info --json --model " + (kFixtures / "llama_gqa").string());
  const std::string lout = lr.out + lr.err;
  ASSERT_EQ(lr.exit_code, 0) << lout;
  EXPECT_EQ(nlohmann::json::parse(lout)["attention"], "GQA");
}

TEST(Info, ConfigOnlyDirectoryGetsAnalyticFigures) {
  TempDir dir;
  std::ofstream(dir.path / "config.json") << model_config_to_json(v3_config());
  const CliRun r = run_dseek_shell("info --json --model " + dir.path.string());
  const std::string out = r.out + r.err;
  ASSERT_EQ(r.exit_code, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_TRUE(j["params_stored"].is_null());
  EXPECT_EQ(j["params_analytic"]["total"], count_params(v3_config()).total);
}

TEST(Info, BadDirectoryOrConfigExitsWithOne) {
  TempDir dir;
  CliRun r = run_dseek_shell("info --model " + (dir.path / "missing").string());
  std::string out = r.out + r.err;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(out.find("dseek: [info]"), std::string::npos) << out;
  std::ofstream(dir.path / "config.json") << R"({"model_type": "gpt2"})";
  r = run_dseek_shell("info --model " + dir.path.string());
  out = r.out + r.err;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(out.find("unknown model_type 'gpt2'"), std::string::npos) << out;
  std::ofstream(dir.path / "config.json") << model_config_to_json(v2_lite_config());
  std::ofstream(dir.path / "model.safetensors") << "garbage!garbage!";
  r = run_dseek_shell("info --model " + dir.path.string());
  out = r.out + r.err;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(out.find("[safetensors]"), std::string::npos) << out;
}
