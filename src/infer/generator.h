// Autoregressive generation on one sequence with a KV cache: prefill the prompt in one forward,
// then decode token by token. Stops at an EOS id (config.json eos_token_id, the tokenizer's eos,
// and any extra ids given), at a stop string (matched on the decoded text, across token
// boundaries; the returned text ends before it), after max_new_tokens, or when the cache is full.
// Text is streamed through on_text as soon as no stop string can still begin in it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.h"

namespace dseek {

class Model;
class KVCache;
class Tokenizer;

struct GenerationOptions {
  int64_t max_new_tokens = 256;
  SamplingParams sampling;
  std::vector<std::string> stop;             // stop strings; need a tokenizer
  std::vector<int32_t> eos_ids;              // extra end-of-sequence ids
  bool ignore_eos = false;                   // generate exactly max_new_tokens (benchmarks)
  const Tokenizer* tokenizer = nullptr;      // decodes the text; optional without stop strings
  std::function<void(int32_t id)> on_token;  // each generated id, EOS included
  // Replaces each sampled id before it is used (expert-parallel ranks: rank 0's id, broadcast,
  // so the ranks' sequences can never diverge); none: the sampled id stands.
  std::function<int32_t(int32_t id)> agree_token;
  std::function<void(std::string_view text)> on_text;  // printable text, in order
};

struct GenerationResult {
  std::vector<int32_t> ids;   // generated ids (the EOS or stop-completing token included)
  std::string text;           // decoded text without EOS and stop string ("" without tokenizer)
  std::string finish_reason;  // "stop" (EOS or stop string) or "length" (max tokens or cache full)
  int64_t prompt_tokens = 0;  // tokens prefilled this call (after reusing the cached prefix)
  int64_t reused_tokens = 0;  // prompt tokens whose cache entries were kept from the last call
  double prefill_seconds = 0.0;  // the prompt forward
  double decode_seconds = 0.0;   // every later forward
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // (ids - 1) forwards over decode_seconds
};

// Keeps a model's cache between calls, so a conversation re-runs only what changed: the longest
// common prefix of the new prompt and the cached ids is kept (KVCache::truncate), the rest is
// prefilled.
class Generator {
 public:
  // `context_tokens`: cache capacity (prompt + generated); 0 = the model's max_position_embeddings.
  explicit Generator(Model& model, int64_t context_tokens = 0);
  ~Generator();

  int64_t context_tokens() const { return context_tokens_; }
  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerationOptions& options);
  void reset();  // forget the cache

 private:
  Model& model_;
  int64_t context_tokens_;
  std::unique_ptr<KVCache> cache_;
  std::vector<int32_t> cached_ids_;  // the ids whose entries the cache holds
};

// One-shot generation with a cache sized for prompt + max_new_tokens.
GenerationResult generate(Model& model, const std::vector<int32_t>& prompt,
                          const GenerationOptions& options);

}  // namespace dseek
