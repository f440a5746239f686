// model_config_to_json: writes a ModelConfig as a hub-style config.json (rope_theta + rope_scaling
// {type}), with every field explicit so that parsing it back gives the same config whatever the
// defaults of the model type.
#include <nlohmann/json.hpp>

#include "model/config.h"

namespace dseek {

namespace {

const char* architecture_of(const std::string& model_type) {
  if (model_type == "deepseek_v3") return "DeepseekV3ForCausalLM";
  if (model_type == "deepseek_v2") return "DeepseekV2ForCausalLM";
  if (model_type == "deepseek") return "DeepseekForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

std::string model_config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {architecture_of(c.model_type)};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  if (!c.is_mla()) j["head_dim"] = c.head_dim;
  j["hidden_act"] = c.hidden_act;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  const RopeScaling& r = c.rope_scaling;
  if (r.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    nlohmann::ordered_json rope;
    rope["type"] = r.type;
    rope["factor"] = r.factor;
    if (r.type == "yarn") {
      rope["original_max_position_embeddings"] = r.original_max_position_embeddings;
      rope["beta_fast"] = r.beta_fast;
      rope["beta_slow"] = r.beta_slow;
      rope["mscale"] = r.mscale;
      rope["mscale_all_dim"] = r.mscale_all_dim;
    }
    j["rope_scaling"] = rope;
  }
  j["rope_interleave"] = c.rope_interleave;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.is_mla()) {
    j["q_lora_rank"] = c.q_lora_rank > 0 ? nlohmann::ordered_json(c.q_lora_rank) : nullptr;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
  }
  if (c.model_type != "llama") {
    j["n_routed_experts"] =
        c.n_routed_experts > 0 ? nlohmann::ordered_json(c.n_routed_experts) : nullptr;
    j["n_shared_experts"] = c.n_shared_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["moe_layer_freq"] = c.moe_layer_freq;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["scoring_func"] = c.scoring_func;
    j["topk_method"] = c.topk_method;
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["aux_loss_alpha"] = c.aux_loss_alpha;
    j["seq_aux"] = c.seq_aux;
  }
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["bos_token_id"] = c.bos_token_id >= 0 ? nlohmann::ordered_json(c.bos_token_id) : nullptr;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (c.eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["torch_dtype"] = c.torch_dtype;
  if (!c.quantization.quant_method.empty()) {
    j["quantization_config"] = {
        {"quant_method", c.quantization.quant_method},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"weight_block_size", {c.quantization.block_rows, c.quantization.block_cols}}};
  }
  return j.dump(2) + "\n";
}

}  // namespace dseek
