// Helpers for the Engine tests: draining a request's events, Generator references, and a Model
// wrapper that forwards to a real model while forcing MTP drafts (right or wrong on purpose) or
// throwing inside a step.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/engine.h"
#include "infer/generator.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/paged_kv_cache.h"

namespace dseek::testing {

struct Collected {
  std::vector<int32_t> ids;
  std::string text;                // the token events' text, concatenated
  std::vector<EngineEvent> tokens;  // every kToken event
  EngineEvent finished;             // the kFinished event
  bool complete = false;            // kFinished arrived before the timeout
};

// Every event of a request until kFinished (fails the test after 60 s without one).
inline Collected collect(RequestHandle& handle) {
  Collected c;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < give_up) {
    std::optional<EngineEvent> event = handle.next(std::chrono::milliseconds(200));
    if (!event) continue;
    if (event->kind == EngineEvent::Kind::kFinished) {
      c.finished = *event;
      c.complete = true;
      EXPECT_FALSE(handle.next(std::chrono::milliseconds(1)).has_value());
      return c;
    }
    c.ids.push_back(event->id);
    c.text += event->text;
    c.tokens.push_back(*event);
  }
  ADD_FAILURE() << "request " << handle.id() << " did not finish";
  return c;
}

// The first event of a request (it is running once a token came).
inline EngineEvent first_event(RequestHandle& handle) {
  std::optional<EngineEvent> event = handle.next(std::chrono::seconds(60));
  if (!event) ADD_FAILURE() << "no event from request " << handle.id();
  return event.value_or(EngineEvent{});
}

inline GenerationResult reference(Model& model, const EngineRequest& request,
                                  const Tokenizer* tokenizer) {
  GenerationOptions options;
  options.max_new_tokens = request.max_tokens;
  options.sampling = request.sampling;
  options.stop = request.stop;
  options.eos_ids = request.stop_token_ids;
  options.ignore_eos = request.ignore_eos;
  options.tokenizer = tokenizer;
  return generate(model, request.prompt, options);
}

inline int32_t argmax_row(const std::vector<float>& row) {
  return int32_t(std::max_element(row.begin(), row.end()) - row.begin());
}

// Forwards everything to `inner`. With `oracle_drafts`, the MTP logits are rewritten so their
// argmax is the true greedy next token (computed with a full forward over the sequence's ids)
// except at positions divisible by 3, where it is a wrong one: the engine's accept and reject
// paths both run, deterministically. With `poison`, forward_batch throws when a batch holds it.
class ProbeModel : public Model {
 public:
  explicit ProbeModel(Model& inner) : inner_(inner) {}

  bool oracle_drafts = false;
  int32_t poison = -1;
  int64_t mtp_calls = 0;

  const ModelConfig& config() const override { return inner_.config(); }
  Tensor forward(const std::vector<int32_t>& ids) override { return inner_.forward(ids); }
  Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) override {
    return inner_.forward(ids, cache);
  }
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override {
    return inner_.new_cache(max_tokens);
  }
  Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) override {
    return inner_.forward_mtp(ids, depth);
  }
  int64_t num_mtp_layers() const override { return inner_.num_mtp_layers(); }
  std::unique_ptr<PagedKVCache> new_paged_cache(int64_t page_tokens,
                                                int64_t num_pages) const override {
    return inner_.new_paged_cache(page_tokens, num_pages);
  }

  BatchOutput forward_batch(const std::vector<BatchSequence>& batch,
                            PagedKVCache& cache) override {
    for (const BatchSequence& s : batch) {
      if (std::find(s.ids.begin(), s.ids.end(), poison) != s.ids.end()) {
        throw Error("[probe] poisoned token in the batch");
      }
      // The ids at each position (prefix caching is off in the oracle tests: lengths start at 0).
      std::vector<int32_t>& known = ids_[s.seq];
      known.resize(size_t(s.seq->length));
      known.insert(known.end(), s.ids.begin(), s.ids.end());
    }
    return inner_.forward_batch(batch, cache);
  }

  Tensor forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                           PagedKVCache& cache) override {
    ++mtp_calls;
    std::vector<int64_t> last_rows;
    std::vector<std::vector<int32_t>> histories;
    int64_t rows = 0;
    for (const MtpBatchSequence& s : batch) {
      // Ids up to the position of the last next_id (it may not have been fed to the main model).
      std::vector<int32_t> history = ids_[s.seq];
      const size_t end = size_t(s.seq->mtp_length) + s.next_ids.size() + 1;
      history.resize(end);
      std::copy(s.next_ids.begin(), s.next_ids.end(),
                history.begin() + s.seq->mtp_length + 1);
      rows += int64_t(s.next_ids.size());
      last_rows.push_back(rows - 1);
      histories.push_back(std::move(history));
    }
    Tensor logits = inner_.forward_mtp_batch(batch, cache).to_f32();
    if (!oracle_drafts) return logits;
    const int64_t V = logits.size(1);
    for (size_t i = 0; i < batch.size(); ++i) {
      const std::vector<int32_t>& history = histories[i];
      const int64_t position = int64_t(history.size());  // the drafted token's position
      int32_t token = argmax_row(inner_.forward(history).select(0, position - 1).to_vector());
      if (position % 3 == 0) token = int32_t((token + 1) % V);
      float* row = logits.data<float>() + last_rows[i] * V;
      const float top = *std::max_element(row, row + V);
      row[token] = top + 10.0f;
    }
    return logits;
  }

 private:
  Model& inner_;
  std::map<const PagedSequence*, std::vector<int32_t>> ids_;
};

}  // namespace dseek::testing
