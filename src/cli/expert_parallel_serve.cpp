#include "cli/expert_parallel_serve.h"

#include <span>

#include "core/error.h"
#include "dist/process_group.h"
#include "model/kv_cache.h"
#include "model/paged_kv_cache.h"

namespace dseek::cli {

namespace {

// A message is a header [kind, payload length] and, when the length is not 0, the payload; both
// broadcast from rank 0 as f32, whose integers are exact below 2^24 (token ids, positions, page
// ids and counts all are).
enum Kind : int { kStop = 0, kCache = 1, kBatch = 2 };

constexpr int64_t kExact = int64_t(1) << 24;

void put(std::vector<float>& out, int64_t value) {
  DSEEK_CHECK(value >= 0 && value < kExact,
              "[serve] expert parallel: value {} does not fit the step broadcast", value);
  out.push_back(float(value));
}

void send(dist::ProcessGroup& group, Kind kind, std::vector<float> payload) {
  float header[2] = {float(kind), 0.0f};
  DSEEK_CHECK(int64_t(payload.size()) < kExact,
              "[serve] expert parallel: a step of {} values does not fit the broadcast",
              payload.size());
  header[1] = float(payload.size());
  group.broadcast(std::span<float>(header, 2), 0);
  if (!payload.empty()) group.broadcast(std::span<float>(payload), 0);
}

// Reads the payload as integers, in order; checks that it is not read past its end.
struct Reader {
  const std::vector<float>& v;
  size_t at = 0;
  int64_t next() {
    DSEEK_CHECK(at < v.size(), "[serve] expert parallel: step message ends early");
    return int64_t(v[at++]);
  }
};

}  // namespace

ExpertParallelLeader::ExpertParallelLeader(Model& model, dist::ProcessGroup& group)
    : model_(model), group_(group) {}

ExpertParallelLeader::~ExpertParallelLeader() {
  try {
    stop();
  } catch (...) {
    // A destructor must not throw; MPI errors end the job anyway.
  }
}

void ExpertParallelLeader::stop() {
  if (stopped_) return;
  stopped_ = true;
  send(group_, kStop, {});
}

Tensor ExpertParallelLeader::forward(const std::vector<int32_t>&) {
  fail("[serve] expert parallel: only batched forwards are mirrored to the other ranks");
}
Tensor ExpertParallelLeader::forward(const std::vector<int32_t>&, KVCache&) {
  fail("[serve] expert parallel: only batched forwards are mirrored to the other ranks");
}
std::unique_ptr<KVCache> ExpertParallelLeader::new_cache(int64_t) const {
  fail("[serve] expert parallel: only paged caches are mirrored to the other ranks");
}
Tensor ExpertParallelLeader::forward_mtp(const std::vector<int32_t>&, int) {
  fail("[serve] expert parallel: MTP forwards are not mirrored to the other ranks");
}
Tensor ExpertParallelLeader::forward_mtp_batch(const std::vector<MtpBatchSequence>&,
                                               PagedKVCache&) {
  fail("[serve] expert parallel: MTP forwards are not mirrored to the other ranks");
}

std::unique_ptr<PagedKVCache> ExpertParallelLeader::new_paged_cache(int64_t page_tokens,
                                                                    int64_t num_pages) const {
  std::vector<float> payload;
  put(payload, page_tokens);
  put(payload, num_pages);
  send(group_, kCache, std::move(payload));
  return model_.new_paged_cache(page_tokens, num_pages);
}

BatchOutput ExpertParallelLeader::forward_batch(const std::vector<BatchSequence>& batch,
                                                PagedKVCache& cache) {
  DSEEK_CHECK(!stopped_, "[serve] expert parallel: forward_batch after stop()");
  std::vector<float> payload;
  put(payload, int64_t(batch.size()));
  for (const BatchSequence& b : batch) {
    DSEEK_CHECK(b.seq != nullptr, "[serve] expert parallel: a batch sequence has no pages");
    put(payload, int64_t(b.ids.size()));
    put(payload, b.seq->length);
    put(payload, b.seq->mtp_length);
    put(payload, b.all_logits ? 1 : 0);
    put(payload, int64_t(b.seq->pages.size()));
    for (int32_t id : b.ids) put(payload, id);
    for (int32_t page : b.seq->pages) put(payload, page);
  }
  send(group_, kBatch, std::move(payload));
  return model_.forward_batch(batch, cache);
}

void follow_expert_parallel_leader(Model& model, dist::ProcessGroup& group) {
  std::unique_ptr<PagedKVCache> cache;
  for (;;) {
    float header[2] = {0.0f, 0.0f};
    group.broadcast(std::span<float>(header, 2), 0);
    const int kind = int(header[0]);
    const auto length = size_t(header[1]);
    std::vector<float> payload(length);
    if (!payload.empty()) group.broadcast(std::span<float>(payload), 0);
    Reader in{payload};
    if (kind == kStop) return;
    if (kind == kCache) {
      const int64_t page_tokens = in.next(), num_pages = in.next();
      cache = model.new_paged_cache(page_tokens, num_pages);
      // Every page held once: rank 0's page ids are then valid pages here, each owned alone (the
      // forward checks ownership; rank 0's own cache has checked sharing already).
      for (int64_t p = 0; p < num_pages; ++p)
        DSEEK_CHECK(cache->allocate().has_value(),
                    "[serve] expert parallel: the mirror cache ran out of pages");
      continue;
    }
    DSEEK_CHECK(kind == kBatch, "[serve] expert parallel: unknown step message {}", kind);
    DSEEK_CHECK(cache != nullptr, "[serve] expert parallel: a batch before any paged cache");
    const auto n = size_t(in.next());
    std::vector<std::vector<int32_t>> ids(n);
    std::vector<PagedSequence> seqs(n);  // sized once: the batch points into it
    std::vector<BatchSequence> batch(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t T = in.next();
      PagedSequence& s = seqs[i];
      s.length = in.next();
      s.mtp_length = in.next();
      const bool all_logits = in.next() != 0;
      const int64_t pages = in.next();
      for (int64_t t = 0; t < T; ++t) ids[i].push_back(int32_t(in.next()));
      for (int64_t p = 0; p < pages; ++p) s.pages.push_back(int32_t(in.next()));
      batch[i] = BatchSequence{ids[i], &s, all_logits};
    }
    DSEEK_CHECK(in.at == payload.size(), "[serve] expert parallel: step message too long");
    (void)model.forward_batch(batch, *cache);  // the rows land in the mirror; logits unused
  }
}

}  // namespace dseek::cli
