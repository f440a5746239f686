// Response bodies in OpenAI's shapes: chat.completion / text_completion objects, their streamed
// chunks (server-sent events, "data: {...}\n\n" and a final "data: [DONE]\n\n"), usage and
// logprobs. Choices are accumulated from engine events by ChoiceState, so the streamed and the
// whole responses of one request carry the same text, finish_reason and usage.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/engine.h"
#include "serve/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace dseek::serve {

// Identity of one response, shared by all of its chunks.
struct ResponseMeta {
  std::string id;       // "chatcmpl-…" / "cmpl-…"
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// A fresh response id with the endpoint's prefix (random, unique per process).
std::string new_response_id(Endpoint endpoint);

// One choice as the engine's events build it up.
struct ChoiceState {
  std::string text;
  std::vector<EngineEvent> tokens;  // token events (for logprobs)
  bool finished = false;
  std::string finish_reason;  // OpenAI's: "stop" or "length"
  std::string error;          // engine error, cancellation (finish "error"/"cancelled")
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;

  void add(const EngineEvent& event);
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};
// Prompt tokens count once per prompt (n choices share it, as at OpenAI); completions add up.
Usage total_usage(const CompletionRequest& request, const std::vector<ChoiceState>& choices);
nlohmann::json usage_json(const Usage& usage);

// The whole (non-streamed) response.
nlohmann::json completion_response(const CompletionRequest& request, const ResponseMeta& meta,
                                   const std::vector<ChoiceState>& choices,
                                   const Tokenizer* tokenizer);

// Streamed chunks. `first` marks a choice's first chunk (chat: delta carries the role).
nlohmann::json token_chunk(const CompletionRequest& request, const ResponseMeta& meta,
                           int64_t index, const EngineEvent& event, bool first,
                           const Tokenizer* tokenizer);
nlohmann::json finish_chunk(const CompletionRequest& request, const ResponseMeta& meta,
                            int64_t index, const std::string& finish_reason);
// The last chunk when stream_options.include_usage: no choices, the usage of the whole request.
nlohmann::json usage_chunk(const CompletionRequest& request, const ResponseMeta& meta,
                           const Usage& usage);

// "data: <json>\n\n" and the terminator "data: [DONE]\n\n".
std::string sse_event(const nlohmann::json& data);
std::string sse_done();

}  // namespace dseek::serve
