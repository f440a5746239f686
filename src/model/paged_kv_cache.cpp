// PagedKVCache bookkeeping. A page is in exactly one of three states:
//   free       refcount 0, unregistered, on never_used_ (a stack: allocate pops the back)
//   evictable  refcount 0, registered, on evictable_ (LRU: released pages join the back,
//              allocate evicts from the front once never_used_ is empty)
//   owned      refcount > 0 (registered or not), on no list
// retain of an evictable page (a prefix-cache hit) takes it off the LRU list.
#include "model/paged_kv_cache.h"

#include <algorithm>

#include "core/error.h"

namespace dseek {

PagedKVCache::PagedKVCache(const std::vector<KVCache::LayerSpec>& layers, int64_t page_tokens,
                           int64_t num_pages, DType dtype, Device device)
    : specs_(layers),
      page_tokens_(page_tokens),
      num_pages_(num_pages),
      dtype_(dtype),
      device_(device) {
  DSEEK_CHECK(dtype == DType::F32 || (dtype == DType::BF16 && device == Device::CUDA),
              "[paged_kv_cache] rows must be f32, or bf16 on the GPU; got {} on the {}",
              dtype_name(dtype), device_name(device));
  DSEEK_CHECK(page_tokens > 0, "[paged_kv_cache] page_tokens must be positive, got {}",
              page_tokens);
  DSEEK_CHECK(num_pages > 0 && num_pages <= INT32_MAX,
              "[paged_kv_cache] num_pages must be in [1, 2^31), got {}", num_pages);
  DSEEK_CHECK(!layers.empty(), "[paged_kv_cache] no layers");
  const int64_t rows = page_tokens * num_pages;
  for (const KVCache::LayerSpec& l : layers) {
    DSEEK_CHECK(l.key_width > 0 && l.value_width >= 0, "[paged_kv_cache] bad layer widths {} / {}",
                l.key_width, l.value_width);
    keys_.push_back(Tensor::zeros({rows, l.key_width}, dtype, device));
    values_.push_back(l.value_width > 0 ? Tensor::zeros({rows, l.value_width}, dtype, device)
                                        : Tensor());
  }
  refcount_.assign(size_t(num_pages), 0);
  evictable_pos_.assign(size_t(num_pages), evictable_.end());
  hash_of_page_.assign(size_t(num_pages), std::nullopt);
  // Pushed in reverse so that a fresh pool hands out pages 0, 1, 2, ...
  never_used_.reserve(size_t(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) never_used_.push_back(int32_t(p));
}

int64_t PagedKVCache::free_pages() const {
  return int64_t(never_used_.size() + evictable_.size());
}

int64_t PagedKVCache::cached_pages() const {
  return int64_t(page_of_hash_.size());
}

size_t PagedKVCache::nbytes() const {
  size_t n = 0;
  for (size_t i = 0; i < keys_.size(); ++i)
    n += keys_[i].nbytes() + (values_[i].defined() ? values_[i].nbytes() : 0);
  return n;
}

void PagedKVCache::check_page(int32_t page, const char* what) const {
  DSEEK_CHECK(page >= 0 && page < num_pages_, "[paged_kv_cache] {}: page {} outside [0, {})", what,
              page, num_pages_);
}

void PagedKVCache::unregister(int32_t page) {
  auto& hash = hash_of_page_[size_t(page)];
  if (!hash) return;
  page_of_hash_.erase(*hash);
  hash.reset();
}

std::optional<int32_t> PagedKVCache::allocate() {
  int32_t page;
  if (!never_used_.empty()) {
    page = never_used_.back();
    never_used_.pop_back();
  } else if (!evictable_.empty()) {
    page = evictable_.front();
    evictable_.pop_front();
    evictable_pos_[size_t(page)] = evictable_.end();
    unregister(page);
  } else {
    return std::nullopt;
  }
  refcount_[size_t(page)] = 1;
  return page;
}

void PagedKVCache::retain(int32_t page) {
  check_page(page, "retain");
  int32_t& rc = refcount_[size_t(page)];
  if (rc == 0) {
    // Only a cached page can come back from refcount 0; a free page must go through allocate().
    DSEEK_CHECK(hash_of_page_[size_t(page)].has_value(),
                "[paged_kv_cache] retain: page {} is free (allocate it instead)", page);
    evictable_.erase(evictable_pos_[size_t(page)]);
    evictable_pos_[size_t(page)] = evictable_.end();
  }
  ++rc;
}

void PagedKVCache::release(int32_t page) {
  check_page(page, "release");
  int32_t& rc = refcount_[size_t(page)];
  DSEEK_CHECK(rc > 0, "[paged_kv_cache] release: page {} is not owned", page);
  if (--rc > 0) return;
  if (hash_of_page_[size_t(page)]) {
    evictable_.push_back(page);
    evictable_pos_[size_t(page)] = std::prev(evictable_.end());
  } else {
    never_used_.push_back(page);
  }
}

int32_t PagedKVCache::refcount(int32_t page) const {
  check_page(page, "refcount");
  return refcount_[size_t(page)];
}

bool PagedKVCache::is_registered(int32_t page) const {
  check_page(page, "is_registered");
  return hash_of_page_[size_t(page)].has_value();
}

float* PagedKVCache::key_row(int64_t layer, int32_t page, int64_t slot) {
  DSEEK_CHECK(device_ == Device::CPU, "[paged_kv_cache] key_row: the pool is on the {}",
              device_name(device_));
  const Tensor& t = keys_[size_t(layer)];
  return t.data<float>() + (int64_t(page) * page_tokens_ + slot) * t.size(1);
}

float* PagedKVCache::value_row(int64_t layer, int32_t page, int64_t slot) {
  DSEEK_CHECK(device_ == Device::CPU, "[paged_kv_cache] value_row: the pool is on the {}",
              device_name(device_));
  const Tensor& t = values_[size_t(layer)];
  return t.data<float>() + (int64_t(page) * page_tokens_ + slot) * t.size(1);
}

const float* PagedKVCache::key_row(int64_t layer, int32_t page, int64_t slot) const {
  return const_cast<PagedKVCache*>(this)->key_row(layer, page, slot);
}

const float* PagedKVCache::value_row(int64_t layer, int32_t page, int64_t slot) const {
  return const_cast<PagedKVCache*>(this)->value_row(layer, page, slot);
}

void PagedKVCache::register_prefix(uint64_t hash, int32_t page) {
  check_page(page, "register_prefix");
  DSEEK_CHECK(refcount_[size_t(page)] > 0, "[paged_kv_cache] register_prefix: page {} is not owned",
              page);
  if (hash_of_page_[size_t(page)] || page_of_hash_.count(hash)) return;
  page_of_hash_.emplace(hash, page);
  hash_of_page_[size_t(page)] = hash;
}

std::optional<int32_t> PagedKVCache::lookup_prefix(uint64_t hash) {
  const auto it = page_of_hash_.find(hash);
  if (it == page_of_hash_.end()) return std::nullopt;
  retain(it->second);
  return it->second;
}

bool PagedKVCache::reserve(PagedSequence& seq, int64_t tokens) {
  DSEEK_CHECK(tokens >= 0, "[paged_kv_cache] reserve: negative token count {}", tokens);
  const int64_t need = (tokens + page_tokens_ - 1) / page_tokens_ - int64_t(seq.pages.size());
  if (need <= 0) return true;
  if (free_pages() < need) return false;
  for (int64_t i = 0; i < need; ++i) seq.pages.push_back(*allocate());
  return true;
}

void PagedKVCache::truncate(PagedSequence& seq, int64_t n) {
  const int64_t held = int64_t(seq.pages.size()) * page_tokens_;
  DSEEK_CHECK(n >= 0 && n <= held,
              "[paged_kv_cache] truncate to {} positions: the sequence holds {}", n, held);
  const size_t keep = size_t((n + page_tokens_ - 1) / page_tokens_);
  if (n % page_tokens_ != 0) {
    const int32_t last = seq.pages[keep - 1];
    if (refcount_[size_t(last)] > 1) {
      // Shared: later writes at n.. must not reach the other owners' rows.
      const std::optional<int32_t> copy = allocate();
      DSEEK_CHECK(copy.has_value(),
                  "[paged_kv_cache] truncate to {} positions: no free page to copy shared page {}",
                  n, last);
      // The kept rows, on the pool's device (a copy of views).
      const int64_t rows = n % page_tokens_;
      const int64_t from = int64_t(last) * page_tokens_, to = int64_t(*copy) * page_tokens_;
      for (int64_t l = 0; l < num_layers(); ++l) {
        for (const Tensor* pool : {&keys_[size_t(l)], &values_[size_t(l)]})
          if (pool->defined())
            pool->slice(0, to, to + rows).copy_from(pool->slice(0, from, from + rows));
      }
      release(last);
      seq.pages[keep - 1] = *copy;
    } else {
      unregister(last);
    }
  }
  for (size_t i = keep; i < seq.pages.size(); ++i) release(seq.pages[i]);
  seq.pages.resize(keep);
  seq.length = std::min(seq.length, n);
  seq.mtp_length = std::min(seq.mtp_length, n);
}

void PagedKVCache::release_all(PagedSequence& seq) {
  for (const int32_t page : seq.pages) release(page);
  seq.pages.clear();
  seq.length = 0;
  seq.mtp_length = 0;
}

namespace {

// splitmix64's finaliser: a bijective 64-bit mix in which every input bit reaches every output bit.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

uint64_t prefix_page_hash(uint64_t previous, std::span<const int32_t> page_ids) {
  // Each step folds one id into the running state and re-mixes, so the hash depends on the order
  // of the ids; the count is folded in last so pages of different lengths never collide by
  // construction.
  uint64_t h = mix64(previous + 0x9e3779b97f4a7c15ULL);
  for (const int32_t id : page_ids) h = mix64(h ^ (uint64_t(uint32_t(id)) + 0x9e3779b97f4a7c15ULL));
  return mix64(h ^ uint64_t(page_ids.size()));
}

Tensor paged_row_index(std::span<const ops::PagedAttentionSeq> seqs, int64_t page_tokens,
                       Device device) {
  int64_t N = 0;
  for (const ops::PagedAttentionSeq& s : seqs) N += s.T;
  Tensor index = Tensor::empty({2, N}, DType::I64);
  int64_t* positions = index.data<int64_t>();
  int64_t* rows = positions + N;
  int64_t i = 0;
  for (size_t k = 0; k < seqs.size(); ++k) {
    const ops::PagedAttentionSeq& s = seqs[k];
    DSEEK_CHECK(int64_t(s.pages.size()) * page_tokens >= s.pos0 + s.T,
                "[paged cache] sequence {}: {} pages do not cover positions up to {}", k,
                s.pages.size(), s.pos0 + s.T);
    for (int64_t t = 0; t < s.T; ++t, ++i) {
      const int64_t pos = s.pos0 + t;
      positions[i] = pos;
      rows[i] = int64_t(s.pages[size_t(pos / page_tokens)]) * page_tokens + pos % page_tokens;
    }
  }
  return device == Device::CPU ? index : index.to(device);
}

}  // namespace dseek
