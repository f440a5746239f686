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
};

}  // namespace dseek
