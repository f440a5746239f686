// PagedKVCache: one pool of fixed-size pages that many sequences share, as vLLM's PagedAttention
// and FlashMLA's paged latent cache lay it out. A page holds `page_tokens` consecutive positions of
// one sequence for every cache layer: the [c_kv; k_pe] latent row for MLA models, keys and values
// for MHA/GQA models (the same LayerSpec widths as KVCache), in the model's activation dtype on
// its device (f32 on the CPU; f32 or bf16 on the GPU). Cache layers are the model's
// decoder layers followed by its MTP layers (layer num_hidden_layers + k − 1 for depth k).
//
// A sequence owns a PagedSequence: its page ids in position order and how many positions hold
// rows. Pages are reference-counted, so sequences can share the full pages of a common prompt
// prefix (prefix caching): a full page of prompt tokens is registered under a hash that chains the
// token ids of every page up to and including it (prefix_page_hash); a new sequence looks its
// prompt up page by page and retains the hits instead of recomputing them. A registered page whose
// reference count falls to 0 stays cached (evictable, least recently used first) until allocate()
// needs it.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "model/kv_cache.h"
#include "ops/paged_attention.h"

namespace dseek {

struct PagedSequence {
  std::vector<int32_t> pages;  // page ids, position p lives in pages[p / page_tokens]
  int64_t length = 0;          // positions with rows in the main model's layers
  int64_t mtp_length = 0;      // positions with rows in the MTP layers (lags the main model)
};

class PagedKVCache {
 public:
  PagedKVCache(const std::vector<KVCache::LayerSpec>& layers, int64_t page_tokens,
               int64_t num_pages, DType dtype = DType::F32, Device device = Device::CPU);

  int64_t page_tokens() const { return page_tokens_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t num_layers() const { return int64_t(specs_.size()); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const KVCache::LayerSpec& spec(int64_t layer) const { return specs_[size_t(layer)]; }
  // Pages with no owner: never used, or cached-and-evictable.
  int64_t free_pages() const;
  int64_t cached_pages() const;  // registered pages (in use or evictable)
  size_t nbytes() const;

  // A page with reference count 1 (evicting the least recently used cached page when no page was
  // never used); nullopt when every page is owned.
  std::optional<int32_t> allocate();
  void retain(int32_t page);
  void release(int32_t page);  // at 0: back to the free list, or evictable if registered
  int32_t refcount(int32_t page) const;
  bool is_registered(int32_t page) const;

  // Row storage of (layer, page, slot): key_width values (the latent row for MLA); values only
  // when the layer's value_width > 0. Host pools only (an Error for a GPU pool: write through
  // keys()/values() views there).
  float* key_row(int64_t layer, int32_t page, int64_t slot);
  float* value_row(int64_t layer, int32_t page, int64_t slot);
  const float* key_row(int64_t layer, int32_t page, int64_t slot) const;
  const float* value_row(int64_t layer, int32_t page, int64_t slot) const;
  // A layer's whole pool, [num_pages · page_tokens, width]: page p's slot s is row
  // p · page_tokens + s (values undefined when value_width is 0).
  const Tensor& keys(int64_t layer) const { return keys_[size_t(layer)]; }
  const Tensor& values(int64_t layer) const { return values_[size_t(layer)]; }

  // Prefix caching. register_prefix marks a full page as holding the positions whose chained hash
  // is `hash` (a page is registered at most once; a second page under the same hash is ignored).
  // lookup_prefix returns the page registered under `hash`, retained, or nullopt.
  void register_prefix(uint64_t hash, int32_t page);
  std::optional<int32_t> lookup_prefix(uint64_t hash);

  // Sequence helpers. reserve: appends pages until the sequence can hold `tokens` positions;
  // false (and nothing allocated) if the pool cannot supply them. truncate: drops positions n..
  // (length and mtp_length are clamped; pages past the new end are released). When n ends inside
  // a page that later writes would change under another owner (shared, refcount > 1) the kept
  // rows are first copied into a fresh page (copy-on-write; an Error if the pool has none left,
  // the sequence unchanged); a registered page owned by this sequence alone is unregistered
  // instead, since its positions past n are about to change. release_all: gives every page back
  // and empties the sequence.
  bool reserve(PagedSequence& seq, int64_t tokens);
  void truncate(PagedSequence& seq, int64_t n);
  void release_all(PagedSequence& seq);

 private:
  // (Implementation state: page storage per layer, reference counts, free list, LRU of evictable
  // registered pages, hash → page and page → hash maps. Free to change.)
  std::vector<KVCache::LayerSpec> specs_;
  int64_t page_tokens_ = 0, num_pages_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::vector<Tensor> keys_, values_;  // per layer [num_pages · page_tokens, width]
  std::vector<int32_t> refcount_;
  std::vector<int32_t> never_used_;
  std::list<int32_t> evictable_;  // LRU order, front = oldest
  std::vector<std::list<int32_t>::iterator> evictable_pos_;
  std::unordered_map<uint64_t, int32_t> page_of_hash_;
  std::vector<std::optional<uint64_t>> hash_of_page_;

  void check_page(int32_t page, const char* what) const;
  void unregister(int32_t page);
};

// Where a batch's new rows go, for one batched write per layer: [2, ΣT] i64 on `device`, row 0 the
// position of each new token (sequences in order, sequence i's T_i tokens at pos0_i ..), row 1 the
// pool row that holds it (through the sequence's page table, which must cover it). Built once per
// layer call, uploaded in one copy; the rotation (ops::rope_inplace) takes row 0 and the cache
// writes (ops::scatter_rows) row 1.
Tensor paged_row_index(std::span<const ops::PagedAttentionSeq> seqs, int64_t page_tokens,
                       Device device);

// The chained hash of page k of a token sequence: hash of (hash of page k − 1, the page's ids).
// Page 0 chains from `seed` (0, or a per-model salt).
uint64_t prefix_page_hash(uint64_t previous, std::span<const int32_t> page_ids);

}  // namespace dseek
