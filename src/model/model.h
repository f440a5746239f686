// The one model implementation behind every DeepSeek architecture dseek runs: deepseek_v3,
// deepseek_v2 (MLA + MoE), deepseek (DeepSeekMoE: multi-head attention + MoE) and llama
// (DeepSeek LLM / Coder 1.x). Configured entirely by config.json.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/placement.h"

namespace dseek {

class KVCache;  // model/kv_cache.h: per-layer cache (the compressed latent for MLA models)
class PagedKVCache;  // model/paged_kv_cache.h: pages shared by many sequences (serving)
struct PagedSequence;

// One sequence's share of a batched forward over a paged cache (continuous batching: sequences in
// prefill and in decode run in the same forward, each at its own positions).
struct BatchSequence {
  std::span<const int32_t> ids;  // new tokens, at positions seq->length .. seq->length + T − 1
  PagedSequence* seq = nullptr;  // pages must already cover length + T; length advances by T
  bool all_logits = false;       // logits (and hidden rows) for every new token, else the last
};

struct BatchOutput {
  // Both on the model's device (a GPU model's stay there; hidden in its activation dtype).
  Tensor logits;  // [rows, V] f32: each sequence's rows in batch order (T rows or 1)
  Tensor hidden;  // [rows, D]: the same rows' final hidden states after model.norm (h^0)
  std::vector<int64_t> first_row;  // per sequence, its first row in logits/hidden
};

// One sequence's share of a batched MTP forward (speculative drafting), depth 1.
struct MtpBatchSequence {
  // Rows at MTP positions seq->mtp_length .. + N − 1: next_ids[i] is the token at position
  // mtp_length + i + 1 and h_prev row i the main model's h^0 at position mtp_length + i.
  std::span<const int32_t> next_ids;
  Tensor h_prev;  // [N, D] f32
  PagedSequence* seq = nullptr;  // mtp_length advances by N
};

class Model {
 public:
  virtual ~Model() = default;

  // Loads config.json and the safetensors weights of a checkpoint directory. With a GPU placement
  // the weights are converted to its activation dtype and copied to the device once, here; the
  // full forward(ids), the cached forward(ids, KVCache&) and the batched forward_batch run there
  // (the MTP paths throw).
  static std::unique_ptr<Model> load(const std::string& dir,
                                     const Placement& placement = Placement());

  virtual const ModelConfig& config() const = 0;

  // Full forward of one sequence, no cache: logits [T, V] in f32 on the host, whatever the
  // placement (a GPU model's logits are converted and copied back).
  virtual Tensor forward(const std::vector<int32_t>& ids) = 0;

  // Incremental forward: runs `ids` at positions cache.size() .. cache.size()+T-1, appends them to
  // the cache and returns their logits [T, V] in f32 on the model's device (a GPU model's stay
  // there: callers copy the rows they need). The cache must come from new_cache (the model's
  // device and activation dtype). Must equal the full forward.
  virtual Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) = 0;
  virtual std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const = 0;

  // Greedy decoding of one sequence: forwards `first` (appending it to the cache), takes the
  // argmax of its logits (the first largest; ops::argmax_rows) as the next token, forwards that,
  // and so on, handing each new token to on_token in order until it returns false: at most
  // max_steps forwards, fewer when the cache fills up. Returns the new tokens. The cache then
  // holds `first` and every returned token but the last (not forwarded yet), as forward(ids,
  // cache) one token at a time would leave it. Throws on NaN logits, as the sampler does. The
  // default forwards and picks on the host; a GPU Transformer with CUDA graphs picks on the device
  // and queues each step before the host reads the previous one's token.
  virtual std::vector<int32_t> decode_greedy(int32_t first, int64_t max_steps, KVCache& cache,
                                             const std::function<bool(int32_t)>& on_token);

  // Multi-token prediction (deepseek_v3 with num_nextn_predict_layers > 0). For ids [T], returns
  // the logits [T - depth, V] of MTP depth `depth` (1-based): row i predicts token i + depth + 1
  // from h^{depth-1}_i and the embedding of token i + depth. h^0 is the main model's output after
  // its final norm (as vLLM feeds real V3 checkpoints); h^k is MTP block k's output before
  // shared_head.norm. h' = eh_proj([enorm(emb(t)); hnorm(h)]), then one decoder block, then
  // shared_head.norm and shared_head.head. Throws if the model has no MTP layers.
  virtual Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) = 0;

  // Batched forward over a paged cache: every sequence's new tokens go through each weight matrix
  // in one GEMM; attention runs per sequence over its own pages. Writes the new rows into the
  // main layers' pages and advances each seq->length. Must equal forward(ids, KVCache&) per
  // sequence (tests hold it to 1e-4 relative).
  // Each sequence needs at least one new token, its pages must cover length + T, and the pages
  // it writes (positions length ..) must be its own (refcount 1: a shared prefix page is never
  // written; PagedKVCache::truncate copies one before a rewind into it). A page registered as a
  // prefix must be registered only after the forward that filled it.
  virtual BatchOutput forward_batch(const std::vector<BatchSequence>& batch,
                                    PagedKVCache& cache) = 0;
  // MTP depth 1 over the paged cache's MTP layer: logits [Σ N, V] (row i of a sequence predicts
  // the token at position mtp_length + i + 2). The main model must have run those positions
  // already (mtp_length + N ≤ length, since h_prev comes from it). Throws if the model has no MTP
  // layers or the cache none for them.
  virtual Tensor forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                                   PagedKVCache& cache) = 0;
  // A pool of `num_pages` pages of `page_tokens` positions over every decoder layer and MTP layer.
  virtual std::unique_ptr<PagedKVCache> new_paged_cache(int64_t page_tokens,
                                                        int64_t num_pages) const = 0;
  virtual int64_t num_mtp_layers() const = 0;
  // Bytes of routed-expert weights this process holds (under an expert shard, its block only;
  // model/placement.h). 0 for a dense model.
  virtual int64_t routed_expert_bytes() const { return 0; }
};

}  // namespace dseek
