// `dseek train`: trains a DeepSeek-style model from prepared data (src/train/trainer.h).
// Settings come from defaults, then --config FILE (TOML or JSON), then the dedicated flags, then
// --set section.key=value; docs/TRAINING.md lists every setting.
//
// Data parallelism (docs/DISTRIBUTED.md): `mpirun -np N dseek train ...` runs N ranks; `dseek train
// --nproc N ...` starts that job itself on this machine (mpirun -np N with the same arguments) and
// waits for it.
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "train/train_config.h"
#include "train/trainer.h"

extern char** environ;

namespace dseek::cli {
namespace {

struct TrainFlags {
  std::string config_file, preset, model_config, tokenizer, data, out, schedule, device, synth_op,
      synth_site;
  int64_t steps = 0, seed = 0, batch_size = 0, seq_len = 0, threads = 0, nproc = 1,
          expert_parallel = 1, pipeline_parallel = 1;
  double lr = 0, compute_budget = 0;
  std::vector<std::string> sets;
  bool resume = false, deterministic = false, fp8 = false;
};

std::atomic<pid_t> g_launcher_child{-1};
std::atomic<int> g_forwarded_signal{0};
extern "C" void forward_to_launcher(int sig) {
  g_forwarded_signal.store(sig);
  const pid_t child = g_launcher_child.load();
  if (child > 0) ::kill(child, sig);
}

// This process's arguments as it was started, without --nproc and its value.
std::vector<std::string> own_arguments_without_nproc() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t at = 0; at < all.size();) {
    const size_t end = all.find('\0', at);
    args.push_back(all.substr(at, end - at));
    at = end == std::string::npos ? all.size() : end + 1;
  }
  std::vector<std::string> kept;
  for (size_t i = 1; i < args.size(); ++i) {  // [0] is the program
    if (args[i] == "--nproc") {
      ++i;
      continue;
    }
    if (args[i].rfind("--nproc=", 0) == 0) continue;
    kept.push_back(args[i]);
  }
  return kept;
}

// `dseek train --nproc N`: runs `mpirun -np N <this dseek> <the same arguments>` and waits. As
// root mpirun needs --allow-run-as-root; more ranks than cores need --oversubscribe. Ranks are not
// bound to cores (each runs OpenMP threads: OMP_NUM_THREADS, when unset, becomes cores / N).
// Returns the job's exit code; SIGINT/SIGTERM are passed on to mpirun (which passes them to the
// ranks: they finish the step, checkpoint and stop) and then make the result 130.
int launch_under_mpirun(int64_t nproc) {
  DSEEK_CHECK(dist::mpi_available(),
              "[train] --nproc {}: this dseek was built without MPI (install libopenmpi-dev and "
              "openmpi-bin, reconfigure with -DDSEEK_MPI=ON and rebuild)",
              nproc);
  std::string mpirun;
  if (const char* path = std::getenv("PATH")) {
    std::string dirs = path;
    for (size_t at = 0; at <= dirs.size();) {
      const size_t end = std::min(dirs.find(':', at), dirs.size());
      const std::string candidate = dirs.substr(at, end - at) + "/mpirun";
      if (end > at && ::access(candidate.c_str(), X_OK) == 0) {
        mpirun = candidate;
        break;
      }
      at = end + 1;
    }
  }
  DSEEK_CHECK(!mpirun.empty(), "[train] --nproc {}: mpirun not found on PATH (install openmpi-bin)",
              nproc);
  char self[4096];
  const ssize_t len = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  DSEEK_CHECK(len > 0, "[train] --nproc: cannot find this program's path (/proc/self/exe)");
  self[len] = '\0';

  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> argv_text = {mpirun, "-np", std::to_string(nproc), "--bind-to", "none"};
  if (::geteuid() == 0) argv_text.push_back("--allow-run-as-root");
  if (uint64_t(nproc) > cores) argv_text.push_back("--oversubscribe");
  if (!std::getenv("OMP_NUM_THREADS"))
    ::setenv("OMP_NUM_THREADS", std::to_string(std::max<int64_t>(1, int64_t(cores) / nproc)).c_str(),
             1);
  for (const char* var : {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS"})
    if (std::getenv(var)) argv_text.insert(argv_text.end(), {"-x", var});
  argv_text.push_back(self);
  for (const std::string& a : own_arguments_without_nproc()) argv_text.push_back(a);

  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, mpirun.c_str(), nullptr, nullptr, argv.data(), environ);
  DSEEK_CHECK(rc == 0, "[train] --nproc: cannot start {}: {}", mpirun, std::strerror(rc));
  g_forwarded_signal.store(0);
  g_launcher_child.store(pid);
  auto old_int = std::signal(SIGINT, forward_to_launcher);
  auto old_term = std::signal(SIGTERM, forward_to_launcher);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  g_launcher_child.store(-1);
  if (g_forwarded_signal.load() != 0) return 130;  // mpirun reports its own code for a signal
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a DeepSeek-style model on prepared data");
  auto f = std::make_shared<TrainFlags>();
  auto* config = cmd->add_option("--config", f->config_file, "settings file (.toml or .json)");
  auto* preset = cmd->add_option("--preset", f->preset, "model shape: tiny, small, tiny-dense, v2-lite, v3");
  auto* model = cmd->add_option("--model-config", f->model_config, "HF config.json to train instead of a preset");
  auto* tok = cmd->add_option("--tokenizer", f->tokenizer, "tokenizer.json or its directory");
  auto* data = cmd->add_option("--data", f->data, "directory from `dseek data prepare`");
  auto* out = cmd->add_option("--out", f->out, "run directory");
  auto* steps = cmd->add_option("--steps", f->steps, "optimizer steps in all (a resumed run continues up to it)");
  auto* seed = cmd->add_option("--seed", f->seed, "seed of the initialisation and data order");
  auto* batch = cmd->add_option("--batch-size", f->batch_size, "sequences per micro-batch");
  auto* seq = cmd->add_option("--seq-len", f->seq_len, "tokens per sequence");
  auto* lr = cmd->add_option("--lr", f->lr, "peak learning rate");
  auto* sched = cmd->add_option("--schedule", f->schedule, "constant | cosine | wsd | multistep");
  auto* budget = cmd->add_option("--compute-budget", f->compute_budget,
                                 "FLOPs: pick batch size, lr and steps by DeepSeek LLM's scaling laws");
  auto* threads = cmd->add_option("--threads", f->threads, "OpenMP threads (0: default)");
  auto* device = cmd->add_option("--device", f->device,
                                 "where training runs: cpu (default) or cuda (train.device)");
  cmd->add_option("--nproc", f->nproc,
                  "data-parallel ranks on this machine: runs the training under mpirun -np N")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
  auto* expert_parallel =
      cmd->add_option("--expert-parallel", f->expert_parallel,
                      "expert parallelism: spread the routed experts over groups of N ranks (N "
                      "divides --nproc; dist.expert_parallel)")
          ->check(CLI::Range(int64_t(1), int64_t(4096)));
  auto* pipeline_parallel =
      cmd->add_option("--pipeline-parallel", f->pipeline_parallel,
                      "pipeline parallelism: split the layers into N stages, one per rank, run "
                      "with the 1F1B schedule (N divides --nproc; dist.pipeline_parallel)")
          ->check(CLI::Range(int64_t(1), int64_t(4096)));
  auto* deterministic = cmd->add_flag(
      "--deterministic", f->deterministic,
      "data parallelism: fixed-order, bit-reproducible reductions (dist.deterministic = 1)");
  auto* fp8 = cmd->add_flag("--fp8", f->fp8,
                            "FP8 training the DeepSeek-V3 way (train.precision = fp8, docs/FP8.md)");
  auto* synth_op = cmd->add_option(
      "--synth-op", f->synth_op,
      "operator file that replaces MLP projections (train.synth_override.file)");
  auto* synth_site = cmd->add_option(
      "--synth-site", f->synth_site,
      "which projections: mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp, shared_experts.* "
      "(train.synth_override.site)");
  cmd->add_option("--set", f->sets, "override any setting: section.key=value (repeatable)");
  cmd->add_flag("--resume", f->resume, "continue the run from its newest checkpoint");
  cmd->callback([=] {
    const int ranks = dist::world().size();
    if (f->nproc > 1 && ranks == 1) {
      const int code = launch_under_mpirun(f->nproc);
      if (code == 130) throw CLI::RuntimeError(130);  // every rank stopped on a signal
      DSEEK_CHECK(code == 0,
                  "[train] --nproc {}: the training job failed (mpirun exit code {}; its messages "
                  "above name the rank and the cause). The newest complete checkpoint of the run "
                  "directory is intact: continue with --resume",
                  f->nproc, code);
      return;
    }
    DSEEK_CHECK(f->nproc <= 1 || f->nproc == ranks,
                "[train] --nproc {}: this process is already one of {} MPI ranks", f->nproc,
                ranks);
    train::TrainConfig c;
    if (config->count()) train::load_train_config_file(f->config_file, c);
    if (preset->count()) c.preset = f->preset;
    if (model->count()) c.model_config = f->model_config;
    if (tok->count()) c.tokenizer = f->tokenizer;
    if (data->count()) c.data = f->data;
    if (out->count()) c.out = f->out;
    if (steps->count()) c.steps = f->steps;
    if (seed->count()) c.seed = f->seed;
    if (batch->count()) c.batch_size = f->batch_size;
    if (seq->count()) c.seq_len = f->seq_len;
    if (lr->count()) c.lr = f->lr;
    if (sched->count()) c.schedule = f->schedule;
    if (budget->count()) c.compute_budget = f->compute_budget;
    if (threads->count()) c.threads = f->threads;
    if (device->count()) c.device = f->device;
    if (deterministic->count()) c.dist_deterministic = 1;
    if (expert_parallel->count()) c.expert_parallel = f->expert_parallel;
    if (pipeline_parallel->count()) c.pipeline_parallel = f->pipeline_parallel;
    if (fp8->count()) c.precision = "fp8";
    if (synth_op->count()) c.synth_file = f->synth_op;
    if (synth_site->count()) c.synth_site = f->synth_site;
    for (const std::string& s : f->sets) train::apply_train_config_override(s, c);
    const train::TrainSummary s = train::run_training(c, f->resume);
    if (s.last_step > s.first_step && dist::world().rank() == 0) {
      fmt::print("trained steps {}..{} of {}: loss {:.4f}", s.first_step + 1, s.last_step,
                 s.run_dir, s.last_loss);
      if (s.last_val_loss >= 0) fmt::print(", validation loss {:.4f}", s.last_val_loss);
      fmt::print(" (unigram entropy {:.4f}), {:.0f} tokens/s\n", s.unigram_entropy,
                 s.tokens_per_second);
    }
    if (s.interrupted) throw CLI::RuntimeError(130);
  });
}

}  // namespace dseek::cli
