// Tiny random checkpoints for the model tests: a ModelConfig, its tensors in the Hugging Face
// layout with uniform random values (large enough that attention is far from uniform and every
// path moves the logits), written with save_safetensors + model_config_to_json into a temp dir.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "test_ops_util.h"

namespace dseek::testing {

using Weights = std::vector<std::pair<std::string, Tensor>>;

inline ModelConfig tiny_config(const std::string& model_type) {
  ModelConfig c;
  c.model_type = model_type;
  c.vocab_size = 67;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 128;
  c.eos_token_ids = {1};
  c.bos_token_id = 0;
  if (c.is_mla()) {
    c.q_lora_rank = 24;
    c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 6;
    c.head_dim = c.qk_rope_head_dim;
  } else {
    c.head_dim = 8;
  }
  return c;
}

// Adds a softmax/greedy MoE (4 experts, top-2, one shared expert) from layer 1 on.
inline void add_moe(ModelConfig& c) {
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 12;
  c.first_k_dense_replace = 1;
}

// DeepSeek-V3's router on top of add_moe: sigmoid scores, the noaux_tc top-k with 2 groups
// (1 kept), normalised weights scaled by 2.5, and one MTP layer.
inline void add_v3_routing(ModelConfig& c) {
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
}

class TinyCheckpoint {
 public:
  TinyCheckpoint(const ModelConfig& config, uint32_t seed) : config_(config), rng_(seed) {
    build();
  }

  Weights& weights() { return weights_; }
  const ModelConfig& config() const { return config_; }

  // Writes config.json + model.safetensors into a fresh temp dir and returns it.
  std::string write(const std::string& tag) const {
    namespace fs = std::filesystem;
    const fs::path dir =
        fs::temp_directory_path() / ("dseek_model_test_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << model_config_to_json(config_);
    save_safetensors((dir / "model.safetensors").string(), weights_);
    return dir.string();
  }

  void remove(const std::string& name) {
    for (size_t i = 0; i < weights_.size(); ++i)
      if (weights_[i].first == name) {
        weights_.erase(weights_.begin() + long(i));
        return;
      }
  }

 private:
  void add(const std::string& name, const Shape& shape, float scale = 0.4f,
           DType dtype = DType::BF16) {
    weights_.emplace_back(name, random_tensor(shape, dtype, rng_, scale));
  }
  void add_norm(const std::string& name, int64_t n) {
    // Around 1, not exactly 1, so a mixed-up norm weight shows.
    std::uniform_real_distribution<float> dist(0.8f, 1.2f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& f : v) f = dist(rng_);
    weights_.emplace_back(name, Tensor::from_vector(v, {n}));
  }
  void add_mlp(const std::string& p, int64_t width) {
    const int64_t D = config_.hidden_size;
    add(p + ".gate_proj.weight", {width, D});
    add(p + ".up_proj.weight", {width, D});
    add(p + ".down_proj.weight", {D, width});
  }
  void add_block(const std::string& p, int64_t layer) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, H = c.num_attention_heads;
    add_norm(p + ".input_layernorm.weight", D);
    add_norm(p + ".post_attention_layernorm.weight", D);
    const std::string a = p + ".self_attn";
    if (c.is_mla()) {
      if (c.q_lora_rank > 0) {
        add(a + ".q_a_proj.weight", {c.q_lora_rank, D});
        add_norm(a + ".q_a_layernorm.weight", c.q_lora_rank);
        add(a + ".q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank});
      } else {
        add(a + ".q_proj.weight", {H * c.qk_head_dim(), D});
      }
      add(a + ".kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, D});
      add_norm(a + ".kv_a_layernorm.weight", c.kv_lora_rank);
      add(a + ".kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
      add(a + ".o_proj.weight", {D, H * c.v_head_dim});
    } else {
      const int64_t Hk = c.num_key_value_heads, hd = c.head_dim;
      add(a + ".q_proj.weight", {H * hd, D});
      add(a + ".k_proj.weight", {Hk * hd, D});
      add(a + ".v_proj.weight", {Hk * hd, D});
      add(a + ".o_proj.weight", {D, H * hd});
      if (c.attention_bias) {
        add(a + ".q_proj.bias", {H * hd}, 0.4f, DType::F32);
        add(a + ".k_proj.bias", {Hk * hd}, 0.4f, DType::F32);
        add(a + ".v_proj.bias", {Hk * hd}, 0.4f, DType::F32);
        add(a + ".o_proj.bias", {D}, 0.4f, DType::F32);
      }
    }
    if (c.is_moe_layer(layer)) {
      add(p + ".mlp.gate.weight", {c.n_routed_experts, D}, 0.4f, DType::F32);
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        add_mlp(p + ".mlp.experts." + std::to_string(e), c.moe_intermediate_size);
      if (c.n_shared_experts > 0)
        add_mlp(p + ".mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts);
    } else {
      add_mlp(p + ".mlp", c.intermediate_size);
    }
  }
  void build() {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
    add("model.embed_tokens.weight", {V, D}, 1.0f);
    for (int64_t l = 0; l < L; ++l) add_block("model.layers." + std::to_string(l), l);
    add_norm("model.norm.weight", D);
    if (!c.tie_word_embeddings) add("lm_head.weight", {V, D});
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
      const std::string p = "model.layers." + std::to_string(L + k);
      add(p + ".embed_tokens.weight", {V, D}, 1.0f);
      add_norm(p + ".enorm.weight", D);
      add_norm(p + ".hnorm.weight", D);
      add(p + ".eh_proj.weight", {D, 2 * D});
      add_norm(p + ".shared_head.norm.weight", D);
      add(p + ".shared_head.head.weight", {V, D});
      add_block(p, L + k);
    }
  }

  ModelConfig config_;
  std::mt19937 rng_;
  Weights weights_;
};

}  // namespace dseek::testing
