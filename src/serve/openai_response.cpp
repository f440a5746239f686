#include "serve/openai_response.h"

#include <atomic>
#include <random>

#include "tokenizer/utf8.h"

namespace dseek::serve {
namespace {

using nlohmann::json;

bool is_chat(const CompletionRequest& request) {
  return request.endpoint == Endpoint::kChat;
}

// A token's text for logprobs: its bytes, lossily decoded (a token may hold part of a character).
std::string token_text(const Tokenizer* tokenizer, int32_t id) {
  if (tokenizer == nullptr) return "token_id:" + std::to_string(id);
  return utf8::lossy(tokenizer->token_bytes(id));
}

json token_bytes_json(const Tokenizer* tokenizer, int32_t id) {
  json bytes = json::array();
  if (tokenizer == nullptr) return bytes;
  for (unsigned char c : tokenizer->token_bytes(id)) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// Chat logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
json chat_logprobs(const std::vector<const EngineEvent*>& events, const Tokenizer* tokenizer) {
  json content = json::array();
  for (const EngineEvent* e : events) {
    json top = json::array();
    for (const TokenLogprob& t : e->top) {
      top.push_back({{"token", token_text(tokenizer, t.id)},
                     {"logprob", t.logprob},
                     {"bytes", token_bytes_json(tokenizer, t.id)}});
    }
    content.push_back({{"token", token_text(tokenizer, e->id)},
                       {"logprob", e->logprob},
                       {"bytes", token_bytes_json(tokenizer, e->id)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

// Legacy completions logprobs: parallel arrays, top_logprobs as {token: logprob} maps.
json completion_logprobs(const std::vector<const EngineEvent*>& events, const Tokenizer* tokenizer,
                         int64_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const EngineEvent* e : events) {
    const std::string text = token_text(tokenizer, e->id);
    tokens.push_back(text);
    token_logprobs.push_back(e->logprob);
    json alternatives = json::object();
    for (const TokenLogprob& t : e->top) alternatives[token_text(tokenizer, t.id)] = t.logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(text.size());
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

json chunk_base(const CompletionRequest& request, const ResponseMeta& meta) {
  json chunk = {{"id", meta.id},
                {"object", is_chat(request) ? "chat.completion.chunk" : "text_completion"},
                {"created", meta.created},
                {"model", meta.model},
                {"system_fingerprint", "dseek"}};
  if (request.include_usage) chunk["usage"] = nullptr;  // OpenAI: null on all but the last chunk
  return chunk;
}

}  // namespace

std::string new_response_id(Endpoint endpoint) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  const uint64_t value = salt ^ (++counter * 0x9E3779B97F4A7C15ull);
  return std::string(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-") +
         fmt::format("{:016x}{:08x}", value, static_cast<uint32_t>(counter.load()));
}

void ChoiceState::add(const EngineEvent& event) {
  if (event.kind == EngineEvent::Kind::kToken) {
    text += event.text;
    tokens.push_back(event);
    return;
  }
  finished = true;
  prompt_tokens = event.prompt_tokens;
  completion_tokens = event.completion_tokens;
  cached_prompt_tokens = event.cached_prompt_tokens;
  finish_reason = event.finish_reason;
  if (finish_reason != "stop" && finish_reason != "length") {
    error = event.error.empty() ? "request " + finish_reason : event.error;
  }
}

Usage total_usage(const CompletionRequest& request, const std::vector<ChoiceState>& choices) {
  Usage usage;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i % static_cast<size_t>(request.n) == 0) {
      usage.prompt_tokens += choices[i].prompt_tokens;
      usage.cached_prompt_tokens += choices[i].cached_prompt_tokens;
    }
    usage.completion_tokens += choices[i].completion_tokens;
  }
  return usage;
}

json usage_json(const Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_prompt_tokens}}}};
}

json completion_response(const CompletionRequest& request, const ResponseMeta& meta,
                         const std::vector<ChoiceState>& choices, const Tokenizer* tokenizer) {
  json out = {{"id", meta.id},
              {"object", is_chat(request) ? "chat.completion" : "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"system_fingerprint", "dseek"}};
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceState& c = choices[i];
    std::vector<const EngineEvent*> events;
    for (const EngineEvent& e : c.tokens) events.push_back(&e);
    json logprobs = nullptr;
    if (request.top_logprobs >= 0) {
      logprobs = is_chat(request) ? chat_logprobs(events, tokenizer)
                                  : completion_logprobs(events, tokenizer, 0);
    }
    json choice = {
        {"index", i}, {"logprobs", std::move(logprobs)}, {"finish_reason", c.finish_reason}};
    if (is_chat(request)) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
    } else {
      choice["text"] = c.text;
    }
    list.push_back(std::move(choice));
  }
  out["choices"] = std::move(list);
  out["usage"] = usage_json(total_usage(request, choices));
  return out;
}

json token_chunk(const CompletionRequest& request, const ResponseMeta& meta, int64_t index,
                 const EngineEvent& event, bool first, const Tokenizer* tokenizer) {
  json chunk = chunk_base(request, meta);
  json logprobs = nullptr;
  if (request.top_logprobs >= 0 && event.id >= 0) {
    // Offsets within one chunk only: a streamed text_offset would need the choice's history.
    logprobs = is_chat(request) ? chat_logprobs({&event}, tokenizer)
                                : completion_logprobs({&event}, tokenizer, 0);
  }
  json choice = {{"index", index}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}};
  if (is_chat(request)) {
    json delta = {{"content", event.text}};
    if (first) delta["role"] = "assistant";
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = event.text;
  }
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

json finish_chunk(const CompletionRequest& request, const ResponseMeta& meta, int64_t index,
                  const std::string& finish_reason) {
  json chunk = chunk_base(request, meta);
  json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  if (is_chat(request)) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
  }
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

json usage_chunk(const CompletionRequest& request, const ResponseMeta& meta, const Usage& usage) {
  json chunk = chunk_base(request, meta);
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(usage);
  return chunk;
}

std::string sse_event(const json& data) {
  // error_handler_t::replace: text is valid UTF-8 by construction (the engine's decoder replaces
  // bad bytes), so this only guards against a bug turning into an exception mid-stream.
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string sse_done() {
  return "data: [DONE]\n\n";
}

}  // namespace dseek::serve
