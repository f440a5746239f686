// The continuous-batching scheduler behind Engine (see engine.h for the step it runs).
//
// Per request the scheduler keeps `tokens` (prompt + generated) and a PagedSequence whose
// `length` counts the positions with cache rows. Invariants between steps:
//   prefill: length < prompt size, the next chunk is tokens[length ..];
//   decode:  length == tokens.size() − 1 (the last generated token is fed next, with the MTP
//            draft of the token after it when there is one).
// MTP speculative decoding (greedy requests, models with MTP layers): the MTP layer's cache rows
// lag the main model's (seq.mtp_length <= length): MTP row i needs the main model's h^0 at i
// (kept in `pending_h` until used) and token i + 1, so it runs once that token is known. Its
// logits at the newest row draft the token after the one fed next; the main forward verifies the
// draft (2 tokens per forward when accepted). A request whose drafts are mostly rejected stops
// drafting (kBackOffDrafts): a rejected draft costs a main-model row and an MTP row for nothing.
#include "infer/engine.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>
#include <span>
#include <utility>

#include "infer/stop_strings.h"
#include "model/model.h"
#include "model/paged_kv_cache.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

namespace {

using Clock = std::chrono::steady_clock;

// Prefix-cache chains. Pages that also hold MTP rows chain from their own seed, and their hash
// covers the token after the page as well: the MTP row at a page's last position is computed from
// that token, so two prompts that share the page but not the next token must not share the page.
constexpr uint64_t kPlainChainSeed = 0;
constexpr uint64_t kMtpChainSeed = 0x9e3779b97f4a7c15ull;
constexpr double kRateWindowSeconds = 5.0;
constexpr int kMaxTopLogprobs = 20;
// After this many drafts, a request that had fewer than a quarter accepted stops drafting.
constexpr int64_t kBackOffDrafts = 16;

// Row r of a contiguous f32 matrix.
std::span<const float> row_of(const Tensor& matrix, int64_t r) {
  const int64_t width = matrix.size(1);
  return {matrix.data<float>() + r * width, size_t(width)};
}

// A forward's output as contiguous f32 on the host (a GPU model's rows come back here).
Tensor contiguous_f32(const Tensor& t) {
  const Tensor host = t.is_cuda() ? t.to(Device::CPU) : t;
  if (host.dtype() != DType::F32) return host.to_f32();
  return host.is_contiguous() ? host : host.contiguous();
}

int32_t argmax(std::span<const float> row) {
  return int32_t(std::max_element(row.begin(), row.end()) - row.begin());
}

// log-softmax of the raw logits at `id`, and the k most likely ids (ties: lower id first).
void fill_logprobs(std::span<const float> row, int32_t id, int k, EngineEvent& event) {
  const float max = *std::max_element(row.begin(), row.end());
  double sum = 0.0;
  for (float x : row) sum += std::exp(double(x) - double(max));
  const double log_z = double(max) + std::log(sum);
  event.logprob = float(double(row[size_t(id)]) - log_z);
  if (k <= 0) return;
  std::vector<int32_t> order(row.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t top = std::min(size_t(k), order.size());
  std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(top), order.end(),
                    [&](int32_t a, int32_t b) {
                      return row[size_t(a)] > row[size_t(b)] ||
                             (row[size_t(a)] == row[size_t(b)] && a < b);
                    });
  for (size_t i = 0; i < top; ++i) {
    event.top.push_back({order[i], float(double(row[size_t(order[i])]) - log_z)});
  }
}

// One request inside the engine.
struct Active {
  Active(std::shared_ptr<RequestHandle> h, EngineRequest r, const Tokenizer* tokenizer)
      : handle(std::move(h)), request(std::move(r)), sampler(request.sampling),
        stops(request.stop) {
    tokens = request.prompt;
    prompt_size = int64_t(tokens.size());
    if (tokenizer != nullptr) decoder.emplace(*tokenizer, /*skip_special=*/true);
  }

  int64_t generated() const { return int64_t(tokens.size()) - prompt_size; }
  bool is_eos(int32_t id) const { return std::find(eos.begin(), eos.end(), id) != eos.end(); }

  std::shared_ptr<RequestHandle> handle;
  EngineRequest request;
  Sampler sampler;
  StopStringMatcher stops;
  std::optional<StreamDecoder> decoder;
  std::vector<int32_t> eos;
  std::vector<int32_t> tokens;
  int64_t prompt_size = 0;
  bool speculative = false;  // MTP rows kept for the prompt (prefix pages chain with the MTP seed)
  bool drafting = false;     // MTP rows kept and drafts fed (speculative, until it backs off)
  int64_t drafted = 0, accepted = 0;
  PagedSequence seq;
  std::vector<uint64_t> page_hashes;  // chained hashes of the prompt's shareable full pages
  size_t registered_pages = 0;        // leading pages that are registered (or were hits)
  int64_t cached_tokens = 0;
  std::vector<float> pending_h;  // h^0 rows of positions [seq.mtp_length, seq.length)
  std::optional<int32_t> draft;
  std::vector<int32_t> feed;  // this step's tokens (the batch holds a span of it)
  bool finished = false;
};

}  // namespace

struct Engine::Impl {
  Impl(Model& m, const Tokenizer* t, const EngineOptions& o);

  std::shared_ptr<RequestHandle> submit(EngineRequest request);
  [[noreturn]] void reject(EngineRejected::Reason reason, const std::string& message);
  void run();
  void admit_locked();
  bool reserve(Active& r);
  void step();
  void draft_next(const std::vector<Active*>& members);
  void register_prefix_pages(Active& r);
  void accept_token(Active& r, int32_t id, std::span<const float> raw_row);
  void finish(Active& r, const std::string& reason, const std::string& error = "");
  void publish_stats(int64_t step_tokens, bool stepped);

  Model& model;
  const Tokenizer* tokenizer;
  EngineOptions options;
  int64_t context = 0, vocab = 0, hidden = 0;
  bool speculative_model = false;
  std::vector<int32_t> default_eos;
  std::unique_ptr<PagedKVCache> cache;

  std::mutex mutex;  // waiting, stopping, drain, next_id
  std::condition_variable wake;
  std::deque<std::unique_ptr<Active>> waiting;
  bool stopping = false, drain = false;
  Clock::time_point drain_deadline;
  uint64_t next_id = 1;

  mutable std::mutex stats_mutex;  // taken after `mutex` when both are held
  EngineStats counters;
  std::deque<std::pair<Clock::time_point, int64_t>> recent;  // (step end, tokens generated)
  Clock::time_point started = Clock::now();

  std::vector<std::unique_ptr<Active>> running;  // scheduler thread only
  std::mutex join_mutex;
  std::thread thread;
};

Engine::Impl::Impl(Model& m, const Tokenizer* t, const EngineOptions& o)
    : model(m), tokenizer(t), options(o) {
  const ModelConfig& config = model.config();
  DSEEK_CHECK(o.page_tokens >= 1, "[engine] page_tokens: must be >= 1, got {}", o.page_tokens);
  DSEEK_CHECK(o.cache_tokens >= o.page_tokens,
              "[engine] cache_tokens: must hold at least one page ({} tokens), got {}",
              o.page_tokens, o.cache_tokens);
  DSEEK_CHECK(o.max_running >= 1, "[engine] max_running: must be >= 1, got {}", o.max_running);
  // Two: a decode with its MTP draft must fit in one forward.
  DSEEK_CHECK(o.max_batch_tokens >= 2, "[engine] max_batch_tokens: must be >= 2, got {}",
              o.max_batch_tokens);
  DSEEK_CHECK(o.max_queue >= 1, "[engine] max_queue: must be >= 1, got {}", o.max_queue);
  DSEEK_CHECK(o.context_tokens >= 0, "[engine] context_tokens: must be >= 0, got {}",
              o.context_tokens);
  const int64_t max_positions = config.max_position_embeddings;
  context = o.context_tokens == 0 ? max_positions : std::min(o.context_tokens, max_positions);
  vocab = config.vocab_size;
  hidden = config.hidden_size;
  speculative_model = o.speculative && model.num_mtp_layers() > 0;
  for (int64_t id : config.eos_token_ids) default_eos.push_back(int32_t(id));
  if (tokenizer != nullptr) {
    try {
      default_eos.push_back(tokenizer->eos_id());
    } catch (const Error&) {
      // A tokenizer without an EOS token: the config's ids (if any) still apply.
    }
  }
  const int64_t pages = (o.cache_tokens + o.page_tokens - 1) / o.page_tokens;
  cache = model.new_paged_cache(o.page_tokens, pages);
  // The MTP forward runs on the CPU only: a GPU model serves without drafts.
  if (cache->device() != Device::CPU) speculative_model = false;
  counters.cache_pages_total = pages;
  counters.page_tokens = o.page_tokens;
  thread = std::thread([this] { run(); });
}

void Engine::Impl::reject(EngineRejected::Reason reason, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(stats_mutex);
    ++counters.requests_rejected;
  }
  throw EngineRejected(reason, message);
}

std::shared_ptr<RequestHandle> Engine::Impl::submit(EngineRequest request) {
  using Reason = EngineRejected::Reason;
  const int64_t prompt_size = int64_t(request.prompt.size());
  if (request.prompt.empty()) reject(Reason::kInvalid, "[engine] prompt: no tokens");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= vocab) {
      reject(Reason::kInvalid, fmt::format("[engine] prompt: id {} is outside the vocabulary "
                                           "(vocab_size {})", id, vocab));
    }
  }
  if (request.max_tokens < 1) {
    reject(Reason::kInvalid,
           fmt::format("[engine] max_tokens: must be >= 1, got {}", request.max_tokens));
  }
  if (request.top_logprobs < -1 || request.top_logprobs > kMaxTopLogprobs) {
    reject(Reason::kInvalid, fmt::format("[engine] top_logprobs: must be in [0, {}], got {}",
                                         kMaxTopLogprobs, request.top_logprobs));
  }
  if (!request.stop.empty() && tokenizer == nullptr) {
    reject(Reason::kInvalid, "[engine] stop: stop strings need a tokenizer");
  }
  for (const std::string& s : request.stop) {
    if (s.empty()) reject(Reason::kInvalid, "[engine] stop: empty stop string");
  }
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= vocab) {
      reject(Reason::kInvalid,
             fmt::format("[engine] stop_token_ids: id {} is outside the vocabulary (vocab_size "
                         "{})", id, vocab));
    }
  }
  try {
    request.sampling.validate();
  } catch (const Error& e) {
    reject(Reason::kInvalid, e.what());
  }
  const int64_t needed = prompt_size + request.max_tokens;
  if (needed > context) {
    reject(Reason::kTooLarge,
           fmt::format("[engine] request too large: prompt ({}) + max_tokens ({}) = {} tokens "
                       "exceed the context of {} tokens", prompt_size, request.max_tokens, needed,
                       context));
  }
  const int64_t pt = cache->page_tokens();
  if ((needed + pt - 1) / pt > cache->num_pages()) {
    reject(Reason::kTooLarge,
           fmt::format("[engine] request too large: prompt + max_tokens = {} tokens exceed the "
                       "whole KV cache ({} tokens)", needed, cache->num_pages() * pt));
  }

  std::lock_guard<std::mutex> lock(mutex);
  if (stopping) reject(Reason::kShuttingDown, "[engine] shutting down: no new requests");
  if (int64_t(waiting.size()) >= options.max_queue) {
    reject(Reason::kQueueFull, fmt::format("[engine] queue full: {} requests are waiting",
                                           waiting.size()));
  }
  auto handle = std::make_shared<RequestHandle>(next_id++);
  auto active = std::make_unique<Active>(handle, std::move(request), tokenizer);
  Active& r = *active;
  r.eos = r.request.stop_token_ids;
  if (!r.request.ignore_eos) r.eos.insert(r.eos.end(), default_eos.begin(), default_eos.end());
  r.speculative = speculative_model && r.request.sampling.greedy();
  r.drafting = r.speculative;
  if (options.prefix_caching) {
    const size_t extra = r.speculative ? 1 : 0;
    uint64_t hash = r.speculative ? kMtpChainSeed : kPlainChainSeed;
    for (size_t end = size_t(pt); end + extra <= r.tokens.size(); end += size_t(pt)) {
      hash = prefix_page_hash(hash, std::span<const int32_t>(r.tokens).subspan(
                                        end - size_t(pt), size_t(pt) + extra));
      r.page_hashes.push_back(hash);
    }
  }
  waiting.push_back(std::move(active));
  {
    std::lock_guard<std::mutex> stats_lock(stats_mutex);
    counters.waiting = int64_t(waiting.size());
  }
  wake.notify_one();
  return handle;
}

void Engine::Impl::run() {
  for (;;) {
    bool abort = false;
    std::deque<std::unique_ptr<Active>> dropped;
    {
      std::unique_lock<std::mutex> lock(mutex);
      wake.wait(lock, [&] { return stopping || !waiting.empty() || !running.empty(); });
      abort = stopping && (!drain || Clock::now() >= drain_deadline);
      if (abort) {
        dropped.swap(waiting);
      } else {
        admit_locked();
      }
    }
    if (abort) {
      for (auto& r : dropped) finish(*r, "cancelled");
      for (auto& r : running) finish(*r, "cancelled");
      running.clear();
      publish_stats(0, false);
      return;
    }
    for (auto& r : running) {
      if (r->handle->cancelled()) finish(*r, "cancelled");
    }
    std::erase_if(running, [](const std::unique_ptr<Active>& r) { return r->finished; });
    if (!running.empty()) step();
    publish_stats(0, false);
    std::lock_guard<std::mutex> lock(mutex);
    if (stopping && waiting.empty() && running.empty()) return;
  }
}

void Engine::Impl::admit_locked() {
  for (auto it = waiting.begin(); it != waiting.end();) {
    if ((*it)->handle->cancelled()) {
      finish(**it, "cancelled");
      it = waiting.erase(it);
    } else {
      ++it;
    }
  }
  // Oldest first: a request that does not fit blocks the ones behind it, so a large request is
  // not starved by a stream of small ones.
  while (!waiting.empty() && int64_t(running.size()) < options.max_running) {
    if (!reserve(*waiting.front())) break;
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
  }
}

bool Engine::Impl::reserve(Active& r) {
  const int64_t pt = cache->page_tokens();
  // Hits stop before the page of the last prompt token: it is computed again for its logits.
  const size_t max_hits = std::min(r.page_hashes.size(), size_t((r.prompt_size - 1) / pt));
  size_t hits = 0;
  while (hits < max_hits) {
    const std::optional<int32_t> page = cache->lookup_prefix(r.page_hashes[hits]);
    if (!page) break;
    r.seq.pages.push_back(*page);
    ++hits;
  }
  r.seq.length = r.seq.mtp_length = int64_t(hits) * pt;
  // The whole request: positions up to prompt + max_tokens − 1, which also covers a draft row
  // (fed only while at least two more tokens may follow).
  if (!cache->reserve(r.seq, r.prompt_size + r.request.max_tokens)) {
    cache->release_all(r.seq);
    r.seq = PagedSequence{};
    return false;
  }
  r.registered_pages = hits;
  r.cached_tokens = int64_t(hits) * pt;
  std::lock_guard<std::mutex> lock(stats_mutex);
  counters.prompt_tokens += uint64_t(r.prompt_size);
  counters.prefix_hit_tokens += uint64_t(r.cached_tokens);
  return true;
}

void Engine::Impl::step() {
  const int64_t budget = options.max_batch_tokens;
  std::vector<Active*> members;
  std::vector<BatchSequence> batch;
  int64_t used = 0;
  // Decodes first (one or two tokens each), then prompt chunks in admission order.
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& owned : running) {
      Active& r = *owned;
      const bool decoding = r.seq.length >= r.prompt_size;
      if (decoding != (pass == 0) || used >= budget) continue;
      r.feed.clear();
      if (decoding) {
        assert(r.seq.length + 1 == int64_t(r.tokens.size()));
        if (r.draft && used + 2 > budget) r.draft.reset();
        r.feed.push_back(r.tokens.back());
        if (r.draft) r.feed.push_back(*r.draft);
      } else {
        const int64_t chunk = std::min(r.prompt_size - r.seq.length, budget - used);
        r.feed.assign(r.tokens.begin() + r.seq.length, r.tokens.begin() + r.seq.length + chunk);
      }
      used += int64_t(r.feed.size());
      members.push_back(&r);
      // Speculative requests need h^0 of every new row for the MTP layer.
      batch.push_back({std::span<const int32_t>(r.feed), &r.seq, r.drafting});
    }
  }
  if (batch.empty()) return;

  BatchOutput out;
  try {
    out = model.forward_batch(batch, *cache);
  } catch (const std::exception& e) {
    for (Active* r : members) finish(*r, "error", e.what());
    std::erase_if(running, [](const std::unique_ptr<Active>& r) { return r->finished; });
    return;
  }
  const Tensor logits = contiguous_f32(out.logits);
  const bool any_speculative =
      std::any_of(members.begin(), members.end(), [](const Active* r) { return r->drafting; });
  const Tensor hidden_rows = any_speculative ? contiguous_f32(out.hidden) : Tensor();
  int64_t step_tokens = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    Active& r = *members[i];
    const int64_t fed = int64_t(r.feed.size());
    const int64_t first = out.first_row[i];
    const int64_t rows = batch[i].all_logits ? fed : 1;
    if (r.drafting) {
      const float* h = hidden_rows.data<float>() + first * hidden;
      r.pending_h.insert(r.pending_h.end(), h, h + rows * hidden);
    }
    if (r.seq.length < r.prompt_size) continue;  // a prompt chunk that is not the last
    const int64_t before = r.generated();
    if (r.draft && fed == 2) {
      const int32_t verified = r.sampler.sample(row_of(logits, first), r.tokens);
      const bool accepted = verified == *r.draft;
      ++r.drafted;
      if (accepted) ++r.accepted;
      {
        std::lock_guard<std::mutex> lock(stats_mutex);
        ++counters.spec_drafted;
        if (accepted) ++counters.spec_accepted;
      }
      if (!accepted) {
        // The draft's row is wrong: drop it. Setting the length (not PagedKVCache::truncate)
        // keeps the pages reserved for the rest of the request; the row is overwritten next step.
        r.seq.length -= 1;
        r.pending_h.resize(r.pending_h.size() - size_t(hidden));
      }
      accept_token(r, verified, row_of(logits, first));
      if (accepted && !r.finished) {
        const int32_t bonus = r.sampler.sample(row_of(logits, first + 1), r.tokens);
        accept_token(r, bonus, row_of(logits, first + 1));
      }
    } else {
      const std::span<const float> row = row_of(logits, first + rows - 1);
      accept_token(r, r.sampler.sample(row, r.tokens), row);
    }
    r.draft.reset();
    if (r.drafting && r.drafted >= kBackOffDrafts && 4 * r.accepted < r.drafted) {
      // The prompt's MTP rows (and so its MTP-chained prefix pages) were complete long ago.
      r.drafting = false;
      r.pending_h = {};
    }
    step_tokens += r.generated() - before;
  }
  draft_next(members);
  for (Active* r : members) {
    if (!r->finished && options.prefix_caching) register_prefix_pages(*r);
  }
  std::erase_if(running, [](const std::unique_ptr<Active>& r) { return r->finished; });
  publish_stats(step_tokens, true);
}

void Engine::Impl::draft_next(const std::vector<Active*>& members) {
  std::vector<Active*> runs;
  std::vector<MtpBatchSequence> batch;
  std::vector<int64_t> rows;
  for (Active* r : members) {
    if (!r->drafting || r->finished) continue;
    // MTP rows run up to the newest position whose next token is known.
    const int64_t last = std::min(r->seq.length, int64_t(r->tokens.size()) - 1);
    const int64_t n = last - r->seq.mtp_length;
    if (n <= 0) continue;
    MtpBatchSequence s;
    s.next_ids = std::span<const int32_t>(r->tokens).subspan(size_t(r->seq.mtp_length + 1),
                                                             size_t(n));
    s.h_prev = Tensor::from_vector(
        std::vector<float>(r->pending_h.begin(), r->pending_h.begin() + n * hidden), {n, hidden});
    s.seq = &r->seq;
    runs.push_back(r);
    batch.push_back(std::move(s));
    rows.push_back(n);
  }
  if (batch.empty()) return;
  Tensor logits;
  try {
    logits = contiguous_f32(model.forward_mtp_batch(batch, *cache));
  } catch (const std::exception& e) {
    for (Active* r : runs) finish(*r, "error", e.what());
    return;
  }
  int64_t offset = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    Active& r = *runs[i];
    const int64_t n = rows[i];
    offset += n;
    r.pending_h.erase(r.pending_h.begin(), r.pending_h.begin() + n * hidden);
    const bool caught_up = r.seq.mtp_length == int64_t(r.tokens.size()) - 1;
    // A draft is worth a row only while two more tokens may follow.
    if (caught_up && r.seq.length >= r.prompt_size &&
        r.generated() + 2 <= r.request.max_tokens) {
      r.draft = argmax(row_of(logits, offset - 1));
    }
  }
}

void Engine::Impl::register_prefix_pages(Active& r) {
  const int64_t pt = cache->page_tokens();
  while (r.registered_pages < r.page_hashes.size()) {
    const int64_t end = int64_t(r.registered_pages + 1) * pt;
    if (r.seq.length < end || (r.speculative && r.seq.mtp_length < end)) break;
    cache->register_prefix(r.page_hashes[r.registered_pages], r.seq.pages[r.registered_pages]);
    ++r.registered_pages;
  }
}

void Engine::Impl::accept_token(Active& r, int32_t id, std::span<const float> raw_row) {
  r.tokens.push_back(id);
  EngineEvent event;
  event.kind = EngineEvent::Kind::kToken;
  event.id = id;
  if (r.request.top_logprobs >= 0) fill_logprobs(raw_row, id, r.request.top_logprobs, event);
  std::string reason;
  if (r.is_eos(id)) {
    reason = "stop";
  } else if (r.decoder) {
    event.text = r.stops.push(r.decoder->push(id));
    if (r.stops.stopped()) reason = "stop";
  }
  if (reason.empty() && r.generated() >= r.request.max_tokens) reason = "length";
  // As Generator: at the end, the decoder's incomplete bytes and the held-back tail go out.
  if (!reason.empty() && r.decoder && !r.stops.stopped()) {
    event.text += r.stops.push(r.decoder->flush());
    if (r.stops.stopped()) reason = "stop";
    event.text += r.stops.finish();
  }
  r.handle->push(std::move(event));
  if (!reason.empty()) finish(r, reason);
}

void Engine::Impl::finish(Active& r, const std::string& reason, const std::string& error) {
  if (r.finished) return;
  r.finished = true;
  EngineEvent event;
  event.kind = EngineEvent::Kind::kFinished;
  event.finish_reason = reason;
  event.error = error;
  event.prompt_tokens = r.prompt_size;
  event.completion_tokens = r.generated();
  event.cached_prompt_tokens = r.cached_tokens;
  cache->release_all(r.seq);
  r.pending_h.clear();
  {
    std::lock_guard<std::mutex> lock(stats_mutex);
    if (reason == "cancelled") {
      ++counters.requests_cancelled;
    } else {
      ++counters.requests_finished;
    }
  }
  r.handle->push(std::move(event));
}

void Engine::Impl::publish_stats(int64_t step_tokens, bool stepped) {
  int64_t waiting_now = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    waiting_now = int64_t(waiting.size());
  }
  std::lock_guard<std::mutex> lock(stats_mutex);
  counters.waiting = waiting_now;
  counters.running = int64_t(running.size());
  counters.cache_pages_used = cache->num_pages() - cache->free_pages();
  counters.cache_pages_cached = cache->cached_pages();
  if (stepped) {
    ++counters.steps;
    counters.generated_tokens += uint64_t(step_tokens);
    const Clock::time_point now = Clock::now();
    recent.emplace_back(now, step_tokens);
    // Bounded even when nobody reads stats().
    const auto window = std::chrono::duration<double>(kRateWindowSeconds);
    while (now - recent.front().first > window) recent.pop_front();
  }
}

Engine::Engine(Model& model, const Tokenizer* tokenizer, const EngineOptions& options)
    : model_(model), options_(options),
      impl_(std::make_unique<Impl>(model, tokenizer, options)) {}

Engine::~Engine() { shutdown(false); }

std::shared_ptr<RequestHandle> Engine::submit(EngineRequest request) {
  return impl_->submit(std::move(request));
}

void Engine::shutdown(bool drain, std::chrono::milliseconds deadline) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (!impl_->stopping) {
      impl_->stopping = true;
      impl_->drain = drain;
      impl_->drain_deadline = Clock::now() + deadline;
    } else if (!drain) {
      impl_->drain = false;  // a later hard shutdown overrides a drain in progress
    }
  }
  impl_->wake.notify_all();
  std::lock_guard<std::mutex> lock(impl_->join_mutex);
  if (impl_->thread.joinable()) impl_->thread.join();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->stats_mutex);
  EngineStats s = impl_->counters;
  const Clock::time_point now = Clock::now();
  auto& recent = impl_->recent;
  const auto window = std::chrono::duration<double>(kRateWindowSeconds);
  while (!recent.empty() && now - recent.front().first > window) recent.pop_front();
  int64_t tokens = 0;
  for (const auto& entry : recent) tokens += entry.second;
  // Over the window, or over the engine's life while it is younger than the window.
  const double span = std::min(kRateWindowSeconds,
                               std::chrono::duration<double>(now - impl_->started).count());
  s.tokens_per_second = span > 0.0 ? double(tokens) / span : 0.0;
  return s;
}

}  // namespace dseek
