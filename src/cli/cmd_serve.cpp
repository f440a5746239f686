// dseek serve: the OpenAI-compatible HTTP server over one model (src/serve/). Prints
// "dseek serve: listening on http://HOST:PORT" once the socket is bound (port 0 picks a free
// port; tests read it from that line). SIGINT/SIGTERM shut down gracefully: new requests get 503,
// in-flight ones finish within --shutdown-timeout (then are cancelled), and the command exits 0.
// --expert-parallel under `mpirun -np N` splits the routed experts over the ranks: rank 0 serves,
// the others mirror its batched forwards until it stops (cli/expert_parallel_serve.h).
#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "cli/expert_parallel.h"
#include "cli/expert_parallel_serve.h"
#include "cli/validators.h"
#include "core/cuda.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"
#include "infer/engine.h"
#include "model/model.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {
namespace {

// The self-pipe for SIGINT/SIGTERM (one dseek serve per process).
int g_signal_pipe[2] = {-1, -1};
volatile sig_atomic_t g_serving = 0;

extern "C" void on_shutdown_signal(int signal) {
  if (!g_serving) _exit(130);  // still loading: nothing to drain
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
}

class ShutdownSignals {
 public:
  ShutdownSignals() {
    DSEEK_CHECK(pipe(g_signal_pipe) == 0, "[serve] pipe: {}", std::strerror(errno));
    struct sigaction action {};
    action.sa_handler = on_shutdown_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~ShutdownSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    g_serving = 0;
    close(g_signal_pipe[0]);
    close(g_signal_pipe[1]);
  }
  void set_serving(bool serving) { g_serving = serving ? 1 : 0; }
  // The next signal's number, or 0 after wake().
  int wait() {
    unsigned char byte = 0;
    while (true) {
      const ssize_t n = read(g_signal_pipe[0], &byte, 1);
      if (n == 1) return byte;
      if (n < 0 && errno == EINTR) continue;
      return 0;
    }
  }
  void wake() {
    g_serving = 1;  // a late signal now goes to the pipe, which nobody reads: harmless
    const unsigned char zero = 0;
    [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &zero, 1);
  }

 private:
  struct sigaction old_int_ = {};
  struct sigaction old_term_ = {};
};

}  // namespace

void add_serve_command(CLI::App& app) {
  struct Args {
    std::string model, tokenizer;
    EngineOptions engine;
    serve::ServerOptions server;
    bool no_prefix_caching = false, no_speculative = false;
    int threads = 0;
    std::string device = "cpu", dtype = "f32";
    bool dequantize_fp8 = false, expert_parallel = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("serve", "OpenAI-compatible HTTP server (see docs/SERVING.md)");
  cmd->add_option("--model", args->model, "model directory")->required();
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json or directory (default: --model)");
  cmd->add_option("--host", args->server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", args->server.port, "port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", args->server.api_key,
                  "require 'Authorization: Bearer KEY' (default: $DSEEK_API_KEY)");
  cmd->add_option("--served-model-name", args->server.served_model_name,
                  "model name clients send (default: the model directory's name)");
  cmd->add_option("--chat-format", args->server.chat_format,
                  "chat format when the tokenizer has no chat_template");
  cmd->add_option("--cache-tokens", args->engine.cache_tokens, "KV cache budget in tokens")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--page-tokens", args->engine.page_tokens, "tokens per KV cache page")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--max-running", args->engine.max_running, "requests in the running batch")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", args->engine.max_batch_tokens, "tokens per forward step")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--max-queue", args->engine.max_queue, "waiting requests before 429")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--context", args->engine.context_tokens,
                  "prompt + max_tokens limit per request (0: the model's)")
      ->check(cli::non_negative);
  cmd->add_option("--max-body-bytes", args->server.max_body_bytes, "larger bodies get 413")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--default-max-tokens", args->server.default_max_tokens,
                  "chat max_tokens when a request gives none")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--request-timeout", args->server.request_timeout_s,
                  "seconds before a completion request is cancelled")
      ->check(cli::positive)
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout", args->server.shutdown_timeout_s,
                  "seconds in-flight requests may finish on SIGINT/SIGTERM")
      ->check(cli::non_negative)
      ->capture_default_str();
  cmd->add_option("--http-threads", args->server.http_threads,
                  "connection threads (0: max-running + max-queue + 16)")
      ->check(cli::non_negative);
  cmd->add_flag("--no-prefix-caching", args->no_prefix_caching, "do not reuse cached prefixes");
  cmd->add_flag("--no-speculative", args->no_speculative, "no MTP speculative decoding");
  cmd->add_option("--threads", args->threads, "OpenMP threads for the model (0: default)")
      ->check(cli::non_negative);
  cmd->add_flag("--log-requests", args->server.log_requests, "one stderr line per request");
  cmd->add_option("--device", args->device,
                  "where the model runs: cpu (default) or cuda (no MTP drafts there)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", args->dtype, "activation dtype: f32 (default) or bf16 (cuda only)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--dequantize-fp8", args->dequantize_fp8,
                "an FP8 checkpoint's weights are dequantised at load (default: its projections "
                "stay FP8 and run as FP8 GEMMs)");
  cmd->add_flag("--expert-parallel", args->expert_parallel,
                "under mpirun -np N: each rank holds 1/N of every MoE layer's routed experts; "
                "rank 0 serves (no MTP drafts)");
  cmd->callback([args] {
    // SIGINT/SIGTERM: a handler (whichever thread the kernel picks — OpenBLAS and OpenMP start
    // theirs before this runs, so masks cannot cover them) writes the signal number to a pipe; a
    // waiter thread reads it and runs the graceful shutdown outside signal context. A signal
    // before the server is up (a long checkpoint load) ends the process at once with 130.
    ShutdownSignals signals;
    std::mutex server_mutex;
    serve::Server* running = nullptr;  // set once the server listens
    std::thread waiter([&] {
      const int signal = signals.wait();
      if (signal == 0) return;  // the command is returning
      std::lock_guard<std::mutex> lock(server_mutex);
      if (running == nullptr) return;
      std::fprintf(stderr, "dseek serve: signal %d, shutting down\n", signal);
      running->shutdown();
    });
    struct WaiterGuard {  // wakes the waiter (if no signal did) and joins it, however we return
      ShutdownSignals& signals;
      std::thread& waiter;
      ~WaiterGuard() {
        signals.wake();
        waiter.join();
      }
    } guard{signals, waiter};

    if (args->server.api_key.empty()) {
      if (const char* key = std::getenv("DSEEK_API_KEY")) args->server.api_key = key;
    }
    if (args->server.served_model_name.empty()) {
      args->server.served_model_name =
          std::filesystem::path(args->model).lexically_normal().filename().string();
      if (args->server.served_model_name.empty()) {
        args->server.served_model_name =
            std::filesystem::path(args->model).lexically_normal().parent_path().filename().string();
      }
    }
    args->engine.prefix_caching = !args->no_prefix_caching;
    args->engine.speculative = !args->no_speculative;
    if (args->threads > 0) omp_set_num_threads(args->threads);

    std::optional<Tokenizer> tokenizer;
    if (!args->tokenizer.empty()) {
      tokenizer = Tokenizer::load(args->tokenizer);
    } else if (std::filesystem::exists(std::filesystem::path(args->model) / "tokenizer.json")) {
      tokenizer = Tokenizer::load(args->model);
    }
    Placement placement;
    if (args->device == "cuda") {
      dist::spread_ranks_over_gpus(dist::world());  // expert-parallel ranks: a GPU each if any
      cuda::require("--device cuda");
      placement.device = Device::CUDA;
    }
    if (args->dtype == "bf16") {
      DSEEK_CHECK(placement.device == Device::CUDA,
                  "[serve] --dtype bf16 needs --device cuda (the CPU computes in f32)");
      placement.act = DType::BF16;
    }
    if (args->dequantize_fp8) placement.fp8 = Fp8Weights::Dequantise;
    if (args->expert_parallel) {
      enable_expert_parallel(placement, "serve");
      DSEEK_CHECK(placement.experts.group->any_thread(),
                  "[serve] --expert-parallel: the MPI library does not allow calls from the "
                  "engine's thread (MPI_THREAD_SERIALIZED)");
    }
    const std::unique_ptr<Model> loaded = Model::load(args->model, placement);
    log_expert_parallel(*loaded, placement);
    std::optional<ExpertParallelLeader> leader;
    if (placement.experts.sharded()) {
      if (placement.experts.rank != 0) {
        // A follower has no server: a signal must not end it before rank 0 says stop.
        signals.set_serving(true);
        follow_expert_parallel_leader(*loaded, *placement.experts.group);
        std::fprintf(stderr, "dseek serve: rank %d stopped with rank 0\n", placement.experts.rank);
        return;
      }
      leader.emplace(*loaded, *placement.experts.group);
    }
    Model& model = leader ? static_cast<Model&>(*leader) : *loaded;

    Engine engine(model, tokenizer ? &*tokenizer : nullptr, args->engine);
    serve::Server server(engine, tokenizer ? &*tokenizer : nullptr, args->server);
    const int port = server.bind();
    std::printf("dseek serve: listening on http://%s:%d (model %s)\n", args->server.host.c_str(),
                port, args->server.served_model_name.c_str());
    std::fflush(stdout);
    {
      std::lock_guard<std::mutex> lock(server_mutex);
      running = &server;
      signals.set_serving(true);
    }
    server.run();
    {
      // run() returned: after shutdown() (signal), or because listening failed. Either way the
      // waiter must not touch the server any more.
      std::lock_guard<std::mutex> lock(server_mutex);
      running = nullptr;
    }
    // The engine's thread has ended; then the followers may return.
    engine.shutdown(false);
    if (leader) leader->stop();
    std::fprintf(stderr, "dseek serve: stopped\n");
  });
}

}  // namespace dseek::cli
