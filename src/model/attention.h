// Self-attention of a decoder block. SelfAttention is what a Block calls; two implementations:
//  - Attention (this file): multi-head / grouped-query attention with RoPE, as transformers'
//    LlamaAttention (model_type llama = DeepSeek LLM, and deepseek = DeepSeekMoE 16B):
//      q = q_proj(x), k = k_proj(x), v = v_proj(x)  (+ biases when attention_bias)
//      q, k ← RoPE (rotate-half, no interleave);  out = o_proj(softmax(q kᵀ / √head_dim) v)
//    Its cache holds roped keys and values, [Hkv·head_dim] each per token.
//  - Mla (model/mla.h): DeepSeek-V2/V3 multi-head latent attention.
// Inputs are the block's normalised hidden states x [T, D] f32; outputs [T, D] f32.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "core/tensor.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/linear_weight.h"
#include "model/rope.h"
#include "ops/paged_attention.h"

namespace dseek {

class LoadContext;
class PagedKVCache;

class SelfAttention {
 public:
  virtual ~SelfAttention() = default;
  // Tokens at positions 0 .. T−1, no cache.
  virtual Tensor forward(const Tensor& x) const = 0;
  // Tokens at positions cache.size() ..; writes their rows into layer `layer` of the cache (the
  // caller advances the cache once every layer has run).
  virtual Tensor forward_cached(const Tensor& x, KVCache& cache, int64_t layer) const = 0;
  // Many sequences over a paged cache (continuous batching): x holds seqs[0].T rows, then
  // seqs[1].T rows, ...; sequence i's rows sit at positions seqs[i].pos0 .. and are written into
  // layer `layer` through its pages (which must already cover them) before attention reads them.
  virtual Tensor forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                               PagedKVCache& cache, int64_t layer) const = 0;
  virtual KVCache::LayerSpec cache_spec() const = 0;
};

class Attention : public SelfAttention {
 public:
  // Reads <prefix>.{q,k,v,o}_proj.weight (and .bias when config.attention_bias).
  Attention(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
            const std::string& prefix);

  Tensor forward(const Tensor& x) const override;
  Tensor forward_cached(const Tensor& x, KVCache& cache, int64_t layer) const override;
  Tensor forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                       PagedKVCache& cache, int64_t layer) const override;
  KVCache::LayerSpec cache_spec() const override {
    return {n_kv_heads_ * head_dim_, n_kv_heads_ * head_dim_};
  }

 private:
  // Projections and RoPE for tokens starting at pos0: q [T, H, hd], k, v [T, Hkv, hd].
  void project(const Tensor& x, int64_t pos0, Tensor& q, Tensor& k, Tensor& v) const;
  // The same without RoPE (the paged path ropes each sequence's rows at its own positions).
  void project_unroped(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) const;
  Tensor output(const Tensor& attn) const;  // [T, H, hd] -> o_proj -> [T, D]

  const RopeParams& rope_;
  int64_t n_heads_, n_kv_heads_, head_dim_;
  float scale_;
  LinearWeight q_proj_, k_proj_, v_proj_, o_proj_;  // FP8 or not (model/linear_weight.h)
  Tensor q_bias_, k_bias_, v_bias_, o_bias_;  // undefined without attention_bias
};

}  // namespace dseek
