// `dseek serve`'s HTTP server in-process: a real Server on a free port over a real Engine and the
// tiny export_v3 model (its tokenizer has DeepSeek-V3's chat template), driven by httplib::Client.
// Every endpoint, the error statuses and bodies, concurrent clients (each answer equals the same
// greedy request sent alone), a client that disconnects mid-stream (its request is cancelled),
// a full queue (429) and graceful shutdown.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "infer/engine.h"
#include "model/model.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using nlohmann::json;

namespace {

std::string fixture_dir() {
  return std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/models/export_v3";
}

// A model, an engine and a server running on its own thread; shut down when destroyed.
struct LiveServer {
  std::unique_ptr<Model> model = Model::load(fixture_dir());
  Tokenizer tokenizer = Tokenizer::load(fixture_dir());
  std::unique_ptr<Engine> engine;
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  int port = 0;

  explicit LiveServer(EngineOptions eo = {}, serve::ServerOptions so = {}) {
    eo.cache_tokens = std::min<int64_t>(eo.cache_tokens, 8192);
    engine = std::make_unique<Engine>(*model, &tokenizer, eo);
    so.port = 0;
    so.served_model_name = "tiny";
    if (so.max_body_bytes == serve::ServerOptions{}.max_body_bytes) so.max_body_bytes = 64 << 10;
    server = std::make_unique<serve::Server>(*engine, &tokenizer, so);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~LiveServer() {
    server->shutdown();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    return c;
  }
};

LiveServer& shared_server() {
  static LiveServer server;
  return server;
}

struct Reply {
  int status = 0;
  std::string body;
  json json_body;
};

// Status 0 when the request failed; the body parsed when the server says it is JSON.
Reply reply_of(const httplib::Result& res) {
  Reply r;
  if (!res) return r;
  r.status = res->status;
  r.body = res->body;
  if (res->get_header_value("Content-Type").find("json") != std::string::npos) {
    r.json_body = json::parse(r.body);
  }
  return r;
}

Reply post(const LiveServer& s, const std::string& path, const std::string& body,
           const httplib::Headers& headers = {}) {
  httplib::Client c = s.client();
  return reply_of(c.Post(path.c_str(), headers, body, "application/json"));
}

Reply get(const LiveServer& s, const std::string& path, const httplib::Headers& headers = {}) {
  httplib::Client c = s.client();
  return reply_of(c.Get(path.c_str(), headers));
}

json chat(const std::string& text, int max_tokens = 12) {
  return {{"model", "tiny"},
          {"messages", {{{"role", "user"}, {"content", text}}}},
          {"temperature", 0},
          {"max_tokens", max_tokens}};
}

// The data payloads of a server-sent event stream, [DONE] included.
std::vector<std::string> sse_payloads(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

void expect_error(const Reply& r, int status, const std::string& text) {
  EXPECT_EQ(r.status, status) << r.body;
  ASSERT_TRUE(r.json_body.contains("error")) << r.body;
  const json& e = r.json_body["error"];
  EXPECT_TRUE(e.contains("type") && e.contains("param") && e.contains("code")) << r.body;
  EXPECT_NE(e["message"].get<std::string>().find(text), std::string::npos) << r.body;
}

}  // namespace

TEST(ServeHttp, HealthModelsMetricsTokenize) {
  LiveServer& s = shared_server();
  Reply r = get(s, "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.json_body["status"], "ok");
  r = get(s, "/v1/models");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.json_body["object"], "list");
  EXPECT_EQ(r.json_body["data"][0]["id"], "tiny");
  EXPECT_EQ(r.json_body["data"][0]["max_model_len"], 512);
  EXPECT_EQ(get(s, "/v1/models/tiny").json_body["id"], "tiny");
  expect_error(get(s, "/v1/models/other"), 404, "does not exist");
  r = post(s, "/tokenize", R"({"prompt": "Hello there", "add_special_tokens": false})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json_body["tokens"].get<std::vector<int32_t>>(), s.tokenizer.encode("Hello there"));
  r = post(s, "/detokenize", json{{"tokens", r.json_body["tokens"]}}.dump());
  EXPECT_EQ(r.json_body["prompt"], "Hello there");
  expect_error(post(s, "/detokenize", R"({"tokens": [1, 99999]})"), 400, "tokens[1]");
  (void)post(s, "/v1/chat/completions", chat("warm up", 3).dump());
  r = get(s, "/metrics");
  ASSERT_EQ(r.status, 200);
  for (const char* name :
       {"dseek_requests_waiting ", "dseek_kv_cache_usage_ratio ",
        "dseek_generation_tokens_per_second ", "dseek_spec_acceptance_ratio ",
        "dseek_request_duration_seconds_count ", "dseek_http_responses_total{code=\"200\"}"}) {
    EXPECT_NE(r.body.find(name), std::string::npos) << name;
  }
}

TEST(ServeHttp, ChatAndCompletionStreamedAndWhole) {
  LiveServer& s = shared_server();
  const Reply whole = post(s, "/v1/chat/completions", chat("Tell me a story", 10).dump());
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json& choice = whole.json_body["choices"][0];
  EXPECT_EQ(whole.json_body["object"], "chat.completion");
  EXPECT_EQ(choice["message"]["role"], "assistant");
  const std::string content = choice["message"]["content"];
  const json& usage = whole.json_body["usage"];
  EXPECT_GT(usage["prompt_tokens"].get<int>(), 3);
  EXPECT_GE(usage["completion_tokens"].get<int>(), 1);
  EXPECT_LE(usage["completion_tokens"].get<int>(), 10);
  if (choice["finish_reason"] == "length") {
    EXPECT_EQ(usage["completion_tokens"], 10);
  }

  json body = chat("Tell me a story", 10);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const Reply streamed = post(s, "/v1/chat/completions", body.dump());
  ASSERT_EQ(streamed.status, 200);
  const std::vector<std::string> events = sse_payloads(streamed.body);
  ASSERT_GE(events.size(), 3u) << streamed.body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (i == 0) {
      EXPECT_EQ(chunk["choices"][0]["delta"]["role"], "assistant");
    }
    if (chunk["choices"].empty()) {
      EXPECT_EQ(i + 2, events.size());  // the usage chunk comes last
      EXPECT_EQ(chunk["usage"], usage);
      continue;
    }
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null())
      finish = chunk["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, content);
  EXPECT_EQ(finish, choice["finish_reason"]);

  const json completion = {{"model", "tiny"},
                           {"prompt", "Once upon a time"},
                           {"max_tokens", 6},
                           {"temperature", 0},
                           {"logprobs", 2}};
  const Reply c = post(s, "/v1/completions", completion.dump());
  ASSERT_EQ(c.status, 200) << c.body;
  EXPECT_EQ(c.json_body["object"], "text_completion");
  const json& lp = c.json_body["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"].size(), c.json_body["usage"]["completion_tokens"].get<size_t>());
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
  for (const json& l : lp["token_logprobs"]) EXPECT_LE(l.get<double>(), 0.0);
}

TEST(ServeHttp, NChoicesAreSeededAndDistinct) {
  LiveServer& s = shared_server();
  json body = chat("Pick a word", 8);
  body["temperature"] = 1.0;
  body["n"] = 3;
  body["seed"] = 77;
  const Reply a = post(s, "/v1/chat/completions", body.dump());
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_EQ(a.json_body["choices"].size(), 3u);
  const Reply b = post(s, "/v1/chat/completions", body.dump());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a.json_body["choices"][i]["index"], i);
    EXPECT_EQ(a.json_body["choices"][i]["message"], b.json_body["choices"][i]["message"]);
  }
  // Choice i samples with seed + i: a request with seed 78 and n = 1 is choice 1.
  body["n"] = 1;
  body["seed"] = 78;
  const Reply one = post(s, "/v1/chat/completions", body.dump());
  EXPECT_EQ(one.json_body["choices"][0]["message"], a.json_body["choices"][1]["message"]);
}

TEST(ServeHttp, ErrorStatusesAndBodies) {
  LiveServer& s = shared_server();
  expect_error(post(s, "/v1/chat/completions", "{\"model\": \"tiny\", "), 400, "not valid JSON");
  json wrong = chat("x");
  wrong["messages"][0]["content"] = json::array({1});
  expect_error(post(s, "/v1/chat/completions", wrong.dump()), 400, "messages[0].content[0]");
  wrong = chat("x");
  wrong["max_tokens"] = "many";
  expect_error(post(s, "/v1/chat/completions", wrong.dump()), 400, "max_tokens");
  wrong = chat("x");
  wrong["model"] = "gpt-4o";
  expect_error(post(s, "/v1/chat/completions", wrong.dump()), 404, "gpt-4o");
  // Invalid UTF-8, raw and as an unpaired surrogate escape.
  expect_error(post(s, "/v1/chat/completions",
                    R"({"model": "tiny", "messages": [{"role": "user", "content": "a)"
                    "\xc3\x28"
                    R"("}]})"),
               400, "not valid JSON");
  expect_error(post(s, "/v1/completions", R"({"model": "tiny", "prompt": "\udc00"})"), 400,
               "not valid JSON");
  // A body over --max-body-bytes (64 KiB here) is 413; a prompt within it but over the context
  // is 400 context_length_exceeded.
  expect_error(post(s, "/v1/completions",
                    json{{"model", "tiny"}, {"prompt", std::string(100000, 'a')}}.dump()),
               413, "larger than");
  const Reply long_prompt = post(
      s, "/v1/completions", json{{"model", "tiny"}, {"prompt", std::vector<int>(600, 5)}}.dump());
  expect_error(long_prompt, 400, "context is 512 tokens");
  EXPECT_EQ(long_prompt.json_body["error"]["code"], "context_length_exceeded");
  expect_error(get(s, "/v1/chat/completions"), 405, "not allowed");
  expect_error(get(s, "/v2/nothing"), 404, "no route");
  EXPECT_EQ(get(s, "/health").status, 200);  // still serving after all that
}

TEST(ServeHttp, ApiKey) {
  serve::ServerOptions so;
  so.api_key = "s3cret-key";
  LiveServer s({}, so);
  expect_error(get(s, "/v1/models"), 401, "API key");
  expect_error(get(s, "/v1/models", {{"Authorization", "Bearer s3cret-kez"}}), 401, "API key");
  expect_error(post(s, "/v1/chat/completions", chat("x").dump(), {{"Authorization", "s3cret-key"}}),
               401, "API key");
  EXPECT_EQ(get(s, "/v1/models", {{"Authorization", "Bearer s3cret-key"}}).status, 200);
  EXPECT_EQ(get(s, "/health").status, 200);  // open, for load balancers
}

TEST(ServeHttp, ConcurrentClientsGetTheirOwnAnswers) {
  LiveServer& s = shared_server();
  constexpr int kClients = 8;
  auto body = [](int i) {
    return json{{"model", "tiny"},
                {"prompt", "Request number " + std::to_string(i * 7919) + " says"},
                {"max_tokens", 8 + i % 3},
                {"temperature", 0},
                {"ignore_eos", true}};
  };
  std::vector<std::string> alone(kClients), together(kClients);
  for (int i = 0; i < kClients; ++i) {
    alone[i] = post(s, "/v1/completions", body(i).dump()).json_body["choices"][0]["text"];
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      const Reply r = post(s, "/v1/completions", body(i).dump());
      if (r.status == 200) together[i] = r.json_body["choices"][0]["text"];
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> distinct(alone.begin(), alone.end());
  EXPECT_GT(distinct.size(), 1u);  // the prompts lead to different answers
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(together[i], alone[i]) << "client " << i;
}

TEST(ServeHttp, DisconnectCancelsTheRequest) {
  LiveServer& s = shared_server();
  const uint64_t cancelled_before = s.engine->stats().requests_cancelled;
  json body = {{"model", "tiny"},  {"prompt", "Go on forever"}, {"max_tokens", 400},
               {"temperature", 0}, {"ignore_eos", true},        {"stream", true}};
  httplib::Client c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  (void)c.send(req);  // the receiver's false closes the connection mid-stream
  EXPECT_EQ(chunks, 3);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.engine->stats().requests_cancelled == cancelled_before &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(s.engine->stats().requests_cancelled, cancelled_before + 1);
  EXPECT_LT(s.engine->stats().generated_tokens, 400u + 200u);
}

TEST(ServeHttp, FullQueueIs429AndShutdownDrains) {
  EngineOptions eo;
  eo.max_running = 1;
  eo.max_queue = 1;
  LiveServer s(eo);
  // Long enough that the first is still running when the third arrives, even on a loaded machine.
  json longer = {{"model", "tiny"},
                 {"prompt", "Keep talking"},
                 {"max_tokens", 480},
                 {"temperature", 0},
                 {"ignore_eos", true}};
  Reply first, second;
  std::thread a([&] { first = post(s, "/v1/completions", longer.dump()); });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.engine->stats().running < 1 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::thread b([&] { second = post(s, "/v1/completions", longer.dump()); });
  while (s.engine->stats().waiting < 1 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const Reply third = post(s, "/v1/completions", longer.dump());
  expect_error(third, 429, "queue full");
  // Graceful shutdown while both run/wait: they finish, new requests are refused.
  std::thread stopper([&] { s.server->shutdown(); });
  a.join();
  b.join();
  stopper.join();
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(first.json_body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(second.json_body["usage"]["completion_tokens"], 480);
  EXPECT_NE(post(s, "/v1/completions", longer.dump()).status, 200);
}

TEST(ServeHttp, StreamedChoicesMatchTheWholeResponse) {
  LiveServer& s = shared_server();
  json body = chat("Name three things", 8);
  body["temperature"] = 1.0;
  body["n"] = 2;
  body["seed"] = 99;
  const Reply whole = post(s, "/v1/chat/completions", body.dump());
  ASSERT_EQ(whole.status, 200) << whole.body;
  body["stream"] = true;
  const Reply streamed = post(s, "/v1/chat/completions", body.dump());
  std::vector<std::string> text(2);
  std::vector<int> finishes(2, 0);
  for (const std::string& event : sse_payloads(streamed.body)) {
    if (event == "[DONE]") continue;
    const json chunk = json::parse(event);
    const json& c = chunk["choices"][0];
    const int index = c["index"];
    if (c["delta"].contains("content")) text[index] += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) ++finishes[index];
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(text[i], whole.json_body["choices"][i]["message"]["content"]) << "choice " << i;
    EXPECT_EQ(finishes[i], 1);
  }
}

TEST(ServeHttp, RequestTimeoutCancels) {
  serve::ServerOptions so;
  so.request_timeout_s = 0.001;  // passed before the first token can arrive
  LiveServer s({}, so);
  const json body = {{"model", "tiny"},
                     {"prompt", "Slowly"},
                     {"max_tokens", 480},
                     {"temperature", 0},
                     {"ignore_eos", true}};
  const Reply r = post(s, "/v1/completions", body.dump());
  // The status line went out with the stream, so the error is in the body.
  ASSERT_EQ(r.status, 200);
  expect_error(r, 200, "cancelled");
  EXPECT_EQ(r.json_body["error"]["type"], "server_error");
  EXPECT_EQ(s.engine->stats().requests_cancelled, 1u);
  EXPECT_LT(s.engine->stats().generated_tokens, 480u);
}
