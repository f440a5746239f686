// validate_model_config: the structural checks every config passes before a model is built.
#include <cmath>

#include "core/error.h"
#include "model/config.h"

namespace dseek {

namespace {

// Sizes beyond this are no real model and would overflow parameter arithmetic downstream.
constexpr int64_t kMaxSize = int64_t(1) << 24;

void check_range(const std::string& source, const char* field, int64_t value, int64_t min,
                 int64_t max = kMaxSize) {
  DSEEK_CHECK(value >= min && value <= max, "[config] {}: field '{}' is {}, must be in [{}, {}]",
              source, field, value, min, max);
}

void check_positive(const std::string& source, const char* field, double value) {
  DSEEK_CHECK(std::isfinite(value) && value > 0, "[config] {}: field '{}' is {}, must be positive",
              source, field, value);
}

}  // namespace

void validate_model_config(const ModelConfig& c, const std::string& source) {
  const std::string& s = source;
  DSEEK_CHECK(
      c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2" ||
          c.model_type == "deepseek" || c.model_type == "llama",
      "[config] {}: unknown model_type '{}' (supported: deepseek_v3, deepseek_v2, deepseek, "
      "llama)",
      s, c.model_type);
  check_range(s, "vocab_size", c.vocab_size, 1);
  check_range(s, "hidden_size", c.hidden_size, 1);
  check_range(s, "intermediate_size", c.intermediate_size, 1);
  check_range(s, "num_hidden_layers", c.num_hidden_layers, 1, 1 << 16);
  check_range(s, "num_attention_heads", c.num_attention_heads, 1);
  check_range(s, "num_key_value_heads", c.num_key_value_heads, 1);
  check_range(s, "max_position_embeddings", c.max_position_embeddings, 1, int64_t(1) << 32);
  DSEEK_CHECK(c.hidden_act == "silu", "[config] {}: field 'hidden_act' is '{}' (supported: silu)",
              s, c.hidden_act);
  check_positive(s, "rms_norm_eps", c.rms_norm_eps);
  check_positive(s, "rope_theta", c.rope_theta);
  DSEEK_CHECK(std::isfinite(c.aux_loss_alpha) && std::isfinite(c.routed_scaling_factor),
              "[config] {}: fields 'aux_loss_alpha' and 'routed_scaling_factor' must be finite", s);

  const RopeScaling& r = c.rope_scaling;
  DSEEK_CHECK(r.type == "default" || r.type == "linear" || r.type == "yarn",
              "[config] {}: field 'rope_scaling.type' is '{}' (supported: default, linear, yarn)",
              s, r.type);
  DSEEK_CHECK(std::isfinite(r.factor) && r.factor >= 1.0,
              "[config] {}: field 'rope_scaling.factor' is {}, must be >= 1", s, r.factor);
  if (r.type == "yarn") {
    check_range(s, "rope_scaling.original_max_position_embeddings",
                r.original_max_position_embeddings, 1, int64_t(1) << 32);
    check_positive(s, "rope_scaling.beta_fast", r.beta_fast);
    check_positive(s, "rope_scaling.beta_slow", r.beta_slow);
    DSEEK_CHECK(std::isfinite(r.mscale) && std::isfinite(r.mscale_all_dim),
                "[config] {}: fields 'rope_scaling.mscale' and 'mscale_all_dim' must be finite", s);
  }

  if (c.is_mla()) {
    check_range(s, "q_lora_rank", c.q_lora_rank, 0);
    check_range(s, "kv_lora_rank", c.kv_lora_rank, 1);
    check_range(s, "qk_nope_head_dim", c.qk_nope_head_dim, 0);
    check_range(s, "qk_rope_head_dim", c.qk_rope_head_dim, 2);
    check_range(s, "v_head_dim", c.v_head_dim, 1);
    DSEEK_CHECK(c.qk_rope_head_dim % 2 == 0,
                "[config] {}: field 'qk_rope_head_dim' ({}) must be even", s, c.qk_rope_head_dim);
  } else {
    check_range(s, "head_dim", c.head_dim, 2);
    DSEEK_CHECK(c.head_dim % 2 == 0, "[config] {}: field 'head_dim' ({}) must be even for RoPE", s,
                c.head_dim);
    DSEEK_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
                "[config] {}: field 'num_attention_heads' ({}) is not a multiple of "
                "'num_key_value_heads' ({})",
                s, c.num_attention_heads, c.num_key_value_heads);
  }

  if (c.model_type != "llama") {
    DSEEK_CHECK(c.scoring_func == "softmax" || c.scoring_func == "sigmoid",
                "[config] {}: field 'scoring_func' is '{}' (supported: softmax, sigmoid)", s,
                c.scoring_func);
    DSEEK_CHECK(
        c.topk_method == "greedy" || c.topk_method == "group_limited_greedy" ||
            c.topk_method == "noaux_tc",
        "[config] {}: field 'topk_method' is '{}' (supported: greedy, group_limited_greedy, "
        "noaux_tc)",
        s, c.topk_method);
  }
  check_range(s, "n_routed_experts", c.n_routed_experts, 0);
  if (c.n_routed_experts > 0) {
    check_range(s, "moe_intermediate_size", c.moe_intermediate_size, 1);
    check_range(s, "n_shared_experts", c.n_shared_experts, 0);
    check_range(s, "moe_layer_freq", c.moe_layer_freq, 1);
    check_range(s, "first_k_dense_replace", c.first_k_dense_replace, 0);
    DSEEK_CHECK(
        c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts,
        "[config] {}: field 'num_experts_per_tok' is {}, must be in [1, n_routed_experts = {}]", s,
        c.num_experts_per_tok, c.n_routed_experts);
    check_range(s, "n_group", c.n_group, 1);
    DSEEK_CHECK(c.n_routed_experts % c.n_group == 0,
                "[config] {}: field 'n_group' ({}) does not divide 'n_routed_experts' ({})", s,
                c.n_group, c.n_routed_experts);
    check_range(s, "topk_group", c.topk_group, 1, c.n_group);
    if (c.topk_method != "greedy") {
      int64_t per_group = c.n_routed_experts / c.n_group;
      DSEEK_CHECK(c.num_experts_per_tok <= c.topk_group * per_group,
                  "[config] {}: field 'num_experts_per_tok' ({}) exceeds the {} experts of the "
                  "topk_group = {} groups a token may use",
                  s, c.num_experts_per_tok, c.topk_group * per_group, c.topk_group);
      // noaux_tc scores a group by the sum of its two best experts.
      DSEEK_CHECK(
          c.topk_method != "noaux_tc" || per_group >= 2,
          "[config] {}: topk_method noaux_tc needs at least 2 experts per group, n_group = {} "
          "leaves {}",
          s, c.n_group, per_group);
    }
    check_positive(s, "routed_scaling_factor", c.routed_scaling_factor);
  }
  check_range(s, "num_nextn_predict_layers", c.num_nextn_predict_layers, 0, 64);
  // Token ids are not bounded by vocab_size: small test models often keep the tokenizer's ids.
  DSEEK_CHECK(c.bos_token_id >= -1, "[config] {}: field 'bos_token_id' ({}) is negative", s,
              c.bos_token_id);
  for (int64_t eos : c.eos_token_ids) {
    DSEEK_CHECK(eos >= 0, "[config] {}: field 'eos_token_id' ({}) is negative", s, eos);
  }
  if (!c.quantization.quant_method.empty()) {
    DSEEK_CHECK(c.quantization.quant_method == "fp8",
                "[config] {}: field 'quantization_config.quant_method' is '{}' (supported: fp8)", s,
                c.quantization.quant_method);
    check_range(s, "quantization_config.weight_block_size", c.quantization.block_rows, 1);
    check_range(s, "quantization_config.weight_block_size", c.quantization.block_cols, 1);
  }
}

}  // namespace dseek
