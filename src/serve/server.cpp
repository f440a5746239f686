#include "serve/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <thread>

#include "model/config.h"
#include "model/model.h"
#include "serve/api_error.h"
#include "serve/openai_request.h"
#include "serve/openai_response.h"

namespace dseek::serve {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Constant-time comparison, so the time a wrong key takes does not reveal how much of it matched.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& param = "", const std::string& code = "") {
  send_json(res, status, error_body(status, message, param, code));
}

// One completion response being written: its engine requests and what they produced so far.
struct ResponseStream {
  CompletionRequest request;
  ResponseMeta meta;
  std::vector<std::shared_ptr<RequestHandle>> handles;
  std::vector<ChoiceState> choices;
  std::vector<bool> started;
  Clock::time_point arrived, deadline, last_write;
  bool first_token_seen = false, timed_out = false, done = false;

  void cancel_all() {
    for (auto& h : handles) h->cancel();
  }
  bool all_finished() const {
    for (const ChoiceState& c : choices) {
      if (!c.finished) return false;
    }
    return true;
  }
};

}  // namespace

struct Server::Impl {
  Engine& engine;
  const Tokenizer* tokenizer;
  ServerOptions options;
  ServedModel served;
  Metrics metrics;
  httplib::Server http;
  std::atomic<bool> shutting_down{false};
  std::atomic<int64_t> active_responses{0};
  std::mutex shutdown_mutex;
  bool shut_down = false;
  int64_t started_at = 0;

  Impl(Engine& e, const Tokenizer* t, ServerOptions o)
      : engine(e), tokenizer(t), options(std::move(o)) {
    served.name = options.served_model_name;
    served.tokenizer = tokenizer;
    served.chat_format = options.chat_format;
    served.default_max_tokens = options.default_max_tokens;
    served.context_tokens = engine.options().context_tokens > 0
                                ? engine.options().context_tokens
                                : engine.model().config().max_position_embeddings;
    started_at = std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
    setup();
  }

  template <typename F>
  static httplib::Server::Handler guarded(F handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        send_json(res, e.status(), e.to_json());
      } catch (const EngineRejected& e) {
        send_error(res, e.http_status(), e.what());
      } catch (const Error& e) {
        send_error(res, 400, e.what());
      } catch (const std::exception& e) {
        send_error(res, 500, std::string("[serve] internal error: ") + e.what());
      }
    };
  }

  void setup() {
    const int threads =
        options.http_threads > 0
            ? options.http_threads
            : static_cast<int>(std::min<int64_t>(
                  1024, engine.options().max_running + engine.options().max_queue + 16));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(options.max_body_bytes);
    http.set_read_timeout(options.read_timeout_s, 0);
    http.set_write_timeout(options.write_timeout_s, 0);

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (options.api_key.empty() || req.path == "/health") {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      const std::string auth = req.get_header_value("Authorization");
      const std::string prefix = "Bearer ";
      if (auth.compare(0, prefix.size(), prefix) != 0 ||
          !same_secret(auth.substr(prefix.size()), options.api_key)) {
        send_error(res, 401, "[serve] invalid or missing API key (Authorization: Bearer <key>)", "",
                   "invalid_api_key");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Responses httplib makes itself (404 no route, 413 body too large, 400 bad request line)
    // get the OpenAI error body too; responses with a body already keep it.
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty() || res.is_chunked_content_provider_) return;
      std::string message = "[serve] HTTP " + std::to_string(res.status);
      if (res.status == 404) message = "[serve] no route " + req.method + " " + req.path;
      if (res.status == 413) message = "[serve] request body larger than the server's limit";
      if (res.status == 400) message = "[serve] malformed HTTP request";
      send_error(res, res.status, message);
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.on_response(res.status);
      if (options.log_requests) {
        std::fprintf(stderr, "[serve] %s %s %d\n", req.method.c_str(), req.path.c_str(),
                     res.status);
      }
    });

    http.Post("/v1/chat/completions", guarded([this](const auto& req, auto& res) {
                completion(req, res, Endpoint::kChat);
              }));
    http.Post("/v1/completions", guarded([this](const auto& req, auto& res) {
                completion(req, res, Endpoint::kCompletion);
              }));
    http.Get("/v1/models", guarded([this](const auto&, auto& res) {
               send_json(res, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
             }));
    http.Get(R"(/v1/models/(.+))", guarded([this](const auto& req, auto& res) {
               if (req.matches[1] != served.name) {
                 throw ApiError(
                     404, "[serve] model `" + std::string(req.matches[1]) + "` does not exist",
                     "model", "model_not_found");
               }
               send_json(res, 200, model_json());
             }));
    http.Get("/health", guarded([this](const auto&, auto& res) {
               if (shutting_down) {
                 send_error(res, 503, "[serve] shutting down");
               } else {
                 send_json(res, 200, {{"status", "ok"}});
               }
             }));
    http.Get("/metrics", guarded([this](const auto&, auto& res) {
               res.set_content(metrics.render(engine.stats()), "text/plain; version=0.0.4");
             }));
    http.Post("/tokenize", guarded([this](const auto& req, auto& res) { tokenize(req, res); }));
    http.Post("/detokenize", guarded([this](const auto& req, auto& res) { detokenize(req, res); }));
    // The right path with the wrong method is a 405, not a 404.
    auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
      send_error(res, 405, "[serve] method " + req.method + " not allowed on " + req.path);
    };
    for (const char* path :
         {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}) {
      http.Get(path, not_allowed);
    }
    for (const char* path : {"/v1/models", "/health", "/metrics"}) http.Post(path, not_allowed);
  }

  json model_json() const {
    return {{"id", served.name},
            {"object", "model"},
            {"created", started_at},
            {"owned_by", "dseek"},
            {"max_model_len", served.context_tokens}};
  }

  void check_model_field(const json& body) const {
    if (!body.contains("model") || body["model"].is_null()) return;
    if (!body["model"].is_string()) invalid_field("model", "expected a string");
    if (body["model"] != served.name) {
      throw ApiError(
          404, "[serve] model: the model `" + body["model"].get<std::string>() + "` does not exist",
          "model", "model_not_found");
    }
  }

  // POST /tokenize {"prompt": "..."} or {"messages": [...]}, optional "add_special_tokens"
  // (default true: BOS before a prompt, as /v1/completions encodes it).
  void tokenize(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    if (!body.is_object()) invalid_field("body", "expected a JSON object");
    check_model_field(body);
    if (tokenizer == nullptr) throw ApiError(400, "[serve] the served model has no tokenizer");
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      json chat = body;
      chat["model"] = served.name;
      chat.erase("add_special_tokens");
      ids = parse_completion_request(chat, Endpoint::kChat, served).prompts.at(0);
    } else {
      if (!body.contains("prompt")) invalid_field("prompt", "missing");
      if (!body["prompt"].is_string()) invalid_field("prompt", "expected a string");
      bool special = true;
      if (body.contains("add_special_tokens")) {
        if (!body["add_special_tokens"].is_boolean()) {
          invalid_field("add_special_tokens", "expected a boolean");
        }
        special = body["add_special_tokens"].get<bool>();
      }
      bool has_bos = true;
      try {
        (void)tokenizer->bos_id();
      } catch (const Error&) {
        has_bos = false;
      }
      ids = tokenizer->encode(body["prompt"].get<std::string>(), special && has_bos);
    }
    send_json(res, 200,
              {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", served.context_tokens}});
  }

  // POST /detokenize {"tokens": [ids]} -> {"prompt": text}.
  void detokenize(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_json_body(req.body);
    if (!body.is_object()) invalid_field("body", "expected a JSON object");
    check_model_field(body);
    if (tokenizer == nullptr) throw ApiError(400, "[serve] the served model has no tokenizer");
    if (!body.contains("tokens")) invalid_field("tokens", "missing");
    const json& tokens = body["tokens"];
    if (!tokens.is_array()) invalid_field("tokens", "expected an array of token ids");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (!tokens[i].is_number_integer() || tokens[i].get<int64_t>() < 0 ||
          tokens[i].get<int64_t>() >= tokenizer->vocab_size()) {
        invalid_field(
            "tokens[" + std::to_string(i) + "]",
            "expected a token id in [0, " + std::to_string(tokenizer->vocab_size()) + ")");
      }
      ids.push_back(tokens[i].get<int32_t>());
    }
    send_json(res, 200, {{"prompt", tokenizer->decode(ids)}});
  }

  void completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    if (shutting_down) throw ApiError(503, "[serve] shutting down");
    auto stream = std::make_shared<ResponseStream>();
    stream->arrived = Clock::now();
    stream->request = parse_completion_request(parse_json_body(req.body), endpoint, served);
    stream->meta = {new_response_id(endpoint),
                    std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count(),
                    served.name};
    std::vector<EngineRequest> requests = engine_requests(stream->request);
    try {
      for (EngineRequest& r : requests) stream->handles.push_back(engine.submit(std::move(r)));
    } catch (const EngineRejected& e) {
      stream->cancel_all();  // a request of n whose later choices do not fit is refused whole
      const int status = e.http_status();
      throw ApiError(status, e.what(), "",
                     status == 429   ? "queue_full"
                     : status == 503 ? "shutting_down"
                                     : "");
    }
    stream->choices.resize(stream->handles.size());
    stream->started.assign(stream->handles.size(), false);
    stream->deadline =
        stream->arrived + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(options.request_timeout_s));
    stream->last_write = stream->arrived;
    ++active_responses;
    if (stream->request.stream) res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        stream->request.stream ? "text/event-stream" : "application/json",
        [this, stream](size_t, httplib::DataSink& sink) { return provide(*stream, sink); },
        [this, stream](bool success) {
          // Runs when httplib is done with the response, written or not: a client that went away
          // leaves success false, and its engine requests must not run on for nobody.
          if (!success || !stream->done) stream->cancel_all();
          metrics.on_request_done(
              std::chrono::duration<double>(Clock::now() - stream->arrived).count());
          --active_responses;
        });
  }

  // Adds one event to choice i and, when streaming, writes its chunk; false: the write failed.
  template <typename Write>
  bool on_event(ResponseStream& s, size_t i, const EngineEvent& event, Write& write) {
    ChoiceState& choice = s.choices[i];
    choice.add(event);
    const bool streaming = s.request.stream;
    if (event.kind == EngineEvent::Kind::kToken) {
      if (!s.first_token_seen) {
        s.first_token_seen = true;
        metrics.on_first_token(std::chrono::duration<double>(Clock::now() - s.arrived).count());
      }
      // Tokens that release no text (half a character, a possible stop string) send nothing,
      // unless their logprobs must go out.
      if (!streaming || (event.text.empty() && s.request.top_logprobs < 0 && s.started[i])) {
        return true;
      }
      const bool first = !s.started[i];
      s.started[i] = true;
      return write(sse_event(token_chunk(s.request, s.meta, int64_t(i), event, first, tokenizer)));
    }
    if (!streaming) return true;
    if (!choice.error.empty()) {
      const int status = choice.finish_reason == "cancelled" ? 503 : 500;
      return write(sse_event(error_body(status, "[serve] " + choice.error)));
    }
    return write(sse_event(finish_chunk(s.request, s.meta, int64_t(i), choice.finish_reason)));
  }

  // Writes what the engine produced since the last call; false ends the response (client gone).
  bool provide(ResponseStream& s, httplib::DataSink& sink) {
    const bool streaming = s.request.stream;
    bool wrote = false;
    auto write = [&](const std::string& text) {
      wrote = true;
      return sink.write(text.data(), text.size());
    };
    // Everything ready from every choice; when nothing is, one short wait on an unfinished
    // choice (short, so timeouts and disconnects are noticed while a prefill runs).
    bool any = false;
    for (size_t i = 0; i < s.handles.size(); ++i) {
      while (!s.choices[i].finished) {
        std::optional<EngineEvent> event = s.handles[i]->next(std::chrono::milliseconds(0));
        if (!event) break;
        any = true;
        if (!on_event(s, i, *event, write)) return false;
      }
    }
    for (size_t i = 0; i < s.handles.size() && !any; ++i) {
      if (s.choices[i].finished) continue;
      if (std::optional<EngineEvent> event = s.handles[i]->next(std::chrono::milliseconds(50))) {
        if (!on_event(s, i, *event, write)) return false;
      }
      break;
    }
    const Clock::time_point now = Clock::now();
    if (!s.timed_out && now > s.deadline) {
      s.timed_out = true;
      s.cancel_all();  // the engine answers with "cancelled" events
    }
    if (s.all_finished()) {
      if (streaming) {
        if (s.request.include_usage &&
            !write(sse_event(usage_chunk(s.request, s.meta, total_usage(s.request, s.choices))))) {
          return false;
        }
        if (!write(sse_done())) return false;
      } else {
        std::string error;
        for (const ChoiceState& c : s.choices) {
          if (!c.error.empty()) error = c.error;
        }
        // The 200 header is out already: a request cut short (timeout, shutdown) reports
        // the error in the body, in OpenAI's shape.
        const json body = error.empty()
                              ? completion_response(s.request, s.meta, s.choices, tokenizer)
                              : error_body(s.timed_out ? 504 : 503, "[serve] " + error);
        if (!write(body.dump(-1, ' ', false, json::error_handler_t::replace))) return false;
      }
      s.done = true;
      sink.done();
      return true;
    }
    if (wrote) {
      s.last_write = now;
    } else if (now - s.last_write > std::chrono::seconds(1)) {
      // Nothing to say for a second (a long prefill, a queue): write something harmless — an SSE
      // comment, or JSON's insignificant whitespace — since only a failed write reveals a client
      // that has gone.
      s.last_write = now;
      if (!write(streaming ? std::string(": keep-alive\n\n") : std::string(" "))) return false;
    }
    return true;
  }

  void shutdown() {
    std::lock_guard<std::mutex> lock(shutdown_mutex);
    if (shut_down) return;
    shut_down = true;
    shutting_down = true;
    const auto deadline =
        std::chrono::milliseconds(static_cast<int64_t>(options.shutdown_timeout_s * 1000.0));
    engine.shutdown(/*drain=*/true, deadline);
    // The engine has finished or cancelled every request; let the responses be written out
    // (httplib cuts chunked responses short once stop() closes the listener).
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (active_responses > 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    http.stop();
  }
};

Server::Server(Engine& engine, const Tokenizer* tokenizer, ServerOptions options) {
  // A client that closes its socket must not kill the server with SIGPIPE on the next write.
  std::signal(SIGPIPE, SIG_IGN);
  DSEEK_CHECK(!options.served_model_name.empty(), "[serve] served model name must not be empty");
  impl_ = std::make_unique<Impl>(engine, tokenizer, std::move(options));
}

Server::~Server() {
  if (impl_->http.is_running()) shutdown();
}

int Server::bind() {
  const ServerOptions& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    port = -1;
  }
  DSEEK_CHECK(port > 0, "[serve] cannot listen on {}:{}", o.host, o.port);
  return port;
}

void Server::run() {
  impl_->http.listen_after_bind();
}

void Server::shutdown() {
  impl_->shutdown();
}

const Metrics& Server::metrics() const {
  return impl_->metrics;
}

}  // namespace dseek::serve
