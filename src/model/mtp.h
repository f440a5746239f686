// MtpLayer: one DeepSeek-V3 multi-token-prediction module, stored as model.layers.<L + k − 1>
// (L = num_hidden_layers) with the tensors embed_tokens, enorm, hnorm, eh_proj, shared_head.norm,
// shared_head.head and an ordinary decoder block. For depth k, row i:
//   h'_i  = eh_proj([enorm(emb(t_{i+k})); hnorm(h^{k−1}_i)])      (concatenation order as vLLM)
//   h^k   = Block(h')   at positions 0 .. N−1
//   logits = shared_head.head(shared_head.norm(h^k))
// A checkpoint without its own embed_tokens / shared_head.head uses the main model's (they are
// shared in DeepSeek-V3).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/block.h"

namespace dseek {

class MtpLayer {
 public:
  MtpLayer(const ModelConfig& config, const RopeParams& rope, LoadContext& ctx,
           const std::string& prefix, int64_t layer, const Tensor& main_embed,
           const Tensor& main_head);

  // next_ids [N] (tokens i + k), h_prev [N, D] → h^k [N, D] (before shared_head.norm).
  Tensor forward(const std::vector<int32_t>& next_ids, const Tensor& h_prev) const;
  // The same for the rows of several sequences at their own MTP positions (seqs, as
  // Block::forward_paged takes them), the block's rows kept in layer `cache_layer` of the pages.
  Tensor forward_paged(const std::vector<int32_t>& next_ids, const Tensor& h_prev,
                       std::span<const ops::PagedAttentionSeq> seqs, PagedKVCache& cache,
                       int64_t cache_layer) const;
  // [N, D] → [N, V].
  Tensor logits(const Tensor& h) const;
  const Block& block() const { return *block_; }

 private:
  // h' = eh_proj([enorm(emb(next_ids)); hnorm(h_prev)]), [N, D].
  Tensor block_input(const std::vector<int32_t>& next_ids, const Tensor& h_prev) const;

  double eps_;
  Tensor embed_tokens_, enorm_, hnorm_, eh_proj_, head_norm_, head_;
  std::unique_ptr<Block> block_;
};

}  // namespace dseek
