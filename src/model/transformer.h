// Transformer: the one Model implementation (transformers' *ForCausalLM):
//   x = embed_tokens(ids);  x = Block_l(x) for l < num_hidden_layers;  h = norm(x)
//   logits = lm_head(h)   (lm_head = embed_tokens when tie_word_embeddings)
// plus the DeepSeek-V3 MTP modules when the checkpoint has them.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/block.h"
#include "model/decode_graph.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/placement.h"
#include "model/rope.h"
#include "model/safetensors.h"

namespace dseek {

class Transformer : public Model {
 public:
  // Reads every weight of `config` from `store` (shape-checked). Tensors the model does not use are
  // listed in unused_tensors(); Model::load warns about them. Under a GPU placement every weight
  // is converted and copied to the device once, here; only forward(ids) runs there then.
  Transformer(const ModelConfig& config, const WeightStore& store,
              const Placement& placement = Placement());

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const std::vector<int32_t>& ids) override;
  Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) override;
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override;
  std::vector<int32_t> decode_greedy(int32_t first, int64_t max_steps, KVCache& cache,
                                     const std::function<bool(int32_t)>& on_token) override;
  Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) override;
  BatchOutput forward_batch(const std::vector<BatchSequence>& batch, PagedKVCache& cache) override;
  Tensor forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                           PagedKVCache& cache) override;
  std::unique_ptr<PagedKVCache> new_paged_cache(int64_t page_tokens,
                                                int64_t num_pages) const override;

  // Final hidden states after model.norm, [T, D] (no cache), on the placement's device in its
  // activation dtype.
  Tensor hidden(const std::vector<int32_t>& ids) const;
  Tensor logits(const Tensor& hidden) const;  // lm_head: [T, D] → [T, V], on hidden's device
  const Placement& placement() const { return placement_; }
  int64_t num_mtp_layers() const override { return int64_t(mtp_.size()); }
  int64_t routed_expert_bytes() const override;
  const std::vector<std::string>& unused_tensors() const { return unused_; }
  const Block& block(int64_t layer) const { return *blocks_[size_t(layer)]; }

  // Batch-1 decode steps (forward(ids, cache) with one id) of an MLA model on a GPU run as a
  // replayed CUDA graph (model/decode_graph.h); on by default, off with DSEEK_CUDA_GRAPHS=0 or
  // here (benchmarks compare both; a graph captured before is dropped, so the next steps capture
  // what the ops' current settings launch). decode_graph_replays() counts the steps that were
  // replays.
  void set_cuda_graphs(bool on) {
    cuda_graphs_ = on;
    decode_graph_.reset();
  }
  bool cuda_graphs_active() const;
  int64_t decode_graph_replays() const { return decode_graph_ ? decode_graph_->replays() : 0; }

 private:
  void check_ids(std::span<const int32_t> ids) const;
  void check_cache(const KVCache& cache) const;  // made by new_cache for this model
  void require_cpu(const char* what) const;
  // The cached forward's work after the ids are on the device: layers, norm, lm_head.
  Tensor cached_step(const Tensor& x, KVCache& cache);

  ModelConfig config_;
  Placement placement_;
  RopeParams rope_;  // referenced by the attention layers
  Tensor embed_tokens_, norm_, lm_head_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::vector<std::unique_ptr<MtpLayer>> mtp_;
  std::vector<std::string> unused_;
  bool cuda_graphs_ = true;
  bool fp8_linears_ = false;  // FP8 projections: their activation checks synchronise (no graphs)
  std::unique_ptr<DecodeGraph> decode_graph_;
};

}  // namespace dseek
