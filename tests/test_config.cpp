// config.json parsing: both key styles, transformers' defaults, validation errors, round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

using namespace dseek;

namespace {

// DeepSeek-V3's config.json from the hub (the fields dseek reads).
const char* kV3Hub = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
  "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
  "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
  "n_routed_experts": 256, "ep_size": 1, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
  "moe_layer_freq": 1, "first_k_dense_replace": 3, "norm_topk_prob": true,
  "scoring_func": "sigmoid", "aux_loss_alpha": 0.001, "seq_aux": true, "hidden_act": "silu",
  "max_position_embeddings": 163840, "initializer_range": 0.02, "rms_norm_eps": 1e-06,
  "use_cache": true, "bos_token_id": 0, "eos_token_id": 1, "pretraining_tp": 1,
  "tie_word_embeddings": false, "rope_theta": 10000,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "attention_bias": false, "attention_dropout": 0.0, "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}})";

// DeepSeek-V2-Lite's config.json (q_lora_rank null, softmax + greedy).
const char* kV2LiteHub = R"({
  "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
  "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
  "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
  "n_routed_experts": 64, "ep_size": 1, "routed_scaling_factor": 1.0, "kv_lora_rank": 512,
  "q_lora_rank": null, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6,
  "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": false,
  "scoring_func": "softmax", "aux_loss_alpha": 0.001, "seq_aux": true, "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "bos_token_id": 100000,
  "eos_token_id": 100001, "tie_word_embeddings": false, "rope_theta": 10000,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                   "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"},
  "attention_bias": false, "torch_dtype": "bfloat16"})";

std::string error_of(const std::string& text) {
  try {
    parse_model_config(text, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Applies a JSON merge patch to a base config.
std::string patched(const std::string& base, const std::string& patch) {
  nlohmann::json j = nlohmann::json::parse(base);
  j.merge_patch(nlohmann::json::parse(patch));
  return j.dump();
}

}  // namespace

TEST(Config, ParsesDeepSeekV3HubConfig) {
  ModelConfig c = parse_model_config(kV3Hub, "config.json");
  EXPECT_TRUE(c.is_mla());
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c.quantization.quant_method, "fp8");
  EXPECT_TRUE(c.rope_interleave);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  double mscale = 0.1 * 1.0 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), mscale * mscale / std::sqrt(192.0));
}

TEST(Config, ParsesV2LiteWithNullQLora) {
  ModelConfig c = parse_model_config(kV2LiteHub, "config.json");
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.topk_method, "greedy");
  EXPECT_EQ(c.bos_token_id, 100000);
  double mscale = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), mscale * mscale / std::sqrt(192.0));
}

TEST(Config, Transformers5RopeParametersMatchHubStyle) {
  std::string tf5 = patched(kV2LiteHub, R"({"rope_scaling": null, "rope_theta": null,
      "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
      "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
      "mscale": 0.707, "mscale_all_dim": 0.707}, "dtype": "bfloat16", "torch_dtype": null})");
  EXPECT_EQ(parse_model_config(tf5, "config.json"), parse_model_config(kV2LiteHub, "config.json"));
  // rope_theta only inside rope_parameters, with the default rope type.
  ModelConfig c =
      parse_model_config(patched(kV2LiteHub, R"({"rope_scaling": null, "rope_theta": null,
                              "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})"),
                         "config.json");
  EXPECT_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / std::sqrt(192.0));
}

TEST(Config, DefaultsFollowTransformersPerModelType) {
  ModelConfig v3 = parse_model_config(R"({"model_type": "deepseek_v3"})", "config.json");
  EXPECT_EQ(v3.vocab_size, 129280);
  EXPECT_EQ(v3.n_routed_experts, 256);
  EXPECT_EQ(v3.first_k_dense_replace, 3);
  EXPECT_EQ(v3.routed_scaling_factor, 2.5);
  EXPECT_EQ(v3.max_position_embeddings, 4096);
  EXPECT_TRUE(v3.norm_topk_prob);
  EXPECT_EQ(v3.bos_token_id, 0);
  ModelConfig v2 = parse_model_config(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 6})",
                                      "config.json");
  EXPECT_EQ(v2.vocab_size, 32000);
  EXPECT_EQ(v2.num_hidden_layers, 32);
  EXPECT_EQ(v2.moe_intermediate_size, 1407);
  EXPECT_EQ(v2.q_lora_rank, 1536);
  EXPECT_EQ(v2.scoring_func, "softmax");
  EXPECT_FALSE(v2.norm_topk_prob);
  EXPECT_TRUE(v2.rope_interleave);
  ModelConfig llama =
      parse_model_config(R"({"model_type": "llama", "num_key_value_heads": 8})", "config.json");
  EXPECT_EQ(llama.head_dim, 128);
  EXPECT_EQ(llama.n_routed_experts, 0);
  EXPECT_FALSE(llama.rope_interleave);
  EXPECT_EQ(llama.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_DOUBLE_EQ(llama.softmax_scale(), 1.0 / std::sqrt(128.0));
  ModelConfig moe = parse_model_config(
      R"({"model_type": "deepseek", "n_routed_experts": 64, "num_experts_per_tok": 6,
          "n_shared_experts": 2, "first_k_dense_replace": 1, "eos_token_id": [5, 7]})",
      "config.json");
  EXPECT_EQ(moe.bos_token_id, 100000);
  EXPECT_EQ(moe.eos_token_ids, (std::vector<int64_t>{5, 7}));
  EXPECT_FALSE(moe.is_moe_layer(0));
  EXPECT_TRUE(moe.is_moe_layer(1));
  EXPECT_EQ(
      parse_model_config(R"({"model_type": "llama", "eos_token_id": null})", "c").eos_token_ids,
      std::vector<int64_t>{});
}

TEST(Config, RefusesInvalidConfigsNamingTheField) {
  struct Case {
    std::string text;
    const char* expected;
  };
  std::vector<Case> cases = {
      {"{", "not valid JSON"},
      {"[1]", "not a JSON object"},
      {R"({"hidden_size": 4})", "'model_type' is missing"},
      {R"({"model_type": "gpt2"})", "unknown model_type 'gpt2'"},
      {patched(kV3Hub, R"({"scoring_func": "relu"})"), "'scoring_func' is 'relu'"},
      {patched(kV3Hub, R"({"topk_method": "best"})"), "'topk_method' is 'best'"},
      {patched(kV3Hub, R"({"hidden_act": "gelu"})"), "'hidden_act' is 'gelu'"},
      {patched(kV3Hub, R"({"rope_scaling": {"type": "dynamic", "factor": 2}})"),
       "'rope_scaling.rope_type' is 'dynamic'"},
      {patched(patched(kV3Hub, R"({"rope_scaling": null})"),
               R"({"rope_scaling": {"type": "yarn"}})"),
       "'rope_scaling.factor' is required"},
      {patched(kV3Hub, R"({"rope_scaling": {"type": "linear", "factor": 0.5}})"), "must be >= 1"},
      {patched(kV3Hub, R"({"rope_scaling": {"type": "yarn", "factor": "4"}})"),
       "'rope_scaling.factor' must be a number, got string"},
      {patched(kV3Hub, R"({"rope_scaling": 7})"), "'rope_scaling' must be an object"},
      {patched(kV3Hub, R"({"hidden_size": 0})"), "'hidden_size' is 0"},
      {patched(kV3Hub, R"({"num_hidden_layers": -2})"), "'num_hidden_layers' is -2"},
      {patched(kV3Hub, R"({"vocab_size": 1e5})"), "'vocab_size' must be an integer, got number"},
      {patched(kV3Hub, R"({"vocab_size": "129280"})"),
       "'vocab_size' must be an integer, got string"},
      {patched(kV3Hub, R"({"norm_topk_prob": 1})"), "'norm_topk_prob' must be true or false"},
      {patched(kV3Hub, R"({"num_experts_per_tok": 300})"), "'num_experts_per_tok' is 300"},
      {patched(kV3Hub, R"({"n_group": 7})"),
       "'n_group' (7) does not divide 'n_routed_experts' (256)"},
      {patched(kV3Hub, R"({"topk_group": 9})"), "'topk_group' is 9"},
      {patched(kV3Hub, R"({"topk_group": 1, "num_experts_per_tok": 40})"),
       "exceeds the 32 experts"},
      {patched(kV3Hub, R"({"n_group": 256, "topk_group": 8})"), "at least 2 experts per group"},
      {patched(kV3Hub, R"({"qk_rope_head_dim": 63})"), "'qk_rope_head_dim' (63) must be even"},
      {patched(kV3Hub, R"({"kv_lora_rank": 0})"), "'kv_lora_rank' is 0"},
      {patched(kV3Hub, R"({"eos_token_id": [1, "x"]})"),
       "'eos_token_id' must be a list of integers"},
      {patched(kV3Hub, R"({"eos_token_id": -3})"), "'eos_token_id' (-3) is negative"},
      {patched(kV3Hub, R"({"quantization_config": {"quant_method": "gptq"}})"),
       "'quantization_config.quant_method' is 'gptq'"},
      {patched(kV3Hub,
               R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}})"),
       "weight_block_size' must be two positive integers"},
      {patched(kV3Hub, R"({"hidden_size": 99999999999})"), "'hidden_size' is 99999999999"},
      {patched(kV3Hub, R"({"rms_norm_eps": -1})"), "'rms_norm_eps' is -1"},
      {R"({"model_type": "llama", "hidden_size": 100, "num_attention_heads": 8})",
       "'hidden_size' (100) is not divisible by 'num_attention_heads' (8)"},
      {R"({"model_type": "llama", "num_key_value_heads": 5})",
       "not a multiple of 'num_key_value_heads'"},
      {R"({"model_type": "deepseek_v2"})", "'num_experts_per_tok' is 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    std::string message = error_of(c.text);
    EXPECT_EQ(message.rfind("[config] config.json: ", 0), 0u) << message;
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
  }
  EXPECT_EQ(error_of(kV3Hub), "");
}

TEST(Config, RoundTripsThroughHubStyleJson) {
  std::vector<ModelConfig> configs = {
      parse_model_config(kV3Hub, "a"),
      parse_model_config(kV2LiteHub, "b"),
      parse_model_config(R"({"model_type": "llama", "num_key_value_heads": 8, "head_dim": 64,
                             "rope_scaling": {"type": "linear", "factor": 4.0},
                             "eos_token_id": [2, 3], "tie_word_embeddings": true})",
                         "c"),
      parse_model_config(
          R"({"model_type": "deepseek", "n_routed_experts": 64, "num_experts_per_tok": 6,
                             "bos_token_id": null, "rms_norm_eps": 1.2345678901234e-5})",
          "d"),
  };
  for (const ModelConfig& c : configs) {
    SCOPED_TRACE(c.model_type);
    std::string text = model_config_to_json(c);
    ModelConfig back = parse_model_config(text, "roundtrip");
    EXPECT_EQ(back, c) << text;
    EXPECT_EQ(model_config_to_json(back), text);
  }
}

TEST(Config, LoadsEveryFixtureAndReportsMissingFiles) {
  const std::filesystem::path fixtures =
      std::filesystem::path(DSEEK_SOURCE_DIR) / "tests/fixtures/models";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(fixtures)) {
    SCOPED_TRACE(entry.path().string());
    ModelConfig c = load_model_config(entry.path().string());
    EXPECT_GT(c.num_hidden_layers, 0);
    ++count;
  }
  EXPECT_GT(count, 0);
  ModelConfig yarn = load_model_config((fixtures / "v3_yarn/config.json").string());
  EXPECT_EQ(yarn.rope_scaling.type, "yarn");
  EXPECT_EQ(yarn.rope_scaling.original_max_position_embeddings, 64);
  try {
    load_model_config("/nonexistent/dir");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[config] /nonexistent/dir: cannot open"),
              std::string::npos)
        << e.what();
  }
}
