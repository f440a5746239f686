#include "model/mtp.h"

#include <cstring>

#include "core/error.h"
#include "model/load_context.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/norm.h"

namespace dseek {

MtpLayer::MtpLayer(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
                   const std::string& prefix, int64_t layer, const Tensor& main_embed,
                   const Tensor& main_head)
    : eps_(config.rms_norm_eps) {
  const int64_t D = config.hidden_size, V = config.vocab_size;
  embed_tokens_ = ctx.optional_weight(prefix + ".embed_tokens.weight", {V, D});
  if (!embed_tokens_.defined()) embed_tokens_ = main_embed;
  enorm_ = ctx.weight(prefix + ".enorm.weight", {D});
  hnorm_ = ctx.weight(prefix + ".hnorm.weight", {D});
  eh_proj_ = ctx.weight(prefix + ".eh_proj.weight", {D, 2 * D});
  head_norm_ = ctx.weight(prefix + ".shared_head.norm.weight", {D});
  head_ = ctx.optional_weight(prefix + ".shared_head.head.weight", {V, D});
  if (!head_.defined()) head_ = main_head;
  block_ = std::make_unique<Block>(config, rope, ctx, prefix, layer);
}

Tensor MtpLayer::block_input(const std::vector<int32_t>& next_ids, const Tensor& h_prev) const {
  const int64_t N = int64_t(next_ids.size()), D = h_prev.size(1);
  DSEEK_CHECK(h_prev.size(0) == N, "[mtp] {} tokens but {} hidden rows", N, h_prev.size(0));
  const Tensor e = ops::rms_norm(ops::embedding(embed_tokens_, next_ids), enorm_, eps_);
  const Tensor h = ops::rms_norm(h_prev, hnorm_, eps_);
  Tensor cat = Tensor::empty({N, 2 * D});
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(cat.data<float>() + i * 2 * D, e.data<float>() + i * D, size_t(D) * sizeof(float));
    std::memcpy(cat.data<float>() + i * 2 * D + D, h.data<float>() + i * D,
                size_t(D) * sizeof(float));
  }
  return ops::linear(cat, eh_proj_);
}

Tensor MtpLayer::forward(const std::vector<int32_t>& next_ids, const Tensor& h_prev) const {
  return block_->forward(block_input(next_ids, h_prev));
}

Tensor MtpLayer::forward_paged(const std::vector<int32_t>& next_ids, const Tensor& h_prev,
                               std::span<const ops::PagedAttentionSeq> seqs, PagedKVCache& cache,
                               int64_t cache_layer) const {
  return block_->forward_paged(block_input(next_ids, h_prev), seqs, cache, cache_layer);
}

Tensor MtpLayer::logits(const Tensor& h) const {
  return ops::linear(ops::rms_norm(h, head_norm_, eps_), head_);
}

}  // namespace dseek
