// The OpenAI-compatible HTTP server (cpp-httplib): /v1/chat/completions and /v1/completions
// (streamed as server-sent events or whole), /v1/models, /health, /metrics, /tokenize,
// /detokenize, in front of one Engine. Requests are parsed and validated (openai_request.h),
// submitted to the engine (n choices = n engine requests), and their events are written out by a
// chunked content provider, which also notices a client that went away (a failed write) and
// cancels its engine requests. Graceful shutdown: new completion requests get 503, in-flight ones
// finish (cancelled after the shutdown timeout), then the listener closes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "infer/engine.h"
#include "serve/metrics.h"
#include "tokenizer/tokenizer.h"

namespace dseek::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                   // 0: any free port (bind() returns it)
  std::string api_key;               // non-empty: every endpoint but /health needs "Bearer <key>"
  std::string served_model_name;     // the "model" clients name
  std::string chat_format;           // when the tokenizer has no chat_template
  size_t max_body_bytes = 4u << 20;  // larger request bodies get 413
  int http_threads = 0;              // 0: engine max_running + max_queue + 16 (one per connection)
  int read_timeout_s = 30;           // per socket read/write, as httplib counts them
  int write_timeout_s = 30;
  double request_timeout_s = 600;    // a completion request running longer is cancelled
  double shutdown_timeout_s = 30;    // graceful shutdown drains this long, then cancels
  int64_t default_max_tokens = 256;  // chat requests without max_tokens
  bool log_requests = false;         // one line per request on stderr
};

class Server {
 public:
  // `tokenizer` may be null (token-id prompts only). The engine outlives the server.
  Server(Engine& engine, const Tokenizer* tokenizer, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns the port (the chosen one for port 0). Throws
  // dseek::Error "[serve] cannot listen on HOST:PORT".
  int bind();
  // Serves until shutdown(); call after bind().
  void run();
  // Graceful shutdown (any thread but a request handler's): refuse new completion requests with
  // 503, drain the engine for shutdown_timeout_s (then cancel), wait for the responses to be
  // written, close the listener. run() returns afterwards. Idempotent.
  void shutdown();

  const Metrics& metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dseek::serve
