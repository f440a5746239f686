// Engine: continuous batching over one model for many concurrent requests (the serving core).
// A scheduler thread owns the model and a PagedKVCache. Every step it
//   1. admits waiting requests, oldest first, while the cache can reserve pages for the whole
//      request (prompt + max_tokens: a running request never runs out of cache, so nothing is
//      ever preempted), reusing cached prefix pages (prefix caching) and capping new requests by
//      max_running;
//   2. builds one batch: one decode token per running request (two with an MTP draft) plus prompt
//      chunks of admitted requests, at most max_batch_tokens tokens (chunked prefill);
//   3. runs Model::forward_batch, samples, verifies drafts, drafts the next tokens with the MTP
//      layer (greedy requests, when the model has MTP layers and speculative is on), emits events
//      and retires finished or cancelled requests, releasing their pages.
// Requests join and leave the batch at every step. Output is identical to Generator's for the
// same request (greedy, or sampled with the same seed), speculative or not.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "infer/sampler.h"

namespace dseek {

class Model;
class Tokenizer;

struct EngineOptions {
  int64_t page_tokens = 16;
  int64_t cache_tokens = 32768;  // KV budget in tokens over all requests (pages = ⌈/page_tokens⌉)
  int64_t max_running = 64;      // requests in the running batch
  int64_t max_batch_tokens = 512;  // tokens per forward (decodes + prefill chunks)
  int64_t max_queue = 256;         // waiting requests before submit() refuses (HTTP 429)
  int64_t context_tokens = 0;      // prompt + max_tokens per request; 0 = max_position_embeddings
  bool prefix_caching = true;
  bool speculative = true;  // MTP drafts for greedy requests when the model has MTP layers
};

struct EngineRequest {
  std::vector<int32_t> prompt;  // token ids, non-empty
  int64_t max_tokens = 256;
  SamplingParams sampling;      // greedy when temperature == 0; seeded
  std::vector<std::string> stop;         // stop strings (need the engine's tokenizer)
  std::vector<int32_t> stop_token_ids;   // extra end-of-sequence ids
  bool ignore_eos = false;  // drops the model's EOS ids; stop_token_ids still apply
  int top_logprobs = -1;  // −1: no logprobs; 0..20: the chosen token's logprob and k alternatives
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;  // log-softmax of the raw logits (before sampling processors)
};

struct EngineEvent {
  enum class Kind { kToken, kFinished };
  Kind kind = Kind::kToken;
  // kToken: one generated id and the text it releases (may be empty while a UTF-8 character or a
  // possible stop string is incomplete; the text of a token that completes a stop string is cut).
  // The token that ends a request (EOS, stop, length) also carries the flushed tail, so the token
  // texts concatenated are the whole completion (Generator's text); kFinished carries no text
  // (a cancelled or failed request drops text still held back).
  int32_t id = -1;
  std::string text;
  float logprob = 0.0f;            // when top_logprobs >= 0
  std::vector<TokenLogprob> top;   // top_logprobs alternatives, most likely first
  // kFinished (always the last event): "stop", "length", "cancelled" or "error" (+ error).
  std::string finish_reason;
  std::string error;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};

// An admitted request as the submitter sees it. Thread-safe.
class RequestHandle {
 public:
  uint64_t id() const { return id_; }
  // The next event, waiting up to `timeout`; nullopt on timeout. After kFinished: nullopt.
  std::optional<EngineEvent> next(std::chrono::milliseconds timeout);
  // Stops generation at the next step (client gone); a kFinished "cancelled" event follows.
  void cancel();
  bool cancelled() const;

  // Engine side.
  explicit RequestHandle(uint64_t id) : id_(id) {}
  void push(EngineEvent event);

 private:
  uint64_t id_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<EngineEvent> events_;
  bool cancelled_ = false, finished_ = false;
};

// Why submit() refused a request; the server maps it to an HTTP status.
class EngineRejected : public Error {
 public:
  enum class Reason { kInvalid, kTooLarge, kQueueFull, kShuttingDown };
  EngineRejected(Reason reason, const std::string& message) : Error(message), reason_(reason) {}
  Reason reason() const { return reason_; }
  int http_status() const;  // 400, 400, 429, 503

 private:
  Reason reason_;
};

struct EngineStats {
  int64_t waiting = 0, running = 0;
  int64_t cache_pages_total = 0, cache_pages_used = 0, cache_pages_cached = 0;
  int64_t page_tokens = 0;
  uint64_t requests_finished = 0, requests_cancelled = 0, requests_rejected = 0;
  uint64_t prompt_tokens = 0, prefix_hit_tokens = 0, generated_tokens = 0;
  uint64_t steps = 0, spec_drafted = 0, spec_accepted = 0;
  double tokens_per_second = 0.0;  // generated tokens per second over the last few seconds
};

class Engine {
 public:
  // `tokenizer` may be null (then stop strings are refused and events carry no text).
  Engine(Model& model, const Tokenizer* tokenizer, const EngineOptions& options);
  ~Engine();  // shutdown(false)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and enqueues; throws EngineRejected (invalid ids or sampling values, prompt +
  // max_tokens beyond the context or the whole cache, queue full, shutting down).
  std::shared_ptr<RequestHandle> submit(EngineRequest request);
  // Stops admitting. drain: running and waiting requests finish (up to `deadline`, then they are
  // cancelled); otherwise everything in flight is cancelled. Returns when the scheduler stopped.
  void shutdown(bool drain, std::chrono::milliseconds deadline = std::chrono::seconds(30));
  EngineStats stats() const;
  const EngineOptions& options() const { return options_; }
  const Model& model() const { return model_; }

 private:
  struct Impl;
  Model& model_;
  EngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dseek
