// A tiny random DeepSeek-V2 (MLA + MoE) checkpoint with the real DeepSeek Coder tokenizer
// (vocab 32256, hidden 32), written once per test binary run, for generator and CLI tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "model/config.h"
#include "model/init_weights.h"

namespace dseek::testing {

inline std::string coder_tokenizer_path() {
  return std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/deepseek-coder.tokenizer.json";
}

inline ModelConfig tiny_coder_config() {
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.vocab_size = 32256;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.moe_intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.max_position_embeddings = 256;
  c.bos_token_id = 32013;
  c.eos_token_ids = {32014};
  return c;
}

// Directory of the checkpoint (config.json, model.safetensors, tokenizer.json); created on first
// use, removed when the test binary exits.
inline std::string tiny_coder_model_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      path = std::filesystem::temp_directory_path() /
             ("dseek_test_tiny_coder_" + std::to_string(::getpid()));
      InitOptions options;
      options.dtype = DType::F32;
      options.seed = 2024;
      options.std = 0.3;  // larger than usual: logits far from uniform keep the argmax stable
      options.tokenizer = coder_tokenizer_path();
      write_random_checkpoint(tiny_coder_config(), path.string(), options);
    }
    ~Dir() { std::filesystem::remove_all(path); }
  };
  static const Dir dir;
  return dir.path.string();
}

}  // namespace dseek::testing
