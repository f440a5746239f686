// The OpenAI protocol layer of `dseek serve` without a socket: request parsing and validation
// (errors name the field), engine requests (n choices, seeds), response and chunk shapes, SSE
// framing, error bodies and the Prometheus metrics text.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "serve/api_error.h"
#include "serve/metrics.h"
#include "serve/openai_request.h"
#include "serve/openai_response.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using namespace dseek::serve;
using nlohmann::json;

namespace {

const Tokenizer& v3_tokenizer() {
  static const Tokenizer tok =
      Tokenizer::load(std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/models/export_v3");
  return tok;
}

ServedModel served() {
  ServedModel s;
  s.name = "tiny";
  s.tokenizer = &v3_tokenizer();
  s.context_tokens = 512;
  s.default_max_tokens = 64;
  return s;
}

json chat_body() {
  return {{"model", "tiny"},
          {"messages",
           {{{"role", "system"}, {"content", "Be brief."}},
            {{"role", "user"}, {"content", "Why is the sky blue?"}}}}};
}

// The ApiError a request raises (status, param, message), or a failed expectation.
ApiError error_of(const json& body, Endpoint endpoint = Endpoint::kChat) {
  try {
    (void)parse_completion_request(body, endpoint, served());
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "");
}

}  // namespace

TEST(ServeProtocol, ChatRendersTheTemplateAndMapsSampling) {
  json body = chat_body();
  body["temperature"] = 0.7;
  body["top_p"] = 0.9;
  body["top_k"] = 40;
  body["max_tokens"] = 12;
  body["stop"] = "\n\n";
  body["seed"] = 1234;
  body["n"] = 3;
  body["user"] = "someone";
  const CompletionRequest r = parse_completion_request(body, Endpoint::kChat, served());
  const std::string text = v3_tokenizer().apply_chat_template(
      {{"system", "Be brief."}, {"user", "Why is the sky blue?"}}, true);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0], v3_tokenizer().encode(text, false));
  EXPECT_FLOAT_EQ(r.base.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(r.base.sampling.top_p, 0.9f);
  EXPECT_EQ(r.base.sampling.top_k, 40);
  EXPECT_EQ(r.base.max_tokens, 12);
  EXPECT_EQ(r.base.stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(r.top_logprobs, -1);
  EXPECT_FALSE(r.stream);
  const std::vector<EngineRequest> requests = engine_requests(r);
  ASSERT_EQ(requests.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(requests[i].sampling.seed, 1234u + i);
    EXPECT_EQ(requests[i].prompt, r.prompts[0]);
  }
}

TEST(ServeProtocol, ChatDefaultsAndTextParts) {
  json body = chat_body();
  body["messages"][1]["content"] = {{{"type", "text"}, {"text", "Why is the sky "}},
                                    {{"type", "text"}, {"text", "blue?"}}};
  body["max_completion_tokens"] = 5;
  body["logprobs"] = true;
  body["top_logprobs"] = 3;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const CompletionRequest r = parse_completion_request(body, Endpoint::kChat, served());
  EXPECT_EQ(r.prompts[0],
            parse_completion_request(chat_body(), Endpoint::kChat, served()).prompts[0]);
  EXPECT_EQ(r.base.max_tokens, 5);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.base.top_logprobs, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FLOAT_EQ(r.base.sampling.temperature, 1.0f);  // OpenAI's default
  json plain = chat_body();
  plain["logprobs"] = true;
  EXPECT_EQ(parse_completion_request(plain, Endpoint::kChat, served()).top_logprobs, 0);
  EXPECT_EQ(parse_completion_request(chat_body(), Endpoint::kChat, served()).base.max_tokens, 64);
}

TEST(ServeProtocol, CompletionPrompts) {
  json body = {{"model", "tiny"}, {"prompt", "Hello world"}, {"temperature", 0}};
  CompletionRequest r = parse_completion_request(body, Endpoint::kCompletion, served());
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0], v3_tokenizer().encode("Hello world", true));  // BOS first
  EXPECT_EQ(r.base.max_tokens, 16);                                     // OpenAI's legacy default
  EXPECT_TRUE(r.base.sampling.greedy());
  body["prompt"] = {5, 6, 7};
  body["logprobs"] = 2;
  r = parse_completion_request(body, Endpoint::kCompletion, served());
  EXPECT_EQ(r.prompts[0], (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(r.top_logprobs, 2);
  body["prompt"] = json::array({"a b", json::array({9, 10})});
  body["n"] = 2;
  r = parse_completion_request(body, Endpoint::kCompletion, served());
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1], (std::vector<int32_t>{9, 10}));
  const std::vector<EngineRequest> requests = engine_requests(r);
  ASSERT_EQ(requests.size(), 4u);  // prompt-major: choice index = prompt * n + i
  EXPECT_EQ(requests[2].prompt, r.prompts[1]);
  EXPECT_EQ(requests[3].sampling.seed, requests[2].sampling.seed + 1);
}

TEST(ServeProtocol, ErrorsNameTheField) {
  struct Case {
    std::function<void(json&)> edit;
    int status;
    std::string param, text;
  };
  const std::vector<Case> cases = {
      {[](json& b) { b["messages"][1]["content"] = 42; }, 400, "messages[1].content",
       "expected a string or an array of text parts, got a number"},
      {[](json& b) { b["messages"][0]["role"] = "robot"; }, 400, "messages[0].role", "robot"},
      {[](json& b) { b["messages"][1].erase("content"); }, 400, "messages[1].content", "missing"},
      {[](json& b) { b["messages"] = json::array(); }, 400, "messages", "must not be empty"},
      {[](json& b) { b["messages"] = "hi"; }, 400, "messages", "expected an array"},
      {[](json& b) { b["temperature"] = "hot"; }, 400, "temperature", "expected a number"},
      {[](json& b) { b["temperature"] = 2.5; }, 400, "temperature", "must be in [0.0, 2.0]"},
      {[](json& b) { b["max_tokens"] = 0; }, 400, "max_tokens", "must be in [1,"},
      {[](json& b) { b["max_tokens"] = 1.5; }, 400, "max_tokens", "expected an integer"},
      {[](json& b) { b["n"] = 17; }, 400, "n", "[1, 16]"},
      {[](json& b) {
         b["stop"] = {"a", "b", "c", "d", "e"};
       },
       400, "stop", "at most 4"},
      {[](json& b) {
         b["stop"] = {"a", 3};
       },
       400, "stop[1]", "expected a string"},
      {[](json& b) { b["stream"] = "yes"; }, 400, "stream", "expected a boolean"},
      {[](json& b) { b["top_logprobs"] = 2; }, 400, "top_logprobs", "requires logprobs"},
      {[](json& b) { b["frequency_penalty"] = 0.5; }, 400, "frequency_penalty", "not supported"},
      {[](json& b) { b["tools"] = json::array(); }, 400, "tools", "unsupported parameter"},
      {[](json& b) {
         b["stream_options"] = {{"include_usage", true}};
       },
       400, "stream_options", "only allowed when stream is true"},
      {[](json& b) { b["model"] = "gpt-4"; }, 404, "model", "does not exist"},
      {[](json& b) { b.erase("model"); }, 400, "model", "missing"},
      {[](json& b) { b["max_tokens"] = 600; }, 400, "messages", "context is 512 tokens"},
  };
  for (const Case& c : cases) {
    json body = chat_body();
    c.edit(body);
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status(), c.status) << body.dump();
    EXPECT_EQ(e.param(), c.param) << e.what();
    EXPECT_NE(std::string(e.what()).find(c.text), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("[serve] ", 0), 0u) << e.what();
  }
  const ApiError e =
      error_of({{"model", "tiny"}, {"prompt", json::array({1, -2})}}, Endpoint::kCompletion);
  EXPECT_EQ(e.param(), "prompt[1]");
  EXPECT_EQ(error_of({{"model", "tiny"}, {"prompt", json::array()}}, Endpoint::kCompletion).param(),
            "prompt");
  EXPECT_EQ(
      error_of({{"model", "tiny"}, {"prompt", "x"}, {"echo", true}}, Endpoint::kCompletion).param(),
      "echo");
}

TEST(ServeProtocol, MalformedJsonAndInvalidUtf8) {
  for (const std::string& body : {std::string("{\"model\": "), std::string("{\"a\": \"\xff\"}"),
                                  std::string("{\"a\": \"\\ud800\"}"), std::string(""),
                                  // beyond double: nlohmann throws out_of_range, not parse_error
                                  // (found by fuzz_openai_request)
                                  std::string("84e51845Bte}"), std::string("{\"n\": 1e999}")}) {
    try {
      (void)parse_json_body(body);
      ADD_FAILURE() << "parsed: " << body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_EQ(e.code(), "invalid_json");
      EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parse_json_body("{\"a\": \"h\xc3\xa9\"}")["a"], "h\xc3\xa9");
}

TEST(ServeProtocol, ErrorBodyShape) {
  const json body = ApiError(429, "[serve] queue full", "", "queue_full").to_json();
  EXPECT_EQ(body, json::parse(R"({"error": {"message": "[serve] queue full",
      "type": "rate_limit_error", "param": null, "code": "queue_full"}})"));
  EXPECT_EQ(error_type_for_status(401), "authentication_error");
  EXPECT_EQ(error_type_for_status(413), "invalid_request_error");
  EXPECT_EQ(error_type_for_status(503), "service_unavailable_error");
  EXPECT_EQ(error_type_for_status(500), "server_error");
}

namespace {

EngineEvent token(int32_t id, const std::string& text, float logprob) {
  EngineEvent e;
  e.id = id;
  e.text = text;
  e.logprob = logprob;
  e.top = {{id, logprob}, {id + 1, logprob - 1.5f}};
  return e;
}

EngineEvent finished(const std::string& reason, int64_t prompt, int64_t completion) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::kFinished;
  e.finish_reason = reason;
  e.prompt_tokens = prompt;
  e.completion_tokens = completion;
  e.cached_prompt_tokens = 2;
  return e;
}

}  // namespace

TEST(ServeProtocol, ChatResponseShapeWithLogprobsAndUsage) {
  json body = chat_body();
  body["n"] = 2;
  body["logprobs"] = true;
  body["top_logprobs"] = 1;
  const CompletionRequest r = parse_completion_request(body, Endpoint::kChat, served());
  const ResponseMeta meta{new_response_id(Endpoint::kChat), 1700000000, "tiny"};
  EXPECT_EQ(meta.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_NE(meta.id, new_response_id(Endpoint::kChat));
  const int32_t hello = *v3_tokenizer().token_to_id("<｜User｜>");
  std::vector<ChoiceState> choices(2);
  choices[0].add(token(hello, "Hi", -0.25f));
  choices[0].add(token(hello, " there", -0.5f));
  choices[0].add(finished("stop", 20, 2));
  choices[1].add(token(hello, "Yo", -1.0f));
  choices[1].add(finished("length", 20, 1));
  const json out = completion_response(r, meta, choices, &v3_tokenizer());
  EXPECT_EQ(out["object"], "chat.completion");
  EXPECT_EQ(out["id"], meta.id);
  EXPECT_EQ(out["created"], 1700000000);
  EXPECT_EQ(out["model"], "tiny");
  ASSERT_EQ(out["choices"].size(), 2u);
  EXPECT_EQ(out["choices"][0]["index"], 0);
  EXPECT_EQ(out["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(out["choices"][0]["message"]["content"], "Hi there");
  EXPECT_EQ(out["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(out["choices"][1]["finish_reason"], "length");
  const json& lp = out["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 2u);
  EXPECT_EQ(lp[0]["token"], "<｜User｜>");
  EXPECT_FLOAT_EQ(lp[1]["logprob"].get<float>(), -0.5f);
  EXPECT_EQ(lp[0]["bytes"].size(), std::string("<｜User｜>").size());
  ASSERT_EQ(lp[0]["top_logprobs"].size(), 2u);
  EXPECT_FLOAT_EQ(lp[0]["top_logprobs"][1]["logprob"].get<float>(), -1.75f);
  // Prompt tokens count once per prompt, completions add up.
  EXPECT_EQ(out["usage"], json::parse(R"({"prompt_tokens": 20, "completion_tokens": 3,
      "total_tokens": 23, "prompt_tokens_details": {"cached_tokens": 2}})"));
}

TEST(ServeProtocol, StreamChunkShapes) {
  json body = chat_body();
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const CompletionRequest chat = parse_completion_request(body, Endpoint::kChat, served());
  const ResponseMeta meta{"chatcmpl-x", 5, "tiny"};
  json c = token_chunk(chat, meta, 1, token(7, "He", -0.1f), true, &v3_tokenizer());
  EXPECT_EQ(c["object"], "chat.completion.chunk");
  EXPECT_EQ(c["choices"][0]["index"], 1);
  EXPECT_EQ(c["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": "He"})"));
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(c["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(c.contains("usage") && c["usage"].is_null());
  c = token_chunk(chat, meta, 1, token(7, "llo", -0.1f), false, &v3_tokenizer());
  EXPECT_EQ(c["choices"][0]["delta"], json::parse(R"({"content": "llo"})"));
  c = finish_chunk(chat, meta, 1, "length");
  EXPECT_EQ(c["choices"][0]["delta"], json::object());
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  c = usage_chunk(chat, meta, Usage{4, 6, 0});
  EXPECT_EQ(c["choices"], json::array());
  EXPECT_EQ(c["usage"]["total_tokens"], 10);

  const CompletionRequest text = parse_completion_request(
      {{"model", "tiny"}, {"prompt", "x"}, {"stream", true}, {"logprobs", 1}},
      Endpoint::kCompletion, served());
  c = token_chunk(text, meta, 0, token(7, "ab", -0.3f), true, &v3_tokenizer());
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "ab");
  EXPECT_FALSE(c.contains("usage"));
  EXPECT_EQ(c["choices"][0]["logprobs"]["token_logprobs"], json::array({-0.3f}));
  EXPECT_EQ(c["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
}

TEST(ServeProtocol, ChoiceStateKeepsEngineErrors) {
  ChoiceState c;
  c.add(token(3, "x", -1.0f));
  EngineEvent e = finished("cancelled", 4, 1);
  c.add(e);
  EXPECT_TRUE(c.finished);
  EXPECT_EQ(c.text, "x");
  EXPECT_EQ(c.error, "request cancelled");
}

TEST(ServeProtocol, MetricsText) {
  Metrics m;
  m.on_response(200);
  m.on_response(200);
  m.on_response(429);
  m.on_request_done(0.07);
  m.on_request_done(3.0);
  m.on_first_token(0.02);
  EngineStats s;
  s.waiting = 3;
  s.running = 5;
  s.cache_pages_total = 200;
  s.cache_pages_used = 50;
  s.generated_tokens = 1234;
  s.spec_drafted = 10;
  s.spec_accepted = 7;
  s.tokens_per_second = 42.5;
  const std::string text = m.render(s);
  for (const char* line :
       {"dseek_requests_waiting 3\n", "dseek_requests_running 5\n",
        "dseek_kv_cache_usage_ratio 0.25\n", "dseek_generation_tokens_total 1234\n",
        "dseek_generation_tokens_per_second 42.5\n", "dseek_spec_acceptance_ratio 0.7\n",
        "# TYPE dseek_generation_tokens_total counter\n",
        "dseek_http_responses_total{code=\"200\"} 2\n",
        "dseek_http_responses_total{code=\"429\"} 1\n",
        "# TYPE dseek_request_duration_seconds histogram\n",
        "dseek_request_duration_seconds_bucket{le=\"0.05\"} 0\n",
        "dseek_request_duration_seconds_bucket{le=\"0.1\"} 1\n",
        "dseek_request_duration_seconds_bucket{le=\"2.5\"} 1\n",
        "dseek_request_duration_seconds_bucket{le=\"5\"} 2\n",
        "dseek_request_duration_seconds_bucket{le=\"+Inf\"} 2\n",
        "dseek_request_duration_seconds_count 2\n",
        "dseek_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line;
  }
}
