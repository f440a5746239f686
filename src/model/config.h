// ModelConfig: the fields of a Hugging Face `config.json` that dseek's one model implementation
// reads, under their HF names. Both hub-style keys (rope_theta, rope_scaling{type}) and
// transformers-5-style keys (rope_parameters{rope_type}) are accepted. Unknown values for
// model_type, scoring_func, topk_method, hidden_act or rope type are refused with an error naming
// the file and field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dseek {

struct RopeScaling {
  std::string type = "default";  // "default" (none), "yarn", "linear"
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  bool operator==(const RopeScaling&) const = default;
};

struct QuantizationConfig {
  std::string quant_method;                    // "" (none) or "fp8"
  int64_t block_rows = 128, block_cols = 128;  // weight_block_size
  bool operator==(const QuantizationConfig&) const = default;
};

struct ModelConfig {
  std::string model_type;  // deepseek_v3 | deepseek_v2 | deepseek | llama
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // width of one expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // MHA/GQA models (llama, deepseek)
  int64_t head_dim =
      0;  // MHA/GQA: defaults to hidden/heads; MLA: qk_rope_head_dim (as transformers)
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_interleave =
      true;  // V2/V3: rope dims stored interleaved, de-interleaved before rotate-half
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;

  // MLA (deepseek_v2, deepseek_v3). q_lora_rank 0 means a direct q_proj.
  int64_t q_lora_rank = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // MoE (deepseek, deepseek_v2, deepseek_v3). n_routed_experts 0 means a dense model.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense_replace = 0;
  std::string scoring_func = "softmax";  // softmax | sigmoid
  std::string topk_method = "greedy";    // greedy | group_limited_greedy | noaux_tc
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  double aux_loss_alpha = 0.0;
  bool seq_aux = false;

  // Multi-token prediction (deepseek_v3): extra layers after the main ones.
  int64_t num_nextn_predict_layers = 0;

  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";
  QuantizationConfig quantization;

  bool is_mla() const { return model_type == "deepseek_v2" || model_type == "deepseek_v3"; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Softmax scale of attention scores, including YaRN's mscale² for MLA models.
  double softmax_scale() const;
  bool operator==(const ModelConfig&) const = default;
};

// Parses and validates config.json. `source` names the file in error messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& path_or_dir);  // a config.json or its directory
// The checks parse_model_config runs (sizes, divisibility, known enum values), for configs built
// in code. Throws "[config] <source>: ..." naming the field.
void validate_model_config(const ModelConfig& config, const std::string& source);
// Writes the config in hub style (what transformers' DeepSeek/Llama configs read).
std::string model_config_to_json(const ModelConfig& config);

}  // namespace dseek
