// config.json parsing. Absent keys take the defaults of the class transformers (or, for
// model_type "deepseek", the hub's remote-code DeepseekConfig) would build:
//   deepseek_v3  transformers DeepseekV3Config (the DeepSeek-V3 sizes; sigmoid + noaux_tc, which
//                the transformers model hard-codes; rope_interleave true)
//   deepseek_v2  transformers DeepseekV2Config (vocab 32000, 32 layers, bos 1 / eos 2, softmax,
//                greedy; the rope dims are used interleaved, so rope_interleave true)
//   deepseek     deepseek-ai/deepseek-moe-16b configuration_deepseek.py DeepseekConfig
//   llama        transformers LlamaConfig
// A JSON null means what it means in Python: "none", e.g. q_lora_rank null -> direct q_proj (0),
// n_routed_experts null -> dense, n_group null -> one group; for other keys null = absent.
#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "model/config_reader.h"

namespace dseek {

namespace {

using json = nlohmann::json;

ModelConfig defaults_for(const std::string& model_type, const std::string& source) {
  ModelConfig d;
  d.model_type = model_type;
  d.rms_norm_eps = 1e-6;
  d.rope_theta = 10000.0;
  d.aux_loss_alpha = 0.001;
  d.seq_aux = true;
  if (model_type == "deepseek_v3") {
    d.vocab_size = 129280, d.hidden_size = 7168, d.intermediate_size = 18432;
    d.moe_intermediate_size = 2048, d.num_hidden_layers = 61, d.num_attention_heads = 128;
    d.n_shared_experts = 1, d.n_routed_experts = 256, d.routed_scaling_factor = 2.5;
    d.kv_lora_rank = 512, d.q_lora_rank = 1536, d.qk_rope_head_dim = 64, d.v_head_dim = 128;
    d.qk_nope_head_dim = 128, d.n_group = 8, d.topk_group = 4, d.num_experts_per_tok = 8;
    d.first_k_dense_replace = 3, d.norm_topk_prob = true, d.max_position_embeddings = 4096;
    d.bos_token_id = 0, d.eos_token_ids = {1}, d.rope_interleave = true;
    d.scoring_func = "sigmoid", d.topk_method = "noaux_tc";
  } else if (model_type == "deepseek_v2") {
    d.vocab_size = 32000, d.hidden_size = 4096, d.intermediate_size = 11008;
    d.num_hidden_layers = 32, d.num_attention_heads = 32, d.max_position_embeddings = 2048;
    d.bos_token_id = 1, d.eos_token_ids = {2}, d.kv_lora_rank = 512, d.q_lora_rank = 1536;
    d.n_routed_experts = 64, d.n_shared_experts = 2, d.qk_nope_head_dim = 128;
    d.qk_rope_head_dim = 64, d.v_head_dim = 128, d.routed_scaling_factor = 1.0;
    d.moe_intermediate_size = 1407, d.num_experts_per_tok = 0, d.rope_interleave = true;
    d.scoring_func = "softmax", d.topk_method = "greedy";
  } else if (model_type == "deepseek") {
    d.vocab_size = 102400, d.hidden_size = 4096, d.intermediate_size = 11008;
    d.moe_intermediate_size = 1407, d.num_hidden_layers = 30, d.num_attention_heads = 32;
    d.max_position_embeddings = 2048, d.bos_token_id = 100000, d.eos_token_ids = {100001};
    d.rope_interleave = false, d.scoring_func = "softmax", d.topk_method = "greedy";
  } else if (model_type == "llama") {
    d.vocab_size = 32000, d.hidden_size = 4096, d.intermediate_size = 11008;
    d.num_hidden_layers = 32, d.num_attention_heads = 32, d.max_position_embeddings = 2048;
    d.bos_token_id = 1, d.eos_token_ids = {2}, d.rope_interleave = false;
  } else {
    fail(
        "[config] {}: unknown model_type '{}' (supported: deepseek_v3, deepseek_v2, deepseek, "
        "llama)",
        source, model_type);
  }
  return d;
}

void parse_rope(const ConfigReader& top, ModelConfig& c) {
  const json& j = top.object();
  bool tf5 = j.contains("rope_parameters") && !j["rope_parameters"].is_null();
  const char* key = tf5 ? "rope_parameters" : "rope_scaling";
  c.rope_theta = top.number("rope_theta", c.rope_theta);
  if (!j.contains(key) || j[key].is_null()) return;
  ConfigReader rope = top.child(key);
  if (tf5) c.rope_theta = rope.number("rope_theta", c.rope_theta);
  // transformers reads "rope_type" and falls back to the legacy "type".
  std::string type = rope.string("rope_type", rope.string("type", "default"));
  RopeScaling& r = c.rope_scaling;
  r.type = type;
  if (type == "default") return;
  DSEEK_CHECK(type == "yarn" || type == "linear",
              "[config] {}: field '{}.rope_type' is '{}' (supported: default, linear, yarn)",
              top.source(), key, type);
  DSEEK_CHECK(rope.has("factor"), "[config] {}: field '{}.factor' is required for rope type '{}'",
              top.source(), key, type);
  r.factor = rope.number("factor", 1.0);
  DSEEK_CHECK(r.factor >= 1.0, "[config] {}: field '{}.factor' must be >= 1, got {}", top.source(),
              key, r.factor);
  if (type == "yarn") {
    r.original_max_position_embeddings =
        rope.integer("original_max_position_embeddings", c.max_position_embeddings);
    r.beta_fast = rope.number("beta_fast", 32.0);
    r.beta_slow = rope.number("beta_slow", 1.0);
    r.mscale = rope.number("mscale", 1.0);
    r.mscale_all_dim = rope.number("mscale_all_dim", 0.0);
    DSEEK_CHECK(r.original_max_position_embeddings > 0,
                "[config] {}: field '{}.original_max_position_embeddings' must be positive",
                top.source(), key);
    DSEEK_CHECK(r.beta_fast > 0 && r.beta_slow > 0,
                "[config] {}: fields '{}.beta_fast' and '{}.beta_slow' must be positive",
                top.source(), key, key);
  }
}

void parse_quantization(const ConfigReader& top, ModelConfig& c) {
  const json& j = top.object();
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return;
  ConfigReader q = top.child("quantization_config");
  c.quantization.quant_method = q.string("quant_method", "");
  DSEEK_CHECK(c.quantization.quant_method == "fp8",
              "[config] {}: field 'quantization_config.quant_method' is '{}' (supported: fp8)",
              top.source(), c.quantization.quant_method);
  std::vector<int64_t> block = q.integer_list("weight_block_size", {128, 128});
  DSEEK_CHECK(block.size() == 2 && block[0] > 0 && block[1] > 0,
              "[config] {}: field 'quantization_config.weight_block_size' must be two positive "
              "integers",
              top.source());
  c.quantization.block_rows = block[0];
  c.quantization.block_cols = block[1];
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    fail("[config] {}: not valid JSON: {}", source, e.what());
  }
  DSEEK_CHECK(j.is_object(), "[config] {}: not a JSON object", source);
  ConfigReader r(j, source, "");
  DSEEK_CHECK(r.has("model_type"), "[config] {}: field 'model_type' is missing", source);
  ModelConfig c = defaults_for(r.string("model_type", ""), source);
  const bool mla = c.is_mla();

  c.vocab_size = r.integer("vocab_size", c.vocab_size);
  c.hidden_size = r.integer("hidden_size", c.hidden_size);
  c.intermediate_size = r.integer("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = r.integer("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = r.integer("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  c.hidden_act = r.string("hidden_act", c.hidden_act);
  c.rms_norm_eps = r.number("rms_norm_eps", c.rms_norm_eps);
  c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings);
  c.rope_interleave = r.boolean("rope_interleave", c.rope_interleave);
  c.attention_bias = r.boolean("attention_bias", c.attention_bias);
  c.mlp_bias = r.boolean("mlp_bias", c.mlp_bias);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", c.tie_word_embeddings);
  parse_rope(r, c);

  if (mla) {
    c.q_lora_rank = r.integer("q_lora_rank", c.q_lora_rank, /*if_null=*/0);
    c.kv_lora_rank = r.integer("kv_lora_rank", c.kv_lora_rank);
    c.qk_nope_head_dim = r.integer("qk_nope_head_dim", c.qk_nope_head_dim);
    c.qk_rope_head_dim = r.integer("qk_rope_head_dim", c.qk_rope_head_dim);
    c.v_head_dim = r.integer("v_head_dim", c.v_head_dim);
    c.head_dim = c.qk_rope_head_dim;  // transformers overrides head_dim the same way
  } else {
    DSEEK_CHECK(c.num_attention_heads > 0,
                "[config] {}: field 'num_attention_heads' must be positive", source);
    c.head_dim = r.integer("head_dim", c.hidden_size / c.num_attention_heads);
    if (!r.present("head_dim")) {
      DSEEK_CHECK(c.hidden_size % c.num_attention_heads == 0,
                  "[config] {}: field 'hidden_size' ({}) is not divisible by 'num_attention_heads' "
                  "({}) and no head_dim is given",
                  source, c.hidden_size, c.num_attention_heads);
    }
  }
  if (c.model_type != "llama") {
    c.n_routed_experts = r.integer("n_routed_experts", c.n_routed_experts, 0);
    c.n_shared_experts = r.integer("n_shared_experts", c.n_shared_experts, 0);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", c.num_experts_per_tok, 0);
    c.moe_intermediate_size = r.integer("moe_intermediate_size", c.moe_intermediate_size);
    c.moe_layer_freq = r.integer("moe_layer_freq", c.moe_layer_freq);
    c.first_k_dense_replace = r.integer("first_k_dense_replace", c.first_k_dense_replace);
    c.scoring_func = r.string("scoring_func", c.scoring_func);
    c.topk_method = r.string("topk_method", c.topk_method);
    c.n_group = r.integer("n_group", c.n_group, 1);
    c.topk_group = r.integer("topk_group", c.topk_group, 1);
    c.norm_topk_prob = r.boolean("norm_topk_prob", c.norm_topk_prob);
    c.routed_scaling_factor = r.number("routed_scaling_factor", c.routed_scaling_factor);
    c.aux_loss_alpha = r.number("aux_loss_alpha", c.aux_loss_alpha);
    c.seq_aux = r.boolean("seq_aux", c.seq_aux);
  }
  c.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", c.num_nextn_predict_layers, 0);
  c.bos_token_id = r.integer("bos_token_id", c.bos_token_id, -1);
  if (r.has("eos_token_id")) {
    const json& eos = j["eos_token_id"];
    c.eos_token_ids = eos.is_array()  ? r.integer_list("eos_token_id", {})
                      : eos.is_null() ? std::vector<int64_t>{}
                                      : std::vector<int64_t>{r.integer("eos_token_id", 0)};
  }
  // transformers 5 writes "dtype"; earlier versions "torch_dtype".
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", c.torch_dtype));
  parse_quantization(r, c);
  validate_model_config(c, source);
  return c;
}

ModelConfig load_model_config(const std::string& path_or_dir) {
  std::filesystem::path path(path_or_dir);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) path /= "config.json";
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[config] {}: cannot open", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  DSEEK_CHECK(!in.bad(), "[config] {}: read failed", path.string());
  return parse_model_config(text.str(), path.string());
}

double ModelConfig::softmax_scale() const {
  if (!is_mla()) return 1.0 / std::sqrt(double(head_dim));
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  // As transformers' DeepseekV2/V3 attention: any non-default rope type with mscale_all_dim set.
  if (rope_scaling.type != "default" && rope_scaling.mscale_all_dim != 0.0 &&
      rope_scaling.factor > 1.0) {
    double mscale = 0.1 * rope_scaling.mscale_all_dim * std::log(rope_scaling.factor) + 1.0;
    scale *= mscale * mscale;
  }
  return scale;
}

}  // namespace dseek
