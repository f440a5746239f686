// Parsing and validation of OpenAI /v1/chat/completions and /v1/completions request bodies into
// engine requests. Every field is type-checked and range-checked; an error names the field
// ("messages[2].content: expected a string or an array of text parts") and becomes a 400 in the
// OpenAI error shape. Unknown fields and features dseek does not implement (tools, logit_bias,
// frequency/presence penalties other than 0, echo, suffix...) are refused rather than ignored,
// so a client never silently gets something other than what it asked for. `user` is accepted and
// ignored, as it only labels the request for abuse monitoring at OpenAI.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/engine.h"
#include "tokenizer/tokenizer.h"

namespace dseek::serve {

enum class Endpoint { kChat, kCompletion };

// What the server knows about the model it serves.
struct ServedModel {
  std::string name;                      // the "model" requests must name
  const Tokenizer* tokenizer = nullptr;  // null: only token-id prompts, no chat, no text
  int64_t context_tokens = 0;            // prompt + max_tokens limit
  std::string chat_format;               // explicit chat format when the tokenizer has none
  int64_t default_max_tokens = 256;      // when a request gives no max_tokens
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;
  // One tokenized prompt (chat: the rendered conversation); completions may send several, each
  // of which gets n choices (choice index = prompt * n + i), as OpenAI does.
  std::vector<std::vector<int32_t>> prompts;
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int top_logprobs = -1;       // −1: no logprobs
  bool seeded = false;         // "seed" given: choice i samples with seed + i
  EngineRequest base;          // everything but the prompt; sampling.seed is the base seed
};

// Throws ApiError (400 for invalid fields, 404 for another model's name).
CompletionRequest parse_completion_request(const nlohmann::json& body, Endpoint endpoint,
                                           const ServedModel& served);

// The engine requests of a parsed request, in choice order (prompts × n); choice i of a seeded
// request samples with seed + i, so n choices differ but each is reproducible.
std::vector<EngineRequest> engine_requests(const CompletionRequest& request);

// Parses a request body; malformed JSON (and invalid UTF-8, which nlohmann rejects while parsing
// strings) becomes a 400 naming the byte offset.
nlohmann::json parse_json_body(const std::string& body);

}  // namespace dseek::serve
