// Parameter and KV-cache accounting of a model: analytically from its config (the tensors a
// Hugging Face checkpoint of that config holds) and from the tensors actually stored.
//
// Conventions (they reproduce DeepSeek's published figures: V3 671B total / 37B active, V2-Lite
// 15.7B / 2.4B):
//   total   every stored parameter of the main model and the MTP layers; FP8 weight_scale_inv
//           tensors are quantisation metadata, not parameters, and are left out;
//   mtp     the part of `total` in the MTP layers (model.layers.{L..}), which in DeepSeek's
//           checkpoints hold their own copies of embed_tokens and shared_head.head;
//   active  parameters that take part in one token's forward pass of the main model: everything
//           except the routed experts, plus K of the E routed experts of every MoE layer. The input
//           embedding table is a lookup, not a matmul, and is NOT counted (the output head is);
//           with tied embeddings the shared matrix counts once, as the head.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dseek {

struct ParamCount {
  int64_t total = 0;
  int64_t mtp = 0;
  int64_t active = 0;
  bool operator==(const ParamCount&) const = default;
};

// Names and shapes of every tensor of a Hugging Face checkpoint of `config` (the layout of the
// hub's DeepSeek checkpoints and of transformers), MTP layers included, FP8 scales excluded.
// One entry per expert, so only for small configs (tests, random checkpoints).
std::vector<std::pair<std::string, Shape>> checkpoint_tensor_shapes(const ModelConfig& config);

// Analytic count from the config (no per-expert enumeration: fine for 671B configs).
ParamCount count_params(const ModelConfig& config);
// Count of the tensors stored in a checkpoint, classified by name as above.
ParamCount count_stored_params(const WeightStore& store, const ModelConfig& config);

// Bytes of KV cache one token adds across the main model's layers when cached in `dtype`:
// MLA caches the latent (kv_lora_rank + qk_rope_head_dim values per layer), MHA/GQA caches
// keys and values (2 × num_key_value_heads × head_dim per layer).
int64_t kv_cache_bytes_per_token(const ModelConfig& config, DType dtype);

}  // namespace dseek
