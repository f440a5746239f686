#include "model/transformer.h"

#include "core/error.h"
#include "model/kv_cache.h"
#include "model/load_context.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/norm.h"

namespace dseek {

Transformer::Transformer(const ModelConfig& config, const WeightStore& store)
    : config_(config), rope_(rope_params(config)) {
  DSEEK_CHECK(config.hidden_act == "silu", "[model] hidden_act '{}' not supported (silu)",
              config.hidden_act);
  LoadContext ctx(config_, store);
  const int64_t D = config_.hidden_size, V = config_.vocab_size, L = config_.num_hidden_layers;
  embed_tokens_ = ctx.weight("model.embed_tokens.weight", {V, D});
  for (int64_t l = 0; l < L; ++l)
    blocks_.push_back(
        std::make_unique<Block>(config_, rope_, ctx, "model.layers." + std::to_string(l), l));
  norm_ = ctx.weight("model.norm.weight", {D});
  if (config_.tie_word_embeddings && !store.has("lm_head.weight")) {
    lm_head_ = embed_tokens_;
  } else {
    lm_head_ = ctx.weight("lm_head.weight", {V, D});
  }
  // MTP modules: loaded when present (HF's DeepseekV3ForCausalLM drops them; DeepSeek's release
  // keeps them as layers L, L+1, ...).
  for (int64_t k = 0; k < config_.num_nextn_predict_layers; ++k) {
    const std::string prefix = "model.layers." + std::to_string(L + k);
    if (!store.has(prefix + ".eh_proj.weight")) break;
    mtp_.push_back(
        std::make_unique<MtpLayer>(config_, rope_, ctx, prefix, L + k, embed_tokens_, lm_head_));
  }
  unused_ = ctx.unused();
}

void Transformer::check_ids(const std::vector<int32_t>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i)
    DSEEK_CHECK(ids[i] >= 0 && ids[i] < config_.vocab_size,
                "[model] token id {} at position {} is outside the vocabulary [0, {})", ids[i], i,
                config_.vocab_size);
}

Tensor Transformer::hidden(const std::vector<int32_t>& ids) const {
  check_ids(ids);
  Tensor x = ops::embedding(embed_tokens_, ids);
  for (const auto& block : blocks_) x = block->forward(x);
  return ops::rms_norm(x, norm_, config_.rms_norm_eps);
}

Tensor Transformer::logits(const Tensor& hidden) const {
  return ops::linear(hidden, lm_head_);
}

Tensor Transformer::forward(const std::vector<int32_t>& ids) {
  return logits(hidden(ids));
}

Tensor Transformer::forward(const std::vector<int32_t>& ids, KVCache& cache) {
  check_ids(ids);
  DSEEK_CHECK(cache.num_layers() == int64_t(blocks_.size()),
              "[model] cache has {} layers, the model {}", cache.num_layers(), blocks_.size());
  const int64_t T = int64_t(ids.size());
  cache.check_room(T);
  Tensor x = ops::embedding(embed_tokens_, ids);
  for (size_t l = 0; l < blocks_.size(); ++l) x = blocks_[l]->forward(x, cache, int64_t(l));
  cache.advance(T);
  return logits(ops::rms_norm(x, norm_, config_.rms_norm_eps));
}

std::unique_ptr<KVCache> Transformer::new_cache(int64_t max_tokens) const {
  std::vector<KVCache::LayerSpec> specs;
  for (const auto& block : blocks_) specs.push_back(block->attention().cache_spec());
  return std::make_unique<KVCache>(specs, max_tokens);
}

Tensor Transformer::forward_mtp(const std::vector<int32_t>& ids, int depth) {
  DSEEK_CHECK(!mtp_.empty(), "[model] {}: this model has no MTP layers", config_.model_type);
  DSEEK_CHECK(depth >= 1 && depth <= int(mtp_.size()), "[model] MTP depth {} outside [1, {}]",
              depth, mtp_.size());
  const int64_t T = int64_t(ids.size());
  if (T <= depth) {
    check_ids(ids);
    return Tensor::empty({0, config_.vocab_size});
  }
  Tensor h = hidden(ids);  // h^0: the main model's output after its final norm
  for (int k = 1; k <= depth; ++k) {
    const int64_t N = T - k;
    const std::vector<int32_t> next(ids.begin() + k, ids.begin() + k + N);
    h = mtp_[size_t(k - 1)]->forward(next, h.slice(0, 0, N).contiguous());
  }
  return mtp_[size_t(depth - 1)]->logits(h);
}

}  // namespace dseek
