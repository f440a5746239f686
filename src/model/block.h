// Block: one decoder layer (transformers' DeepseekV3DecoderLayer / LlamaDecoderLayer):
//   h   = x + self_attn(input_layernorm(x))
//   out = h + mlp(post_attention_layernorm(h))
// self_attn is MLA (deepseek_v2/v3) or multi-head attention (llama, deepseek); mlp is a dense Mlp
// of intermediate_size or, where config.is_moe_layer(layer), the MoE with its shared experts.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>

#include "core/tensor.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "model/rope.h"

namespace dseek {

class LoadContext;

class Block {
 public:
  // `prefix` is "model.layers.<i>"; `layer` picks dense vs MoE.
  Block(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
        const std::string& prefix, int64_t layer);

  // x [T, D] f32 at positions 0 .. T−1.
  Tensor forward(const Tensor& x) const;
  // x: the rows of several sequences at their own positions (see SelfAttention::forward_paged);
  // fills layer `cache_layer` of the paged cache. Everything but attention runs over all rows.
  Tensor forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                       PagedKVCache& cache, int64_t cache_layer) const;

  // The residual stream between the layers of a cached forward, handed on already normed for the
  // layer that reads it: each residual add runs fused with the norm after it (ops::add_rms_norm),
  // so a layer costs two norm/add kernels instead of four — decoding is launch-bound. The same
  // bits as the forwards above.
  struct Stream {
    Tensor x;       // [T, D]
    Tensor normed;  // rms_norm(x) with the reading layer's input_layernorm (or the final norm)
  };
  Stream begin(const Tensor& x) const;  // {x, input_layernorm(x)}: the first layer's input
  // in.x at positions cache.size() .., filling cache layer `cache_layer` (or, as forward_paged
  // above, the rows of several sequences); `next_norm` is the next layer's
  // input_layernorm weight (or the model's final norm), undefined for none (normed stays empty).
  Stream forward(const Stream& in, KVCache& cache, int64_t cache_layer,
                 const Tensor& next_norm) const;
  Stream forward_paged(const Stream& in, std::span<const ops::PagedAttentionSeq> seqs,
                       PagedKVCache& cache, int64_t cache_layer, const Tensor& next_norm) const;
  const Tensor& input_layernorm() const { return input_layernorm_; }

  const SelfAttention& attention() const { return *attn_; }
  bool is_moe() const { return moe_.has_value(); }
  const Mlp* mlp() const { return mlp_ ? &*mlp_ : nullptr; }  // dense layers
  const MoE* moe() const { return moe_ ? &*moe_ : nullptr; }  // MoE layers

 private:
  Tensor feed_forward(const Tensor& h) const;  // h + mlp(post_attention_layernorm(h))
  // h = attention output; h += x, then the feed-forward with the residual adds fused.
  Stream finish(Tensor h, const Tensor& x, const Tensor& next_norm) const;

  double eps_;
  Tensor input_layernorm_, post_attention_layernorm_;
  std::unique_ptr<SelfAttention> attn_;
  std::optional<Mlp> mlp_;
  std::optional<MoE> moe_;
};

}  // namespace dseek
