// The one model implementation behind every DeepSeek architecture dseek runs: deepseek_v3,
// deepseek_v2 (MLA + MoE), deepseek (DeepSeekMoE: multi-head attention + MoE) and llama
// (DeepSeek LLM / Coder 1.x). Configured entirely by config.json.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace dseek {

class KVCache;  // model/kv_cache.h: per-layer cache (the compressed latent for MLA models)

class Model {
 public:
  virtual ~Model() = default;

  // Loads config.json and the safetensors weights of a checkpoint directory.
  static std::unique_ptr<Model> load(const std::string& dir);

  virtual const ModelConfig& config() const = 0;

  // Full forward of one sequence, no cache: logits [T, V] in f32.
  virtual Tensor forward(const std::vector<int32_t>& ids) = 0;

  // Incremental forward: runs `ids` at positions cache.size() .. cache.size()+T-1, appends them to
  // the cache and returns their logits [T, V]. Must equal the full forward.
  virtual Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) = 0;
  virtual std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const = 0;

  // Multi-token prediction (deepseek_v3 with num_nextn_predict_layers > 0). For ids [T], returns
  // the logits [T - depth, V] of MTP depth `depth` (1-based): row i predicts token i + depth + 1
  // from h^{depth-1}_i and the embedding of token i + depth. h^0 is the main model's output after
  // its final norm (as vLLM feeds real V3 checkpoints); h^k is MTP block k's output before
  // shared_head.norm. h' = eh_proj([enorm(emb(t)); hnorm(h)]), then one decoder block, then
  // shared_head.norm and shared_head.head. Throws if the model has no MTP layers.
  virtual Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) = 0;
};

}  // namespace dseek
