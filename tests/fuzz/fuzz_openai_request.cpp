// libFuzzer target: an OpenAI request body must either parse into engine requests and render
// into every response shape, or throw an ApiError with a 4xx status — never crash, never another
// exception. The first byte picks the endpoint; the rest is the body. Uses the export_v3 fixture's
// tokenizer (DeepSeek-V3 chat template), so chat rendering and encoding are fuzzed too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "serve/api_error.h"
#include "serve/openai_request.h"
#include "serve/openai_response.h"
#include "tokenizer/tokenizer.h"

#ifndef DSEEK_SOURCE_DIR
#define DSEEK_SOURCE_DIR "."
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dseek::Tokenizer tokenizer =
      dseek::Tokenizer::load(std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/models/export_v3");
  if (size == 0) return 0;
  dseek::serve::ServedModel served;
  served.name = "tiny";
  served.tokenizer = &tokenizer;
  served.context_tokens = 512;
  const auto endpoint =
      data[0] % 2 == 0 ? dseek::serve::Endpoint::kChat : dseek::serve::Endpoint::kCompletion;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const dseek::serve::CompletionRequest request = dseek::serve::parse_completion_request(
        dseek::serve::parse_json_body(body), endpoint, served);
    const auto requests = dseek::serve::engine_requests(request);
    if (requests.size() != request.prompts.size() * size_t(request.n)) __builtin_trap();
    std::vector<dseek::serve::ChoiceState> choices(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].prompt.empty()) __builtin_trap();
      dseek::EngineEvent token;
      token.id = requests[i].prompt.back();
      token.text = "x";
      choices[i].add(token);
      dseek::EngineEvent done;
      done.kind = dseek::EngineEvent::Kind::kFinished;
      done.finish_reason = "length";
      choices[i].add(done);
    }
    const dseek::serve::ResponseMeta meta{"id", 0, "tiny"};
    (void)dseek::serve::completion_response(request, meta, choices, &tokenizer).dump();
    (void)dseek::serve::sse_event(
        dseek::serve::token_chunk(request, meta, 0, choices[0].tokens[0], true, &tokenizer));
  } catch (const dseek::serve::ApiError& e) {
    if (e.status() < 400 || e.status() >= 500) __builtin_trap();
  }
  return 0;
}
