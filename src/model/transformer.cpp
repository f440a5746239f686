#include "model/transformer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/env.h"
#include "core/error.h"
#include "model/kv_cache.h"
#include "model/load_context.h"
#include "model/paged_kv_cache.h"
#include "ops/embedding.h"
#include "ops/fp8_nan_check.h"
#include "ops/linear.h"
#include "ops/norm.h"

namespace dseek {
namespace {

// Checks sequence i's share of a batched forward before anything is written: T ≥ 1 rows at
// positions pos0 .. pos0 + T − 1 inside its pages, every page it reads owned, every page it writes
// owned by it alone (another owner would see its rows change).
void check_paged_rows(const PagedKVCache& cache, const PagedSequence* seq, int64_t pos0, int64_t T,
                      size_t i, const char* what) {
  DSEEK_CHECK(seq != nullptr, "[model] {}: sequence {} has no PagedSequence", what, i);
  DSEEK_CHECK(T >= 1, "[model] {}: sequence {} has no new tokens", what, i);
  const int64_t pt = cache.page_tokens(), end = pos0 + T;
  DSEEK_CHECK(int64_t(seq->pages.size()) * pt >= end,
              "[model] {}: sequence {} needs {} positions but its {} pages hold {}", what, i, end,
              seq->pages.size(), int64_t(seq->pages.size()) * pt);
  for (int64_t p = 0; p < (end + pt - 1) / pt; ++p) {
    const int32_t page = seq->pages[size_t(p)];
    DSEEK_CHECK(page >= 0 && page < cache.num_pages() && cache.refcount(page) > 0,
                "[model] {}: sequence {} page {} ({}) is not an owned page of the cache", what, i,
                p, page);
    DSEEK_CHECK(p < pos0 / pt || cache.refcount(page) == 1,
                "[model] {}: sequence {} would write into page {} ({}), shared with {} others",
                what, i, p, page, cache.refcount(page) - 1);
  }
}

void check_distinct(std::vector<const PagedSequence*> seqs, const char* what) {
  std::sort(seqs.begin(), seqs.end());
  DSEEK_CHECK(std::adjacent_find(seqs.begin(), seqs.end()) == seqs.end(),
              "[model] {}: a sequence appears twice in the batch", what);
}

// Rows `rows` of x [N, D] (all of x when they are 0 .. N − 1), on x's device.
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  if (int64_t(rows.size()) == x.size(0)) return x;
  const int64_t D = x.size(1);
  Tensor out = Tensor::empty({int64_t(rows.size()), D}, x.dtype(), x.device());
  if (!x.is_cuda()) {
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(out.data<float>() + int64_t(i) * D, x.data<float>() + rows[i] * D,
                  size_t(D) * sizeof(float));
    return out;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i], o = int64_t(i);
    out.slice(0, o, o + 1).copy_from(x.slice(0, r, r + 1));
  }
  return out;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, const WeightStore& store,
                         const Placement& placement)
    : config_(config), placement_(placement), rope_(rope_params(config)) {
  DSEEK_CHECK(config.hidden_act == "silu", "[model] hidden_act '{}' not supported (silu)",
              config.hidden_act);
  validate(placement_);
  if (placement_.experts.sharded()) {
    DSEEK_CHECK(config_.n_routed_experts > 0,
                "[model] expert parallel: this {} model has no routed experts to split over {} "
                "ranks",
                config_.model_type, placement_.experts.ranks);
    (void)placement_.experts.count(config_.n_routed_experts);  // E divisible by the ranks
  }
  // As load_linear decides (model/linear_weight.cpp); block sizes alone default to 128, so the
  // checkpoint's own quantization_config says whether there are FP8 weights at all.
  fp8_linears_ = placement_.fp8 == Fp8Weights::Keep && config_.quantization.quant_method == "fp8" &&
                 store.fp8_blocks_128();
  LoadContext ctx(config_, store, placement_);
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

void Transformer::check_ids(std::span<const int32_t> ids) const {
  for (size_t i = 0; i < ids.size(); ++i)
    DSEEK_CHECK(ids[i] >= 0 && ids[i] < config_.vocab_size,
                "[model] token id {} at position {} is outside the vocabulary [0, {})", ids[i], i,
                config_.vocab_size);
}

void Transformer::require_cpu(const char* what) const {
  DSEEK_CHECK(placement_.device == Device::CPU,
              "[model] {} runs on the CPU only; a model placed on the {} supports forward(ids), "
              "the cached forward and forward_batch",
              what, device_name(placement_.device));
}

Tensor Transformer::hidden(const std::vector<int32_t>& ids) const {
  check_ids(ids);
  // The residual stream starts in the activation dtype (bf16 straight from the table on a GPU).
  Tensor x = ops::embedding(embed_tokens_, ids, placement_.act);
  for (const auto& block : blocks_) x = block->forward(x);
  return ops::rms_norm(x, norm_, config_.rms_norm_eps);
}

Tensor Transformer::logits(const Tensor& hidden) const {
  return ops::linear(hidden, lm_head_);
}

Tensor Transformer::forward(const std::vector<int32_t>& ids) {
  // FP8 projections on the GPU report NaN/Inf input once a forward rather than with a
  // synchronisation per projection (ops/fp8_nan_check.h); the error still names the tensor.
  ops::DeferredFp8Checks fp8_checks;
  const Tensor h = hidden(ids);
  fp8_checks.check();
  Tensor out = logits(h);
  if (out.dtype() != DType::F32) out = out.to(DType::F32);  // bf16 logits of a GPU model
  return out.to(Device::CPU);
}

void Transformer::check_cache(const KVCache& cache) const {
  DSEEK_CHECK(cache.num_layers() == int64_t(blocks_.size()),
              "[model] cache has {} layers, the model {}", cache.num_layers(), blocks_.size());
  DSEEK_CHECK(cache.device() == placement_.device && cache.dtype() == placement_.act,
              "[model] the cache holds {} rows on the {}, the model runs {} on the {} (make it "
              "with new_cache)",
              dtype_name(cache.dtype()), device_name(cache.device()), dtype_name(placement_.act),
              device_name(placement_.device));
}

Tensor Transformer::forward(const std::vector<int32_t>& ids, KVCache& cache) {
  check_ids(ids);
  check_cache(cache);
  const int64_t T = int64_t(ids.size());
  cache.check_room(T);
  ops::DeferredFp8Checks fp8_checks;  // see forward(ids); read before the cache advances
  Tensor out;
  if (T == 1 && cuda_graphs_active()) {
    if (!decode_graph_) decode_graph_ = std::make_unique<DecodeGraph>();
    out = decode_graph_->step(ids[0], cache, [&](const Tensor& device_ids) {
      return cached_step(ops::embedding_device_ids(embed_tokens_, device_ids, placement_.act),
                         cache);
    });
  } else {
    out = cached_step(ops::embedding(embed_tokens_, ids, placement_.act), cache);
  }
  fp8_checks.check();
  cache.advance(T);
  if (out.dtype() != DType::F32) out = out.to(DType::F32);  // bf16 logits of a GPU model
  return out;
}

std::vector<int32_t> Transformer::decode_greedy(int32_t first, int64_t max_steps, KVCache& cache,
                                                const std::function<bool(int32_t)>& on_token) {
  if (!cuda_graphs_active()) return Model::decode_greedy(first, max_steps, cache, on_token);
  check_ids(std::span<const int32_t>(&first, 1));
  check_cache(cache);
  std::vector<int32_t> produced;
  if (max_steps <= 0 || cache.size() >= cache.capacity()) return produced;
  if (!decode_graph_) decode_graph_ = std::make_unique<DecodeGraph>();
  const DecodeGraph::Body body = [&](const Tensor& device_ids) {
    return cached_step(ops::embedding_device_ids(embed_tokens_, device_ids, placement_.act), cache);
  };
  // Step s reads the id step s − 1 left on the device and copies its own pick into slot s % 2;
  // the host queues step s + 1 before it waits for step s's id, so the GPU never waits for it.
  auto queue = [&](int64_t s) {
    decode_graph_->greedy_queue(cache, body, int(s % 2));
    cache.advance(1);
  };
  // A step queued ahead of a stop appended an id nobody will see: it comes back out of the cache
  // (its rows past the new end are overwritten by later steps).
  auto take_back = [&] {
    cuda::synchronize();
    cache.truncate(cache.size() - 1);
  };
  decode_graph_->greedy_start(first, cache);
  queue(0);
  for (int64_t s = 0; s < max_steps; ++s) {
    const bool ahead = s + 1 < max_steps && cache.size() < cache.capacity();
    if (ahead) queue(s + 1);
    bool more = false;
    try {
      produced.push_back(decode_graph_->greedy_token(int(s % 2)));
      more = on_token(produced.back());
    } catch (...) {
      if (ahead) take_back();
      throw;
    }
    if (!more && ahead) take_back();
    if (!more || !ahead) break;
  }
  return produced;
}

Tensor Transformer::cached_step(const Tensor& x_in, KVCache& cache) {
  // Each layer hands the next its input already normed (Block::Stream): the last one with the
  // model's final norm.
  Block::Stream stream = blocks_.front()->begin(x_in);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Tensor& next = l + 1 < blocks_.size() ? blocks_[l + 1]->input_layernorm() : norm_;
    stream = blocks_[l]->forward(stream, cache, int64_t(l), next);
  }
  return logits(stream.normed);
}

bool Transformer::cuda_graphs_active() const {
  static const bool env_off = [] { return env_is("DSEEK_CUDA_GRAPHS", "0"); }();
  // MLA layers read their positions on the device (Mla::forward_cached); other attention kinds
  // and expert-parallel MoE (an MPI all-reduce per layer) would bake host values into a graph,
  // and FP8 projections take their NaN flags from a scope each forward (ops/fp8_nan_check.h),
  // which a replayed graph would not renew.
  return cuda_graphs_ && !env_off && placement_.device == Device::CUDA && config_.is_mla() &&
         !placement_.experts.sharded() && !fp8_linears_;
}

int64_t Transformer::routed_expert_bytes() const {
  int64_t bytes = 0;
  for (const auto& block : blocks_)
    if (block->moe()) bytes += block->moe()->routed_expert_bytes();
  for (const auto& mtp : mtp_)
    if (mtp->block().moe()) bytes += mtp->block().moe()->routed_expert_bytes();
  return bytes;
}

std::unique_ptr<KVCache> Transformer::new_cache(int64_t max_tokens) const {
  std::vector<KVCache::LayerSpec> specs;
  for (const auto& block : blocks_) specs.push_back(block->attention().cache_spec());
  return std::make_unique<KVCache>(specs, max_tokens, placement_.act, placement_.device);
}

Tensor Transformer::forward_mtp(const std::vector<int32_t>& ids, int depth) {
  require_cpu("the MTP forward");
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

BatchOutput Transformer::forward_batch(const std::vector<BatchSequence>& batch,
                                       PagedKVCache& cache) {
  const int64_t L = int64_t(blocks_.size());
  DSEEK_CHECK(cache.num_layers() >= L,
              "[model] forward_batch: the paged cache has {} layers, the "
              "model {}",
              cache.num_layers(), L);
  DSEEK_CHECK(cache.device() == placement_.device && cache.dtype() == placement_.act,
              "[model] forward_batch: the paged cache holds {} rows on the {}, the model runs {} "
              "on the {} (make it with new_paged_cache)",
              dtype_name(cache.dtype()), device_name(cache.device()), dtype_name(placement_.act),
              device_name(placement_.device));
  std::vector<int32_t> ids;
  std::vector<ops::PagedAttentionSeq> seqs;
  std::vector<const PagedSequence*> owners;
  for (size_t i = 0; i < batch.size(); ++i) {
    const BatchSequence& b = batch[i];
    const int64_t T = int64_t(b.ids.size());
    check_paged_rows(cache, b.seq, b.seq ? b.seq->length : 0, T, i, "forward_batch");
    check_ids(b.ids);
    ids.insert(ids.end(), b.ids.begin(), b.ids.end());
    seqs.push_back({T, b.seq->length, b.seq->pages});
    owners.push_back(b.seq);
  }
  check_distinct(owners, "forward_batch");

  BatchOutput out;
  if (batch.empty()) {
    out.logits = Tensor::empty({0, config_.vocab_size});
    out.hidden = Tensor::empty({0, config_.hidden_size});
    return out;
  }
  ops::DeferredFp8Checks fp8_checks;  // see forward(ids); read before the sequences advance
  // The layers hand each other their inputs normed (Block::Stream); the final norm waits for the
  // rows that want logits (below).
  Block::Stream stream = blocks_.front()->begin(ops::embedding(embed_tokens_, ids, placement_.act));
  for (int64_t l = 0; l < L; ++l) {
    const Tensor next = l + 1 < L ? blocks_[size_t(l + 1)]->input_layernorm() : Tensor();
    stream = blocks_[size_t(l)]->forward_paged(stream, seqs, cache, l, next);
  }
  const Tensor x = stream.x;
  fp8_checks.check();

  // Only the rows whose logits were asked for go through the final norm and lm_head: with long
  // prefills in the batch, lm_head over every row would dominate.
  std::vector<int64_t> rows;
  int64_t row0 = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t T = seqs[i].T;
    out.first_row.push_back(int64_t(rows.size()));
    if (batch[i].all_logits) {
      for (int64_t t = 0; t < T; ++t) rows.push_back(row0 + t);
    } else {
      rows.push_back(row0 + T - 1);
    }
    row0 += T;
    batch[i].seq->length += T;
  }
  out.hidden = ops::rms_norm(gather_rows(x, rows), norm_, config_.rms_norm_eps);
  out.logits = logits(out.hidden);
  if (out.logits.dtype() != DType::F32) out.logits = out.logits.to(DType::F32);  // bf16 on a GPU
  return out;
}

Tensor Transformer::forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                                      PagedKVCache& cache) {
  require_cpu("the batched MTP forward");
  DSEEK_CHECK(!mtp_.empty(), "[model] {}: this model has no MTP layers", config_.model_type);
  const int64_t layer = int64_t(blocks_.size()), D = config_.hidden_size;
  DSEEK_CHECK(cache.num_layers() > layer,
              "[model] forward_mtp_batch: the paged cache has no MTP layer ({} layers)",
              cache.num_layers());
  std::vector<int32_t> next_ids;
  std::vector<ops::PagedAttentionSeq> seqs;
  std::vector<const PagedSequence*> owners;
  int64_t rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const MtpBatchSequence& b = batch[i];
    const int64_t N = int64_t(b.next_ids.size());
    check_paged_rows(cache, b.seq, b.seq ? b.seq->mtp_length : 0, N, i, "forward_mtp_batch");
    DSEEK_CHECK(b.seq->mtp_length + N <= b.seq->length,
                "[model] forward_mtp_batch: sequence {} asks for MTP positions up to {} but the "
                "main model has run {}",
                i, b.seq->mtp_length + N, b.seq->length);
    DSEEK_CHECK(
        b.h_prev.defined() && b.h_prev.dtype() == DType::F32 && b.h_prev.shape() == Shape({N, D}),
        "[model] forward_mtp_batch: sequence {} h_prev must be f32 [{}, {}], got {}", i, N, D,
        b.h_prev.defined() ? shape_str(b.h_prev.shape()) : std::string("undefined"));
    check_ids(b.next_ids);
    next_ids.insert(next_ids.end(), b.next_ids.begin(), b.next_ids.end());
    seqs.push_back({N, b.seq->mtp_length, b.seq->pages});
    owners.push_back(b.seq);
    rows += N;
  }
  check_distinct(owners, "forward_mtp_batch");
  if (batch.empty()) return Tensor::empty({0, config_.vocab_size});

  Tensor h_prev = Tensor::empty({rows, D});
  int64_t row0 = 0;
  for (const MtpBatchSequence& b : batch) {
    const Tensor h = b.h_prev.contiguous();
    std::memcpy(h_prev.data<float>() + row0 * D, h.data<float>(),
                size_t(h.numel()) * sizeof(float));
    row0 += h.size(0);
  }
  const Tensor h = mtp_[0]->forward_paged(next_ids, h_prev, seqs, cache, layer);
  for (const MtpBatchSequence& b : batch) b.seq->mtp_length += int64_t(b.next_ids.size());
  return mtp_[0]->logits(h);
}

std::unique_ptr<PagedKVCache> Transformer::new_paged_cache(int64_t page_tokens,
                                                           int64_t num_pages) const {
  std::vector<KVCache::LayerSpec> specs;
  for (const auto& block : blocks_) specs.push_back(block->attention().cache_spec());
  for (const auto& mtp : mtp_) specs.push_back(mtp->block().attention().cache_spec());
  return std::make_unique<PagedKVCache>(specs, page_tokens, num_pages, placement_.act,
                                        placement_.device);
}

}  // namespace dseek
