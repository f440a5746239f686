#include "model/block.h"

#include "model/load_context.h"
#include "model/mla.h"
#include "ops/activation.h"
#include "ops/norm.h"

namespace dseek {

Block::Block(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
             const std::string& prefix, int64_t layer)
    : eps_(config.rms_norm_eps) {
  const int64_t D = config.hidden_size;
  input_layernorm_ = ctx.weight(prefix + ".input_layernorm.weight", {D});
  post_attention_layernorm_ = ctx.weight(prefix + ".post_attention_layernorm.weight", {D});
  if (config.is_mla()) {
    attn_ = std::make_unique<Mla>(config, rope, ctx, prefix + ".self_attn");
  } else {
    attn_ = std::make_unique<Attention>(config, rope, ctx, prefix + ".self_attn");
  }
  if (config.is_moe_layer(layer)) {
    moe_.emplace(config, ctx.store(), prefix + ".mlp", ctx.placement());
  } else {
    mlp_.emplace(ctx.store(), prefix + ".mlp", D, config.intermediate_size, ctx.placement());
  }
  ctx.consume_prefix(prefix + ".mlp.");
}

Tensor Block::feed_forward(const Tensor& h) const {
  const Tensor normed = ops::rms_norm(h, post_attention_layernorm_, eps_);
  Tensor out = moe_ ? moe_->forward(normed) : mlp_->forward(normed);
  ops::add_inplace(out, h);
  return out;
}

Tensor Block::forward(const Tensor& x) const {
  Tensor h = attn_->forward(ops::rms_norm(x, input_layernorm_, eps_));
  ops::add_inplace(h, x);
  return feed_forward(h);
}

Tensor Block::forward_paged(const Tensor& x, std::span<const ops::PagedAttentionSeq> seqs,
                           PagedKVCache& cache, int64_t cache_layer) const {
  Tensor h = attn_->forward_paged(ops::rms_norm(x, input_layernorm_, eps_), seqs, cache,
                                  cache_layer);
  ops::add_inplace(h, x);
  return feed_forward(h);
}

Block::Stream Block::begin(const Tensor& x) const {
  return {x, ops::rms_norm(x, input_layernorm_, eps_)};
}

Block::Stream Block::finish(Tensor h, const Tensor& x, const Tensor& next_norm) const {
  const Tensor normed = ops::add_rms_norm(h, x, post_attention_layernorm_, eps_);  // h += x
  if (moe_ && next_norm.defined()) {  // (on the GPU the experts' combine adds h and norms)
    Tensor next;
    Tensor out = moe_->forward_add_norm(normed, h, next_norm, eps_, next);  // out = moe + h
    return {out, next};
  }
  Tensor out = moe_ ? moe_->forward(normed) : mlp_->forward(normed);
  if (!next_norm.defined()) {
    ops::add_inplace(out, h);
    return {out, Tensor()};
  }
  const Tensor next = ops::add_rms_norm(out, h, next_norm, eps_);  // out += h
  return {out, next};
}

Block::Stream Block::forward(const Stream& in, KVCache& cache, int64_t cache_layer,
                             const Tensor& next_norm) const {
  return finish(attn_->forward_cached(in.normed, cache, cache_layer), in.x, next_norm);
}

Block::Stream Block::forward_paged(const Stream& in, std::span<const ops::PagedAttentionSeq> seqs,
                                   PagedKVCache& cache, int64_t cache_layer,
                                   const Tensor& next_norm) const {
  return finish(attn_->forward_paged(in.normed, seqs, cache, cache_layer), in.x, next_norm);
}

}  // namespace dseek
