// Data-parallel training over MPI (docs/DISTRIBUTED.md), through real mpirun processes of the
// built binary on a small generated corpus: 2 ranks train the tiny preset to the same losses,
// weights and (gathered ZeRO-1) optimizer moments as one process; --deterministic runs repeat bit
// for bit, whether started by mpirun or by --nproc; a rank killed with SIGKILL fails the job with
// a non-zero exit that says so, leaves the last checkpoint intact, and --resume continues with the
// losses of an uninterrupted run. ZeRO-1 on 3 ranks (this binary relaunched under mpirun) equals
// AdamW on the summed gradients bit for bit; in process, with one rank it equals AdamW exactly
// (flat space, buckets cutting through parameters) and even_share partitions exactly.
// Pipeline parallelism: 2 stages (and 4, one layer each, and 2 pipelines of 2 stages, data
// parallel) with the 1F1B schedule over 2 (4) micro-batches per batch train like one process
// (losses, loads, weights, moments gathered from the stages), a pipeline checkpoint resumes on one
// process and one process's on 2 stages, bad settings are clear errors, and point-to-point
// send/recv deliver between 2 real ranks. Expert parallelism: 2 ranks with the routed experts split
// between them train like one process (losses, loads, weights, moments; also with the global
// expert-level balance loss), their checkpoint resumes on one process and one process's resumes on
// 2 expert-parallel ranks, and on 2 real ranks all_to_all_v moves its blocks and the MoE layer's
// forward, backward and balance loss equal one process's on the concatenated batch.
//
// The suite skips when this dseek was built without MPI or mpirun is missing (scripts/setup.sh
// installs OpenMPI). As root (CI) mpirun needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), set here.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "core/cuda.h"
#include "core/error.h"
#include "dist/hfreduce.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "dist_params.h"
#include "mpi_run.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/expert_parallel.h"
#include "train/layers.h"
#include "train/optimizer.h"
#include "train/param.h"
#include "train/train_config.h"
#include "train/train_model.h"

extern char** environ;

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;
using Args = std::vector<std::string>;
using nlohmann::json;

namespace {

// The ranks run through tests/mpi_run.h (one OpenMP thread each, LSan settings for ASan builds).
pid_t spawn(const std::string& program, const Args& args, const fs::path& out,
            const fs::path& err) {
  return mpi_spawn(program, args, out, err);
}
CliRun run(const std::string& program, const Args& args) {
  return mpi_run(program, args);
}

// `mpirun -np N dseek args...` (not bound to cores; oversubscription allowed for small CI boxes).
Args mpirun_args(int n, const Args& dseek_args) {
  Args a = {"-np", std::to_string(n), "--bind-to", "none", "--oversubscribe", DSEEK_BINARY};
  a.insert(a.end(), dseek_args.begin(), dseek_args.end());
  return a;
}

// 30 documents of "Subject verb object." sentences from small word lists (an LCG picks them).
std::string make_corpus() {
  const char* const subjects[] = {"the cat", "a dog", "my friend", "the old man", "a small bird"};
  const char* const verbs[] = {"likes", "sees", "finds", "wants"};
  const char* const objects[] = {"a red ball", "the green tree", "some bread", "the blue sea"};
  uint64_t x = 777;
  auto next = [&x](size_t n) {
    x = (x * 1103515245 + 12345) % (uint64_t(1) << 31);
    return size_t((x >> 16) % n);
  };
  std::string text;
  for (int d = 0; d < 30; ++d) {
    for (int j = 0; j < 4; ++j) {
      const std::string s = subjects[next(5)];
      const std::string v = verbs[next(4)];
      const std::string o = objects[next(4)];
      text += s + " " + v + " " + o + ". ";
    }
    text += "\n%\n";
  }
  return text;
}

std::vector<json> read_metrics(const fs::path& run_dir) {
  std::vector<json> lines;
  std::istringstream in(slurp(run_dir / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

json without_throughput(json line) {
  line.erase("tokens_per_s");
  return line;
}

fs::path latest_checkpoint(const fs::path& run_dir) {
  std::string name = slurp(run_dir / "checkpoints" / "latest");
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  return name.empty() ? fs::path() : run_dir / "checkpoints" / name;
}

// Named tensors in the same order agree elementwise: |a − b| ≤ rel · max(|a|, |b|) + floor · S
// (S: the tensor's largest |a|) for all but one element in 10^4, and every element within
// loose · S. Adam divides by √v, so an element whose gradient nearly cancels turns the last-bit
// difference of a summation order into a visible part of a step; a misplaced shard or a missed
// bucket is off by the tensor's whole scale in thousands of elements.
void expect_tensors_close(const std::vector<std::pair<std::string, Tensor>>& a,
                          const std::vector<std::pair<std::string, Tensor>>& b, double rel,
                          double floor, double loose, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0;
  std::string worst_name;
  int64_t total = 0, outside = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first) << what;
    ASSERT_EQ(a[i].second.numel(), b[i].second.numel()) << a[i].first;
    const float* x = a[i].second.data<float>();
    const float* y = b[i].second.data<float>();
    const int64_t n = a[i].second.numel();
    double scale = 0;
    for (int64_t k = 0; k < n; ++k) scale = std::max(scale, std::fabs(double(x[k])));
    for (int64_t k = 0; k < n; ++k) {
      const double d = std::fabs(double(x[k]) - double(y[k]));
      const double tight =
          rel * std::max(std::fabs(double(x[k])), std::fabs(double(y[k]))) + floor * scale;
      ASSERT_LE(d, loose * scale) << what << " " << a[i].first << "[" << k << "]: " << x[k]
                                  << " vs " << y[k];
      outside += d > tight;
      if (d > worst) {
        worst = d;
        worst_name = a[i].first;
      }
    }
    total += n;
  }
  EXPECT_LE(outside, total / 10000)
      << what << ": " << outside << " of " << total << " elements beyond the tight bound";
  std::printf(
      "[ dist     ] %s: %lld elements, %lld beyond the tight bound, largest difference "
      "%.3g (%s)\n",
      what.c_str(), (long long)total, (long long)outside, worst, worst_name.c_str());
}

class DistTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    mpirun_ = find_mpirun();
    if (!dist::mpi_available() || mpirun_.empty()) return;
    root_ = new TempDir();
    std::ofstream(root_->path / "corpus.txt") << make_corpus();
    const CliRun tok = run(DSEEK_BINARY, {"tokenizer", "train", "--input", corpus(), "--separator",
                                          "%", "--vocab-size", "300", "--out", tokenizer()});
    ASSERT_EQ(tok.exit_code, 0) << tok.err;
    const CliRun data = run(DSEEK_BINARY, {"data", "prepare", "--tokenizer", tokenizer(), "--input",
                                           corpus(), "--separator", "%", "--out", data_dir()});
    ASSERT_EQ(data.exit_code, 0) << data.err;
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  void SetUp() override {
    if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
    if (mpirun_.empty()) GTEST_SKIP() << "mpirun not found (scripts/setup.sh installs OpenMPI)";
  }

  static std::string corpus() { return (root_->path / "corpus.txt").string(); }
  static std::string tokenizer() { return (root_->path / "tok").string(); }
  static std::string data_dir() { return (root_->path / "data").string(); }
  static fs::path root() { return root_->path; }

  // The tiny preset, 4 sequences of 32 tokens per step, two micro-batches per step (so gradients
  // accumulate before the reduction), a constant lr after warm-up (a resumed run's lr does not
  // depend on --steps), validation every 2 steps, checkpoints every 2 steps, expert load every
  // step, and gradient buckets of ~2600 floats that cut through parameters.
  static constexpr int kSteps = 6;
  // Four steps of the tiny preset on chat data (`dseek data sft` / `dseek data dpo`), 4 rows a
  // step, small buckets; `extra` names the task.
  static Args chat_train_args(const fs::path& data, const fs::path& run_dir, const Args& extra) {
    Args a = {"train",  "--preset",    "tiny",  "--tokenizer",    tokenizer(),
              "--data", data.string(), "--out", run_dir.string(), "--steps",
              "4",      "--threads",   "1"};
    for (const char* set :
         {"train.batch_size=4", "optim.lr=1e-3", "optim.schedule=constant", "optim.warmup_steps=1",
          "checkpoint.interval=4", "eval.interval=100", "dist.bucket_mb=0.01"}) {
      a.push_back("--set");
      a.push_back(set);
    }
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  // chat_train_args on `pipelines` pipelines of 2 stages, 2 micro-batches a batch.
  static void chat_pipeline_run(const fs::path& data, const fs::path& run_dir, const Args& task,
                                int pipelines) {
    Args args = chat_train_args(data, run_dir, task);
    for (const std::string& a : pipeline_args(2, 2)) args.push_back(a);
    const CliRun r = run(mpirun_, mpirun_args(2 * pipelines, args));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  static Args train_args(const fs::path& run_dir, int steps, const Args& extra = {}) {
    Args a = {
        "train",    "--preset", "tiny",           "--tokenizer", tokenizer(),           "--data",
        data_dir(), "--out",    run_dir.string(), "--steps",     std::to_string(steps), "--threads",
        "1"};
    for (const char* set :
         {"data.seq_len=32", "train.batch_size=4", "train.grad_accum=2", "data.val_fraction=0.1",
          "optim.schedule=constant", "optim.warmup_steps=2", "eval.interval=2",
          "checkpoint.interval=2", "checkpoint.keep_last=10", "log.expert_load_interval=1",
          "dist.bucket_mb=0.01"}) {
      a.push_back("--set");
      a.push_back(set);
    }
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // One process, made once for the suite.
  static fs::path single_run() {
    const fs::path r = root() / "single";
    if (!fs::exists(r / "checkpoints" / "latest")) {
      const CliRun res = run(DSEEK_BINARY, train_args(r, kSteps));
      EXPECT_EQ(res.exit_code, 0) << res.err;
    }
    return r;
  }
  // Two ranks with deterministic reductions, started by --nproc, made once for the suite.
  static fs::path deterministic_run() {
    const fs::path r = root() / "det2";
    if (!fs::exists(r / "checkpoints" / "latest")) {
      const CliRun res =
          run(DSEEK_BINARY, train_args(r, kSteps, {"--nproc", "2", "--deterministic"}));
      EXPECT_EQ(res.exit_code, 0) << res.err;
      EXPECT_NE(res.out.find("trained steps 1.." + std::to_string(kSteps)), std::string::npos)
          << res.out;
    }
    return r;
  }

  // Two ranks with the routed experts split between them (--expert-parallel 2), made once.
  static fs::path expert_parallel_run() {
    const fs::path r = root() / "ep2";
    if (!fs::exists(r / "checkpoints" / "latest")) {
      const CliRun res =
          run(mpirun_, mpirun_args(2, train_args(r, kSteps, {"--expert-parallel", "2"})));
      EXPECT_EQ(res.exit_code, 0) << res.err;
      EXPECT_NE(res.err.find("expert parallel: 8 routed experts per MoE layer over 2 ranks"),
                std::string::npos)
          << res.err;
    }
    return r;
  }

  // Two pipeline stages (--pipeline-parallel 2, each batch of 4 sequences in 2 micro-batches),
  // made once.
  static fs::path pipeline_run() {
    const fs::path r = root() / "pp2";
    if (!fs::exists(r / "checkpoints" / "latest")) {
      const CliRun res = run(mpirun_, mpirun_args(2, train_args(r, kSteps, pipeline_args(2, 2))));
      EXPECT_EQ(res.exit_code, 0) << res.err;
      EXPECT_NE(res.err.find("pipeline parallel: 2 stages of 4 layers (stage 0: layers 0..1), 2 "
                             "micro-batches of 2 sequences per batch, 1F1B schedule"),
                std::string::npos)
          << res.err;
    }
    return r;
  }
  static Args pipeline_args(int stages, int micro_batches) {
    return {"--pipeline-parallel", std::to_string(stages), "--set",
            "dist.micro_batches=" + std::to_string(micro_batches)};
  }

  static std::string mpirun_;

 private:
  static TempDir* root_;
};
std::string DistTrain::mpirun_;
TempDir* DistTrain::root_ = nullptr;

// Steps logged by two data-parallel runs agree with those of one process: every loss and
// validation loss within 1e-5 relative, the gradient norm within 1e-4 (a norm over every element,
// after a few AdamW steps that each pass on the last bits of the previous ones), expert loads and
// data positions exactly; weights and moments as expect_tensors_close says. `floor`: an absolute
// tolerance beside the relative ones, for metrics that are zero in exact arithmetic (DPO's rewards
// at the first step are differences of equal log-probs, left with their rounding).
// `noise_at_first`: keys not compared at the first step (DPO's accuracy there is the sign of that
// rounding).
void expect_same_training(const fs::path& a, const fs::path& b, double floor = 1e-12,
                          const std::string& noise_at_first = "") {
  const double rel = 1e-5;
  const std::vector<json> ma = read_metrics(a), mb = read_metrics(b);
  ASSERT_EQ(ma.size(), mb.size());
  ASSERT_FALSE(ma.empty());
  for (size_t i = 0; i < ma.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    const json x = without_throughput(ma[i]), y = without_throughput(mb[i]);
    ASSERT_EQ(x.size(), y.size()) << x << "\n" << y;
    for (const auto& [key, value] : x.items()) {
      ASSERT_TRUE(y.contains(key)) << key;
      if (i == 0 && key == noise_at_first) continue;
      if (value.is_number_float()) {
        const double u = value.get<double>(), v = y[key].get<double>();
        const double r = key == "grad_norm" ? 1e-4 : rel;
        EXPECT_LE(std::fabs(u - v), r * std::max(std::fabs(u), std::fabs(v)) + floor)
            << key << ": " << u << " vs " << v;
      } else if (value.is_array() && !value.empty() && value[0].is_number_float()) {
        for (size_t k = 0; k < value.size(); ++k)
          EXPECT_NEAR(value[k].get<double>(), y[key][k].get<double>(),
                      rel * std::fabs(value[k].get<double>()) + floor)
              << key << "[" << k << "]";
      } else {
        EXPECT_EQ(value, y[key]) << key;
      }
    }
  }
  const train::CheckpointData ca = train::load_checkpoint(latest_checkpoint(a).string());
  const train::CheckpointData cb = train::load_checkpoint(latest_checkpoint(b).string());
  EXPECT_EQ(ca.step, cb.step);
  EXPECT_EQ(ca.state.at("loader"), cb.state.at("loader"));
  EXPECT_EQ(ca.state.at("optimizer_steps"), cb.state.at("optimizer_steps"));
  expect_tensors_close(ca.model, cb.model, 1e-5, 1e-4, 2e-3, "weights");
  // The moments gathered from the ranks' ZeRO-1 shards are the single process's AdamW moments.
  expect_tensors_close(ca.optimizer, cb.optimizer, 1e-3, 1e-3, 1e-2, "AdamW moments");
}

}  // namespace

TEST(DistShare, EvenShareCoversTheRangeInOrder) {
  for (int64_t n : {0, 1, 5, 7, 100, 1001})
    for (int ranks : {1, 2, 3, 8}) {
      int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const dist::Range s = dist::even_share(n, ranks, r);
        EXPECT_EQ(s.first, next) << n << " " << ranks << " " << r;
        EXPECT_GE(s.count, n / ranks);
        EXPECT_LE(s.count, n / ranks + 1);
        next = s.first + s.count;
      }
      EXPECT_EQ(next, n);
    }
  EXPECT_THROW(dist::even_share(10, 2, 2), Error);
}

// With one rank the ZeRO-1 path (flat space, 7-element buckets cutting through parameters,
// reduce-scatter and all-gather as copies, sharded AdamW) is AdamW exactly, bit for bit, over
// three steps with gradient clipping, decayed and undecayed parameters and a buffer in between.
TEST(DistShare, ZeroOneStepOnOneRankEqualsAdamW) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](const Shape& shape) {
    Tensor t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = normal(rng);
    return t;
  };
  auto make = [&](train::ParamSet& ps) {
    rng.seed(5);
    normal.reset();
    ps.add("model.embed_tokens.weight", random({5, 3}), true, true);
    ps.add("model.layers.0.input_layernorm.weight", random({3}), true, false);
    ps.add("model.layers.0.mlp.gate.e_score_correction_bias", random({4}), false, false);
    ps.add("model.layers.0.mlp.gate_proj.weight", random({4, 3}), true, true);
    ps.add("lm_head.weight", random({5, 3}), true, true);
  };
  train::ParamSet a, b;
  make(a);
  make(b);
  const train::AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  train::AdamW adamw(a, config);
  const auto group = dist::make_single_process_group();
  train::DataParallel dp(*group, b, config, 1, 7);
  EXPECT_EQ(dp.flat_size(), 15 + 3 + 12 + 15);
  EXPECT_EQ(dp.num_buckets(), 7);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a.all()[i].trainable) continue;
      const Tensor g = random(a.all()[i].value.shape());
      std::memcpy(a.all()[i].grad.data<float>(), g.data<float>(), g.nbytes());
      std::memcpy(b.all()[i].grad.data<float>(), g.data<float>(), g.nbytes());
    }
    const double na = train::clip_grad_norm(a, 2.0);
    adamw.step(1e-2);
    dp.arm();
    dp.on_block_backward(0);  // the main layer 0: everything but the embedding is final
    dp.reduce_gradients();
    EXPECT_DOUBLE_EQ(dp.clip_grad_norm(2.0), na);
    dp.step(1e-2);
    for (size_t i = 0; i < a.size(); ++i) {
      const Tensor& x = a.all()[i].value;
      const Tensor& y = b.all()[i].value;
      EXPECT_EQ(std::memcmp(x.data<float>(), y.data<float>(), x.nbytes()), 0)
          << "step " << step << ": " << a.all()[i].name;
    }
  }
  // The gathered moments are AdamW's, tensor by tensor.
  const auto gathered = dp.gather_state();
  const auto reference = adamw.state_tensors();
  expect_tensors_identical(gathered, reference, "moments");
  // And loading them back into a fresh sharded optimizer reproduces the same shard.
  train::DataParallel again(*group, b, config, 1, 5);
  again.load_state(std::map<std::string, Tensor>(reference.begin(), reference.end()), 3);
  EXPECT_EQ(again.exp_avg_shard(), dp.exp_avg_shard());
  EXPECT_EQ(again.exp_avg_sq_shard(), dp.exp_avg_sq_shard());
  EXPECT_EQ(again.step_count(), 3);
}

// 2 ranks (mpirun -np 2, MPI's own reductions) vs 1 process: the same losses, gradient norms,
// validation losses and expert loads at every step, the same final weights and, gathered from the
// ZeRO-1 shards, the same AdamW moments.
TEST_F(DistTrain, TwoRanksTrainLikeOneProcess) {
  TempDir dir;
  const fs::path two = dir.path / "two";
  const CliRun r = run(mpirun_, mpirun_args(2, train_args(two, kSteps)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Rank 0 alone reports: one summary line, one data-parallel banner.
  EXPECT_NE(r.out.find("trained steps 1.." + std::to_string(kSteps)), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("trained steps"), r.out.rfind("trained steps")) << r.out;
  EXPECT_NE(r.err.find("data parallel: 2 ranks"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("MPI-ordered"), std::string::npos) << r.err;
  expect_same_training(single_run(), two);
}

// --deterministic: two 2-rank runs, one through --nproc and one through mpirun, are identical bit
// for bit (metrics and every tensor of every checkpoint), and match one process within 1e-5.
TEST_F(DistTrain, DeterministicRunsRepeatBitForBit) {
  const fs::path a = deterministic_run();
  TempDir dir;
  const fs::path b = dir.path / "det";
  const CliRun r =
      run(mpirun_, mpirun_args(2, train_args(b, kSteps, {"--set", "dist.deterministic=1"})));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("deterministic reductions"), std::string::npos) << r.err;
  const std::vector<json> ma = read_metrics(a), mb = read_metrics(b);
  ASSERT_EQ(ma.size(), size_t(kSteps));
  ASSERT_EQ(mb.size(), ma.size());
  for (size_t i = 0; i < ma.size(); ++i)
    EXPECT_EQ(without_throughput(ma[i]).dump(), without_throughput(mb[i]).dump()) << i;
  for (int step = 2; step <= kSteps; step += 2) {
    const std::string name = train::checkpoint_dir_name(step);
    const auto ca = train::load_checkpoint((a / "checkpoints" / name).string());
    const auto cb = train::load_checkpoint((b / "checkpoints" / name).string());
    expect_tensors_identical(ca.model, cb.model, name + " weights");
    expect_tensors_identical(ca.optimizer, cb.optimizer, name + " moments");
  }
  expect_same_training(single_run(), a);
}

// A rank killed with SIGKILL mid-run: `dseek train --nproc 2` exits non-zero saying the job failed
// and how to continue; the newest checkpoint verifies; --resume on 2 ranks then logs exactly what
// the uninterrupted deterministic run logged, and ends on its weights.
TEST_F(DistTrain, KilledRankFailsClearlyAndResumesIdentically) {
  const fs::path reference = deterministic_run();
  TempDir dir;
  const fs::path killed = dir.path / "killed";
  // Far more steps than will run: the kill comes right after the first checkpoint.
  const Args args = train_args(killed, 400, {"--nproc", "2", "--deterministic"});
  const pid_t launcher = spawn(DSEEK_BINARY, args, dir.path / "out", dir.path / "err");
  ASSERT_GT(launcher, 0);
  // The ranks are the children of mpirun, the launcher's child; rank 1 is the one whose
  // environment says OMPI_COMM_WORLD_RANK=1.
  auto children = [](pid_t pid) {
    std::vector<pid_t> out;
    std::istringstream in(
        slurp("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
    for (pid_t c; in >> c;) out.push_back(c);
    return out;
  };
  pid_t rank1 = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (std::chrono::steady_clock::now() < deadline) {
    const fs::path latest = killed / "checkpoints" / "latest";
    if (fs::exists(latest) && !latest_checkpoint(killed).empty()) {
      for (pid_t mpirun : children(launcher))
        for (pid_t rank : children(mpirun)) {
          const std::string env = slurp("/proc/" + std::to_string(rank) + "/environ");
          if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos)
            rank1 = rank;
        }
      if (rank1 > 0) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(rank1, 0) << "no checkpoint or no rank 1 within the deadline\n"
                      << slurp(dir.path / "err");
  ASSERT_EQ(::kill(rank1, SIGKILL), 0);
  int status = 0;
  ::waitpid(launcher, &status, 0);
  const std::string err = slurp(dir.path / "err");
  EXPECT_EQ(exit_code_of(status), 1) << err;
  EXPECT_NE(err.find("the training job failed"), std::string::npos) << err;
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;
  EXPECT_NE(err.find("signal 9"), std::string::npos) << err;  // mpirun names the lost rank

  // The newest checkpoint is complete and verifies; no step beyond it was lost from the log.
  const fs::path latest = latest_checkpoint(killed);
  const train::CheckpointData ck = train::load_checkpoint(latest.string());
  ASSERT_GE(ck.step, 2);
  ASSERT_LT(ck.step, kSteps) << "the kill came too late to test a resume";

  const CliRun resumed = run(
      DSEEK_BINARY, train_args(killed, kSteps, {"--nproc", "2", "--deterministic", "--resume"}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resumed from"), std::string::npos) << resumed.err;
  const std::vector<json> mr = read_metrics(reference), mk = read_metrics(killed);
  ASSERT_EQ(mk.size(), mr.size());
  for (size_t i = 0; i < mr.size(); ++i)
    EXPECT_EQ(without_throughput(mk[i]).dump(), without_throughput(mr[i]).dump()) << i;
  const auto a = train::load_checkpoint(latest_checkpoint(reference).string());
  const auto b = train::load_checkpoint(latest_checkpoint(killed).string());
  EXPECT_EQ(b.step, kSteps);
  expect_tensors_identical(a.model, b.model, "resumed weights");
  expect_tensors_identical(a.optimizer, b.optimizer, "resumed moments");
}

// A 2-rank checkpoint resumes on one process (the moments are saved whole), continuing within
// float tolerance of the 2-rank run.
TEST_F(DistTrain, TwoRankCheckpointResumesOnOneProcess) {
  const fs::path reference = deterministic_run();
  TempDir dir;
  const fs::path run_dir = dir.path / "run";
  fs::create_directories(run_dir / "checkpoints");
  fs::copy(reference / "config.json", run_dir / "config.json");
  fs::copy(reference / "checkpoints" / train::checkpoint_dir_name(2),
           run_dir / "checkpoints" / train::checkpoint_dir_name(2), fs::copy_options::recursive);
  {
    std::ofstream metrics(run_dir / "metrics.jsonl");
    const std::vector<json> m = read_metrics(reference);
    for (size_t i = 0; i < 2; ++i) metrics << m[i].dump() << "\n";
  }
  const CliRun r = run(DSEEK_BINARY, train_args(run_dir, kSteps, {"--resume"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_training(reference, run_dir);
}

// Settings data parallelism cannot honour are errors naming them, on every launch path.
TEST_F(DistTrain, UnevenBatchIsAClearError) {
  TempDir dir;
  const CliRun r = run(
      mpirun_, mpirun_args(2, train_args(dir.path / "run", 2, {"--set", "train.batch_size=3"})));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("train.batch_size 3: must be divisible by the 2 ranks"), std::string::npos)
      << r.err;
  const CliRun n = run(DSEEK_BINARY, train_args(dir.path / "run2", 2,
                                                {"--nproc", "2", "--set", "train.batch_size=3"}));
  EXPECT_EQ(n.exit_code, 1);
  EXPECT_NE(n.err.find("must be divisible by the 2 ranks"), std::string::npos) << n.err;
}

// Expert parallelism over 2 ranks (each owning 4 of the tiny preset's 8 routed experts per MoE
// layer, tokens dispatched and combined through all-to-all) trains like one process on the same
// global batch: losses, validation losses, gradient norms and MaxVio within float tolerance, the
// expert loads (global counts) exactly, and the checkpoint (every expert gathered on rank 0, the
// moments in parameter order) is the one a single process writes, within float tolerance.
TEST_F(DistTrain, ExpertParallelTrainsLikeOneProcess) {
  expect_same_training(single_run(), expert_parallel_run());
}

// The expert-level balance loss sees the global batch's counts and mean scores under expert
// parallelism, so the logged aux loss and the training match one process's too.
TEST_F(DistTrain, ExpertParallelBalanceLossIsTheGlobalOne) {
  const Args aux = {"--set", "moe.aux_loss=expert", "--set", "moe.aux_alpha=0.05"};
  TempDir dir;
  const fs::path one = dir.path / "one", ep = dir.path / "ep";
  const CliRun a = run(DSEEK_BINARY, train_args(one, 4, aux));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  Args ep_args = aux;
  ep_args.insert(ep_args.end(), {"--expert-parallel", "2"});
  const CliRun b = run(mpirun_, mpirun_args(2, train_args(ep, 4, ep_args)));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_GT(read_metrics(one)[0]["aux_loss"].get<double>(), 0.0);
  expect_same_training(one, ep);
}

// 4 ranks in 2 expert-parallel groups of 2 (data parallel across the groups: each expert has 2
// replicas whose gradients are summed) train like one process too.
TEST_F(DistTrain, ExpertParallelGroupsWithDataParallelAcrossTrainLikeOneProcess) {
  TempDir dir;
  const fs::path run_dir = dir.path / "ep2x2";
  const CliRun r =
      run(mpirun_, mpirun_args(4, train_args(run_dir, kSteps, {"--expert-parallel", "2"})));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("over 2 ranks (4 each), each token's experts on at most 2 ranks; 2 such "
                       "groups, data-parallel across them"),
            std::string::npos)
      << r.err;
  expect_same_training(single_run(), run_dir);
}

// An expert-parallel checkpoint resumes on one process, and one process's on 2 expert-parallel
// ranks, each continuing within float tolerance of the run it came from.
TEST_F(DistTrain, ExpertParallelCheckpointsResumeEitherWay) {
  for (const bool from_ep : {true, false}) {
    SCOPED_TRACE(from_ep ? "expert-parallel checkpoint, one process" : "one process, EP ranks");
    const fs::path reference = from_ep ? expert_parallel_run() : single_run();
    TempDir dir;
    const fs::path run_dir = dir.path / "run";
    fs::create_directories(run_dir / "checkpoints");
    fs::copy(reference / "config.json", run_dir / "config.json");
    fs::copy(reference / "checkpoints" / train::checkpoint_dir_name(2),
             run_dir / "checkpoints" / train::checkpoint_dir_name(2), fs::copy_options::recursive);
    {
      std::ofstream metrics(run_dir / "metrics.jsonl");
      const std::vector<json> m = read_metrics(reference);
      for (size_t i = 0; i < 2; ++i) metrics << m[i].dump() << "\n";
    }
    const CliRun r =
        from_ep ? run(DSEEK_BINARY, train_args(run_dir, kSteps, {"--resume"}))
                : run(mpirun_, mpirun_args(2, train_args(run_dir, kSteps,
                                                         {"--resume", "--expert-parallel", "2"})));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_same_training(reference, run_dir);
  }
}

// DPO, data parallel: 2 ranks train like one process on the same global batches (rows pack
// different numbers of pairs, and each rank's pairs are weighted for the mean over all of them:
// the same loss, rewards, norms and weights within the data-parallel tolerances); the reference
// log-probs, split over the ranks and all-reduced, are the single process's exactly. And with
// expert parallelism over the 2 ranks, within the expert-parallel tolerances, and with 1 and 2
// pipelines of 2 stages.
TEST_F(DistTrain, DpoTwoRanksTrainLikeOneProcess) {
  TempDir dir;
  {
    std::ofstream pairs(dir.path / "pairs.jsonl");
    const char* const things[] = {"the red ball", "a green tree", "some bread", "the blue sea"};
    const int repeats[] = {1, 6, 2, 9, 1, 3};
    for (int i = 0; i < 24; ++i) {
      const std::string thing = things[i % 4];
      // Answers of different lengths, so rows of 160 tokens pack one or two pairs (15 rows).
      std::string chosen;
      for (int k = 0; k < repeats[i % 6]; ++k) chosen += thing + " ";
      pairs << json({{"prompt", "where is " + thing + "?"},
                     {"chosen", chosen + "is here."},
                     {"rejected", "no."}})
                   .dump()
            << "\n";
    }
  }
  const fs::path dpo_data = dir.path / "dpo";
  CliRun r = run(DSEEK_BINARY, {"data", "dpo", "--tokenizer", tokenizer(), "--chat-format",
                                "deepseek_llm", "--input", (dir.path / "pairs.jsonl").string(),
                                "--max-len", "160", "--out", dpo_data.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const fs::path one = dir.path / "one", two = dir.path / "two";
  const Args dpo = {"--set", "train.task=dpo", "--set", "dpo.beta=0.2"};
  r = run(DSEEK_BINARY, chat_train_args(dpo_data, one, dpo));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run(mpirun_, mpirun_args(2, chat_train_args(dpo_data, two, dpo)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("reference log-probs of 24 pairs over 2 ranks"), std::string::npos) << r.err;
  EXPECT_EQ(json::parse(slurp(one / "reference_logps.json")),
            json::parse(slurp(two / "reference_logps.json")));
  const std::vector<json> m = read_metrics(two);
  ASSERT_FALSE(m.empty());
  EXPECT_TRUE(m[0].contains("rewards/margins")) << m[0];
  // Rewards are β·(log π − ref) of log-probs of tens of nats: 1e-6 is their rounding.
  expect_same_training(one, two, 1e-6, "rewards/accuracies");

  // Expert parallel: the routed experts split over the 2 ranks. Every forward is then collective,
  // so the reference pass runs a stand-in row on the rank left without one (15 rows over 2
  // ranks); its log-probs are one process's within the experts' summation order.
  const fs::path ep = dir.path / "ep";
  Args ep_args = chat_train_args(dpo_data, ep, dpo);
  ep_args.insert(ep_args.end(), {"--expert-parallel", "2"});
  r = run(mpirun_, mpirun_args(2, ep_args));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("expert parallel: 8 routed experts per MoE layer over 2 ranks"),
            std::string::npos)
      << r.err;
  const json ref_one = json::parse(slurp(one / "reference_logps.json"));
  const json ref_ep = json::parse(slurp(ep / "reference_logps.json"));
  ASSERT_EQ(ref_one.at("pairs"), ref_ep.at("pairs"));
  for (const char* side : {"chosen", "rejected"})
    for (size_t k = 0; k < ref_one.at(side).size(); ++k) {
      const double want = ref_one[side][k].get<double>(), got = ref_ep[side][k].get<double>();
      EXPECT_NEAR(got, want, 1e-6 * std::fabs(want)) << side << " " << k;
    }
  expect_same_training(one, ep, 1e-6, "rewards/accuracies");

  // Pipelines: 1 and 2 pipelines of 2 stages, 2 micro-batches a batch. The reference pass runs
  // each row through a pipeline's stages; each micro-batch's pairs weigh their share of the
  // batch's pairs over every micro-batch and pipeline.
  for (const int pipelines : {1, 2}) {
    SCOPED_TRACE(std::to_string(pipelines) + " pipeline(s) of 2 stages");
    const fs::path pp = dir.path / ("pp" + std::to_string(pipelines));
    ASSERT_NO_FATAL_FAILURE(chat_pipeline_run(dpo_data, pp, dpo, pipelines));
    EXPECT_EQ(json::parse(slurp(one / "reference_logps.json")),
              json::parse(slurp(pp / "reference_logps.json")));
    expect_same_training(one, pp, 1e-6, "rewards/accuracies");
  }
}

// SFT, data parallel: rows hold different numbers of trained (assistant) targets, and the main
// loss is the mean over every rank's targets (each weighs N / all targets), so 2 ranks train like
// one process within the data-parallel tolerances (the mean of the ranks' means would not); and
// so do pipelines, whose micro-batches weigh their share of the batch's targets.
TEST_F(DistTrain, SftTwoRanksTrainLikeOneProcess) {
  TempDir dir;
  {
    std::ofstream chats(dir.path / "chats.jsonl");
    const char* const things[] = {"the red ball", "a green tree", "some bread", "the blue sea"};
    const int repeats[] = {1, 5, 2, 8, 1, 3, 6};
    for (int i = 0; i < 28; ++i) {
      const std::string thing = things[i % 4];
      std::string answer;
      for (int k = 0; k < repeats[i % 7]; ++k) answer += thing + " ";
      chats << json({{"messages",
                      {{{"role", "user"}, {"content", "where is " + thing + "?"}},
                       {{"role", "assistant"}, {"content", answer + "is here."}}}}})
                   .dump()
            << "\n";
    }
  }
  const fs::path sft_data = dir.path / "sft";
  CliRun r = run(DSEEK_BINARY, {"data", "sft", "--tokenizer", tokenizer(), "--chat-format",
                                "deepseek_llm", "--input", (dir.path / "chats.jsonl").string(),
                                "--max-len", "96", "--out", sft_data.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const fs::path one = dir.path / "one", two = dir.path / "two";
  const Args sft = {"--set", "train.task=sft"};
  r = run(DSEEK_BINARY, chat_train_args(sft_data, one, sft));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run(mpirun_, mpirun_args(2, chat_train_args(sft_data, two, sft)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_training(one, two);

  // Pipelines: 2 stages with 2 micro-batches of 2 rows, and 2 pipelines of 2 stages with 2
  // micro-batches of 1 row: each micro-batch's cross-entropy weighs its share of the batch's
  // targets over every micro-batch and pipeline, so the step's loss is one process's mean.
  for (const int pipelines : {1, 2}) {
    SCOPED_TRACE(std::to_string(pipelines) + " pipeline(s) of 2 stages");
    const fs::path pp = dir.path / ("pp" + std::to_string(pipelines));
    ASSERT_NO_FATAL_FAILURE(chat_pipeline_run(sft_data, pp, sft, pipelines));
    expect_same_training(one, pp);
  }
}

// Data (and expert) parallelism on GPUs where it cannot run is an error that says why: this dseek
// has no NCCL, or this machine has fewer GPUs than the node's 2 ranks (CI: none). tests/backend
// runs it on GPUs.
TEST_F(DistTrain, GpuRanksWithoutGpusOrNcclAreClearErrors) {
  if (dist::nccl_available() && cuda::device_count() >= 2)
    GTEST_SKIP() << "this machine can run 2 GPU ranks (tests/backend/test_backend_optim.cpp)";
  TempDir dir;
  const std::string message = dist::nccl_available() ? "NCCL needs one GPU per rank"
                                                     : "train.device cuda on 2 ranks needs NCCL";
  // Data parallel, and expert parallel (whose exchanges run on NCCL subgroups).
  for (const bool ep : {false, true}) {
    Args extra = {"--device", "cuda"};
    if (ep) extra.insert(extra.end(), {"--expert-parallel", "2"});
    const CliRun r =
        run(mpirun_, mpirun_args(2, train_args(dir.path / (ep ? "ep" : "dp"), 2, extra)));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
}

// Settings expert parallelism cannot honour are errors naming them.
TEST_F(DistTrain, ExpertParallelSettingsAreClearErrors) {
  TempDir dir;
  struct Case {
    int ranks;
    Args extra;
    std::string message;
  };
  const std::vector<Case> cases = {
      {2,
       {"--expert-parallel", "3"},
       "dist.expert_parallel 3: must divide the number of MPI ranks (2)"},
      {3,
       {"--expert-parallel", "3", "--set", "train.batch_size=3"},
       "expert parallel 3: must divide the 8 routed experts"},
      {2,
       {"--expert-parallel", "2", "--set", "dist.ep_max_ranks=1"},
       "dist.ep_max_ranks 1: the gate (noaux_tc with n_group 4, topk_group 2) can send a token to "
       "2 of the 2 ranks"},
      {4,
       {"--expert-parallel", "3", "--set", "train.batch_size=4"},
       "dist.expert_parallel 3: must divide the number of MPI ranks (4)"},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    const CliRun r =
        run(mpirun_, mpirun_args(c.ranks, train_args(dir.path / std::to_string(i++), 2, c.extra)));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

namespace {

// One rank's part of DistRanks.ZeroOneEqualsAdamWOnSummedGradients (run under mpirun).
void zero_one_on_this_rank() {
  dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  ASSERT_GT(w.size(), 1);
  const train::AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  for (int det = 0; det < 2; ++det)
    for (int64_t bucket : {1, 7, 64, 100000}) {
      SCOPED_TRACE("deterministic " + std::to_string(det) + ", bucket " + std::to_string(bucket));
      w.set_deterministic(det != 0);
      train::ParamSet a, b, scratch;
      make_params(a);
      make_params(b);
      make_params(scratch);
      train::AdamW reference(a, config);
      train::DataParallel dp(w, b, config, 2, bucket);
      for (int step = 0; step < 3; ++step) {
        // The reference: every rank's gradients summed in rank order, clipped, one AdamW step.
        summed_gradients(a, scratch, w.size(), step);
        const double norm = train::clip_grad_norm(a, 3.0);
        reference.step(1e-2);
        // ZeRO-1: this rank's gradients, reduced as backward would announce its blocks.
        rank_gradients(b, w.rank(), step);
        dp.arm();
        for (int64_t layer : {2, 1, 0}) dp.on_block_backward(layer);
        dp.reduce_gradients();
        EXPECT_NEAR(dp.clip_grad_norm(3.0), norm, 1e-12 * norm);
        dp.step(1e-2);
        for (size_t i = 0; i < a.size(); ++i)
          EXPECT_EQ(std::memcmp(a.all()[i].value.data<float>(), b.all()[i].value.data<float>(),
                                a.all()[i].value.nbytes()),
                    0)
              << "rank " << w.rank() << " step " << step << ": " << a.all()[i].name;
      }
      const auto gathered = dp.gather_state();
      if (w.rank() == 0) {
        expect_tensors_identical(gathered, reference.state_tensors(), "gathered moments");
      } else {
        EXPECT_TRUE(gathered.empty());
      }
      // Loading the full moments back gives every rank its shard again (other bucket size).
      const auto full = reference.state_tensors();
      train::DataParallel again(w, b, config, 2, bucket + 3);
      again.load_state(std::map<std::string, Tensor>(full.begin(), full.end()), 3);
      EXPECT_EQ(again.exp_avg_shard(), dp.exp_avg_shard());
      EXPECT_EQ(again.exp_avg_sq_shard(), dp.exp_avg_sq_shard());
    }
  dist::finalize_world();
}

// |a − b| ≤ 1e-5·|b| + 1e-6·max|b| elementwise (different GEMM row blocks may round differently);
// b all zero only where `may_be_zero` (an expert no token chose), and then a too.
void expect_rows_close(const float* a, const float* b, int64_t n, const std::string& what,
                       bool may_be_zero = false) {
  double scale = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(double(b[i])));
  if (scale == 0.0 && may_be_zero) {
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a[i], 0.0f) << what << "[" << i << "]";
    return;
  }
  ASSERT_GT(scale, 0.0) << what << ": all zero";
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    bad +=
        !(std::fabs(double(a[i]) - double(b[i])) <= 1e-5 * std::fabs(double(b[i])) + 1e-6 * scale);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << n << " elements differ";
}

// One rank's part of DistRanks.ExpertParallelMoeEqualsOneProcess (run under mpirun).
void expert_parallel_on_this_rank() {
  dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  const int N = w.size(), me = w.rank();
  ASSERT_GT(N, 1);
  {
    // all_to_all_v: rank p sends (p + 2q) % 3 elements (some blocks empty) to rank q.
    std::vector<int64_t> sc(static_cast<size_t>(N)), rc(static_cast<size_t>(N));
    std::vector<float> send, recv;
    for (int q = 0; q < N; ++q) {
      sc[size_t(q)] = (me + 2 * q) % 3;
      rc[size_t(q)] = (q + 2 * me) % 3;
      for (int64_t i = 0; i < sc[size_t(q)]; ++i) send.push_back(float(1000 * me + 100 * q + i));
    }
    int64_t total = 0;
    for (int64_t c : rc) total += c;
    recv.assign(size_t(total), std::nanf(""));
    w.all_to_all_v(send, sc, recv, rc);
    size_t at = 0;
    for (int q = 0; q < N; ++q)
      for (int64_t i = 0; i < rc[size_t(q)]; ++i)
        EXPECT_EQ(recv[at++], float(1000 * q + 100 * me + i)) << "from rank " << q;
    std::vector<int64_t> s2, r2(size_t(2 * N), -1);
    for (int q = 0; q < N; ++q)
      for (int i = 0; i < 2; ++i) s2.push_back(int64_t(1) << 40 | (10 * me + q + 100 * i));
    w.all_to_all(s2, r2);
    for (int q = 0; q < N; ++q)
      for (int i = 0; i < 2; ++i)
        EXPECT_EQ(r2[size_t(2 * q + i)], int64_t(1) << 40 | (10 * q + me + 100 * i));

    // all_to_all_v_rows: the same blocks as rows of 3 columns; the receive buffer poisoned.
    const int64_t cols = 3;
    Tensor send_rows = Tensor::empty({int64_t(send.size()), cols});
    for (size_t r = 0; r < send.size(); ++r)
      for (int64_t j = 0; j < cols; ++j)
        send_rows.data<float>()[r * cols + j] = send[r] + 0.25f * j;
    Tensor recv_rows =
        Tensor::from_vector(std::vector<float>(size_t(total * cols), std::nanf("")), {total, cols});
    w.all_to_all_v_rows(send_rows, sc, recv_rows, rc);
    at = 0;
    for (int q = 0; q < N; ++q)
      for (int64_t i = 0; i < rc[size_t(q)]; ++i, ++at)
        for (int64_t j = 0; j < cols; ++j)
          EXPECT_EQ(recv_rows.data<float>()[at * cols + j],
                    float(1000 * q + 100 * me + i) + 0.25f * j)
              << "row " << i << " from rank " << q;
    // Counts that do not add up to the tensors' rows are refused before anything is sent.
    std::vector<int64_t> wrong = sc;
    wrong[0] += 1;
    EXPECT_THROW(w.all_to_all_v_rows(send_rows, wrong, recv_rows, rc), Error);
  }

  // The tiny preset's first MoE layer; rank r holds 13 + 8r of the batch's tokens. topk_group 1
  // (of 4 groups of 2 experts, 2 groups per rank): node-limited to one rank per token.
  // Both paths: the CPU's host loops (moe_layer_ep.cpp), and the GPU's ops path on CPU tensors
  // (the exchange of train/expert_exchange.h that NCCL runs on GPUs, here through MPI).
  for (const bool ops_path : {false, true})
    for (const int64_t topk_group : {2, 1}) {
      SCOPED_TRACE(std::string(ops_path ? "ops path" : "host path") + ", topk_group " +
                   std::to_string(topk_group));
      ModelConfig cfg = train::preset_model_config("tiny", 300);
      cfg.topk_group = topk_group;
      const std::string prefix = "model.layers.1.mlp";
      ASSERT_TRUE(cfg.is_moe_layer(1));
      const RopeParams rope = rope_params(cfg);
      train::ParamSet ref_params, ep_params;
      train::TrainModel::init_params(cfg, 21, 0.1, ref_params);
      train::TrainModel::init_params(cfg, 21, 0.1, ep_params);
      // A non-zero selection bias, so the noaux_tc groups differ from the plain top-k.
      // (Small next to the sigmoid scores, so the groups still vary from token to token.)
      std::vector<float> bias_values = random_rows(1, cfg.n_routed_experts, 9).to_vector();
      for (float& b : bias_values) b *= 0.02f;
      const Tensor bias = Tensor::from_vector(bias_values, {1, cfg.n_routed_experts});
      for (train::ParamSet* ps : {&ref_params, &ep_params})
        train::copy_values(ps->at(prefix + ".gate.e_score_correction_bias").value,
                           bias.reshape({cfg.n_routed_experts}), "bias");
      std::vector<int64_t> first(size_t(N + 1), 0);
      for (int q = 0; q < N; ++q) first[size_t(q + 1)] = first[size_t(q)] + 13 + 8 * q;
      const int64_t T = first.back(), D = cfg.hidden_size,
                    mine = first[size_t(me + 1)] - first[size_t(me)];
      const Tensor x = random_rows(T, D, 3), dy = random_rows(T, D, 4);
      train::BalanceOptions balance;
      balance.aux_loss = "expert";
      balance.alpha = 0.1;

      train::LayerContext ref_ctx{cfg, rope, ref_params};
      ref_ctx.moe_ops_on_cpu = ops_path;
      train::MoeCache ref_cache;
      const Tensor ref_out = train::moe_forward(ref_ctx, prefix, x, {T}, balance, ref_cache);
      const Tensor ref_dx = train::moe_backward(ref_ctx, prefix, ref_cache, dy, 1.0f);

      const train::ExpertParallel ep = train::make_expert_parallel(w, cfg, N);
      train::LayerContext ep_ctx{cfg, rope, ep_params, &ep};
      ep_ctx.moe_ops_on_cpu = ops_path;
      train::MoeCache ep_cache;
      const Tensor x_mine = x.slice(0, first[size_t(me)], first[size_t(me + 1)]).contiguous();
      const Tensor dy_mine = dy.slice(0, first[size_t(me)], first[size_t(me + 1)]).contiguous();
      const Tensor out = train::moe_forward(ep_ctx, prefix, x_mine, {mine}, balance, ep_cache);
      // Every rank's loss is scaled by 1/N in training; the balance gradient compensates.
      const Tensor dx = train::moe_backward(ep_ctx, prefix, ep_cache, dy_mine, 1.0f / float(N));

      const int64_t off = first[size_t(me)] * D;
      expect_rows_close(out.data<float>(), ref_out.data<float>() + off, mine * D, "output");
      expect_rows_close(dx.data<float>(), ref_dx.data<float>() + off, mine * D, "input gradient");
      EXPECT_NEAR(ep_cache.aux_loss, ref_cache.aux_loss, 1e-6 * ref_cache.aux_loss);
      EXPECT_GT(ref_cache.aux_loss, 0.0);
      EXPECT_EQ(ep_cache.ops_path, ops_path);
      const int64_t max_ranks = ops_path ? ep_cache.exchange.max_ranks : ep_cache.host.ep_max_ranks;
      EXPECT_GE(max_ranks, 1);
      EXPECT_LE(max_ranks, train::node_limit(cfg, N));
      if (topk_group == 1) {
        EXPECT_EQ(train::node_limit(cfg, N), 1);
        EXPECT_EQ(max_ranks, 1);
      }

      // Gradients: the replicated ones summed over the ranks, each routed expert's on its owner
      // alone (the others never touched).
      const std::vector<int64_t> load = train::moe_expert_load(ref_cache);
      EXPECT_GE(std::count_if(load.begin(), load.end(), [](int64_t n) { return n > 0; }),
                int64_t(load.size()) / 2)
          << "too few experts chosen to test much";
      for (train::Param& p : ep_params.all()) {
        if (!p.trainable || p.name.rfind(prefix + ".", 0) != 0) continue;
        const train::Param& r = ref_params.at(p.name);
        const int64_t e = train::routed_expert_of(p.name);
        if (e < 0) {
          w.all_reduce(std::span<float>(p.grad.data<float>(), size_t(p.grad.numel())));
          expect_rows_close(p.grad.data<float>(), r.grad.data<float>(), p.grad.numel(), p.name);
        } else if (ep.owns(e)) {
          expect_rows_close(p.grad.data<float>(), r.grad.data<float>(), p.grad.numel(), p.name,
                            load[size_t(e)] == 0);
        } else {
          // (EXPECT, not ASSERT: a rank leaving early would leave the other waiting in all_reduce.)
          int64_t touched = 0;
          for (int64_t i = 0; i < p.grad.numel(); ++i) touched += p.grad.data<float>()[i] != 0.0f;
          EXPECT_EQ(touched, 0) << p.name << " on a rank that does not own it";
        }
      }
    }
  dist::finalize_world();
}

}  // namespace

// Expert parallelism's pieces on 2 real MPI ranks (this binary relaunched under mpirun):
// all_to_all_v and the int64 all_to_all deliver every block (empty ones included) to the right
// rank and place; the MoE layer with its routed experts split over the ranks gives, for each
// rank's 13 or 21 tokens, the outputs and input gradients one process computes on all 34, the same
// global expert-level balance loss, the summed gradients of the replicated gate and shared expert,
// and each expert's full gradient on its owner; no token reaches more ranks than node_limit, one
// rank with topk_group 1 (node-limited routing with M = 1).
TEST(DistRanks, ExpertParallelMoeEqualsOneProcess) {
  if (dist::launcher_world_size() > 1) {
    expert_parallel_on_this_rank();
    return;
  }
  run_test_on_ranks("DistRanks.ExpertParallelMoeEqualsOneProcess", 2);
}

// ZeRO-1 over 3 real MPI ranks (this test binary relaunched under mpirun, each rank running only
// this test): after every step each rank's parameters equal, bit for bit, one AdamW step on the
// sum of all ranks' gradients (rank order; with 3 ranks MPI's own reduce-scatter must agree too),
// for buckets of 1, 7, 64 elements and one bucket for everything, with reductions issued as
// blocks finish; the moments gathered on rank 0 are AdamW's and load back into each shard.
TEST(DistRanks, ZeroOneEqualsAdamWOnSummedGradients) {
  if (dist::launcher_world_size() > 1) {
    zero_one_on_this_rank();
    return;
  }
  run_test_on_ranks("DistRanks.ZeroOneEqualsAdamWOnSummedGradients", 3);
}

// Pipeline parallelism over 2 stages (layers 0–1 with the embedding; layers 2–3, final norm, head
// and the MTP module with a copy of the embedding), each batch of 4 sequences as 2 micro-batches of
// 2 through the 1F1B schedule, trains like one process on the same global batch: the same
// tolerances as data parallelism (the micro-batches' GEMMs and the stages' partial sums add in
// another order, nothing else differs), expert loads exactly, and the checkpoint gathered on
// rank 0 is the one a single process writes (parameter order, AdamW moments).
TEST_F(DistTrain, PipelineTwoStagesTrainLikeOneProcess) {
  expect_same_training(single_run(), pipeline_run());
}

// 4 stages of one layer each, 4 micro-batches of one sequence (warm-up of 3, 2, 1, 0 forwards on
// stages 0..3), for 4 steps.
TEST_F(DistTrain, PipelineFourStagesTrainLikeOneProcess) {
  TempDir dir;
  const fs::path one = dir.path / "one", pp = dir.path / "pp4";
  const CliRun a = run(DSEEK_BINARY, train_args(one, 4));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const CliRun b = run(mpirun_, mpirun_args(4, train_args(pp, 4, pipeline_args(4, 4))));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.err.find("pipeline parallel: 4 stages of 4 layers (stage 0: layers 0..0)"),
            std::string::npos)
      << b.err;
  expect_same_training(one, pp);
}

// 4 ranks as 2 pipelines of 2 stages (ranks 0-1 and 2-3), data parallel across them: each
// pipeline trains on 2 of every batch's 4 sequences as 2 micro-batches of one, the replicas of a
// stage train it with ZeRO-1 (reduce-scattered buckets, sharded moments, all-gathered values), and
// the run matches one process's; the moments gathered from the shards are one process's.
TEST_F(DistTrain, PipelineTimesDataParallelTrainsLikeOneProcess) {
  TempDir dir;
  const fs::path run_dir = dir.path / "pp2x2";
  const CliRun r = run(mpirun_, mpirun_args(4, train_args(run_dir, kSteps, pipeline_args(2, 2))));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("2 micro-batches of 1 sequences per batch, 1F1B schedule; 2 pipelines, "
                       "data parallel across them (ZeRO-1 over each stage's replicas"),
            std::string::npos)
      << r.err;
  expect_same_training(single_run(), run_dir);
}

// A pipeline checkpoint (gathered on rank 0) resumes on one process, and one process's on 2
// pipeline stages and on 2 pipelines of 2 stages, each continuing within float tolerance of the
// run it came from.
TEST_F(DistTrain, PipelineCheckpointsResumeEitherWay) {
  struct Case {
    std::string what;
    bool from_pipeline;
    int ranks;  // of the resumed run
  };
  for (const Case& c :
       {Case{"pipeline checkpoint, one process", true, 1}, Case{"one process, 2 stages", false, 2},
        Case{"one process, 2 pipelines of 2 stages", false, 4}}) {
    SCOPED_TRACE(c.what);
    const fs::path reference = c.from_pipeline ? pipeline_run() : single_run();
    TempDir dir;
    const fs::path run_dir = dir.path / "run";
    fs::create_directories(run_dir / "checkpoints");
    fs::copy(reference / "config.json", run_dir / "config.json");
    fs::copy(reference / "checkpoints" / train::checkpoint_dir_name(2),
             run_dir / "checkpoints" / train::checkpoint_dir_name(2), fs::copy_options::recursive);
    {
      std::ofstream metrics(run_dir / "metrics.jsonl");
      const std::vector<json> m = read_metrics(reference);
      for (size_t i = 0; i < 2; ++i) metrics << m[i].dump() << "\n";
    }
    Args resume = {"--resume"};
    if (c.ranks > 1) resume = pipeline_args(2, 2), resume.push_back("--resume");
    const CliRun r = c.ranks == 1
                         ? run(DSEEK_BINARY, train_args(run_dir, kSteps, resume))
                         : run(mpirun_, mpirun_args(c.ranks, train_args(run_dir, kSteps, resume)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_same_training(reference, run_dir);
  }
}

// Settings pipeline parallelism cannot honour are errors naming them (one process: the checks
// come before any rank waits for another).
TEST_F(DistTrain, PipelineSettingsAreClearErrors) {
  TempDir dir;
  struct Case {
    int ranks;
    Args extra;
    std::string message;
  };
  const std::vector<Case> cases = {
      {1,
       {"--pipeline-parallel", "5"},
       "dist.pipeline_parallel 5: the model has 4 layers, so at most 4 stages"},
      {1,
       {"--pipeline-parallel", "2", "--set", "dist.micro_batches=3"},
       "dist.micro_batches 3: train.batch_size 4 does not split into 3 equal micro-batches"},
      {1, {"--set", "dist.micro_batches=2"}, "only pipeline parallelism splits batches"},
      {1,
       {"--pipeline-parallel", "2", "--expert-parallel", "2"},
       "cannot be combined with dist.expert_parallel"},
      {1,
       {"--pipeline-parallel", "2", "--device", "cuda"},
       "dist.pipeline_parallel 2: runs on CPU ranks only"},
      {1,
       {"--pipeline-parallel", "2"},
       "dist.pipeline_parallel 2: must divide the number of MPI ranks (1)"},
      {3,
       {"--pipeline-parallel", "2", "--set", "train.batch_size=3"},
       "dist.pipeline_parallel 2: must divide the number of MPI ranks (3): the ranks form "
       "pipelines of 2 stages"},
      {4,
       {"--pipeline-parallel", "2", "--set", "dist.micro_batches=4"},
       "train.batch_size 4: must be divisible by the 2 pipelines times dist.micro_batches 4"},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    const Args args = train_args(dir.path / std::to_string(i++), 2, c.extra);
    const CliRun r =
        c.ranks == 1 ? run(DSEEK_BINARY, args) : run(mpirun_, mpirun_args(c.ranks, args));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

// Subgroups on 4 real ranks: split by rank / 2 (the expert-parallel groups {0, 1}, {2, 3}) and by
// rank % 2 (the replicas {0, 2}, {1, 3}); each new group ranks its members in world order and sums
// only over them, keeps the parent's deterministic setting, exchanges blocks among its members,
// refuses HFReduce; the single-process group splits into another single-process group.
TEST(DistRanks, SplitGroupsReduceWithinThemselves) {
  if (dist::launcher_world_size() <= 1) {
    auto single = dist::make_single_process_group();
    single->set_deterministic(true);
    auto sub = single->split(3);
    EXPECT_EQ(sub->size(), 1);
    EXPECT_TRUE(sub->deterministic());
    run_test_on_ranks("DistRanks.SplitGroupsReduceWithinThemselves", 4);
    return;
  }
  dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  ASSERT_EQ(w.size(), 4);
  const int r = w.rank();
  w.set_deterministic(true);
  for (const bool by_pair : {true, false}) {
    SCOPED_TRACE(by_pair ? "rank / 2" : "rank % 2");
    std::unique_ptr<dist::ProcessGroup> g = w.split(by_pair ? r / 2 : r % 2);
    ASSERT_EQ(g->size(), 2);
    EXPECT_EQ(g->rank(), by_pair ? r % 2 : r / 2);
    EXPECT_TRUE(g->deterministic());
    const int peer = by_pair ? (r ^ 1) : (r ^ 2);  // the other member's world rank
    std::vector<float> x = {float(r + 1), float(10 * (r + 1))};
    g->all_reduce(std::span<float>(x));
    EXPECT_EQ(x, (std::vector<float>{float(r + peer + 2), float(10 * (r + peer + 2))}));
    std::vector<double> d = {double(r)};
    g->all_reduce(std::span<double>(d));
    EXPECT_EQ(d[0], double(r + peer));
    // Every member sends its world rank to every member (2 to itself, 1 to the other).
    const std::vector<int64_t> counts = {g->rank() == 0 ? 2 : 1, g->rank() == 0 ? 1 : 2};
    std::vector<float> send(3, float(r)), recv(3, -1.0f);
    g->all_to_all_v(send, counts, recv, counts);
    const int first = std::min(r, peer), second = std::max(r, peer);
    if (g->rank() == 0)
      EXPECT_EQ(recv, (std::vector<float>{float(first), float(first), float(second)}));
    else
      EXPECT_EQ(recv, (std::vector<float>{float(first), float(second), float(second)}));
    EXPECT_THROW(g->set_all_reduce_algorithm(dist::AllReduceAlgorithm::HfReduce), Error);
  }
  dist::finalize_world();
}

// Point-to-point messages on 2 real ranks: both ranks post a large send to the other before
// receiving (a blocking send would deadlock here once MPI waits for the receiver), every element
// arrives, several messages with one tag arrive in order, a message of another size than the
// receive is an error naming both sizes; the single-process group refuses send and recv.
TEST(DistRanks, PointToPointSendAndReceive) {
  if (dist::launcher_world_size() <= 1) {
    const auto single = dist::make_single_process_group();
    std::vector<float> x(3, 1.0f);
    EXPECT_THROW(single->send(x, 0, 1), Error);
    EXPECT_THROW(single->recv(x, 0, 1), Error);
    run_test_on_ranks("DistRanks.PointToPointSendAndReceive", 2);
    return;
  }
  dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  const int me = w.rank(), peer = 1 - me;
  const size_t n = size_t(1) << 20;  // 4 MiB: far above any eager-send limit
  auto value = [](int from, int message, size_t i) {
    return float(from * 1000 + message) + float(i % 977) * 0.25f;
  };
  std::vector<std::vector<float>> out(3, std::vector<float>(n));
  std::vector<std::unique_ptr<dist::Work>> sends;
  for (int m = 0; m < 3; ++m) {
    for (size_t i = 0; i < n; ++i) out[size_t(m)][i] = value(me, m, i);
    sends.push_back(w.send_async(out[size_t(m)], peer, 7));
  }
  for (int m = 0; m < 3; ++m) {
    std::vector<float> in(n, std::nanf(""));
    w.recv(in, peer, 7);
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += in[i] != value(peer, m, i);
    EXPECT_EQ(wrong, 0u) << "message " << m << " from rank " << peer;
  }
  for (auto& s : sends) s->wait();
  // 3 floats sent, 4 expected.
  std::vector<float> three(3, 2.0f), four(4, std::nanf(""));
  if (me == 0) {
    w.send(three, 1, 9);
  } else {
    try {
      w.recv(four, 0, 9);
      ADD_FAILURE() << "a short message was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("3 elements from rank 0 (tag 9), expected 4"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(w.send(three, me, 1), Error);     // to itself
  EXPECT_THROW(w.send(three, peer, -1), Error);  // a tag below 0
  w.barrier();
  dist::finalize_world();
}

// ---- HFReduce (dist/hfreduce.h) ----

namespace {

// Rank r's buffer of n elements: uniform in [−1, 1], none zero, seeded by (r, n).
std::vector<float> hf_input(int rank, int64_t n) {
  std::mt19937 rng(uint32_t(7919 * rank + n));
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) v[i] = (i + size_t(rank)) % 3 == 0 ? -u(rng) : u(rng);
  return v;
}

// Every rank's result equals rank 0's, bit for bit.
bool same_on_every_rank(dist::ProcessGroup& w, const std::vector<float>& mine) {
  std::vector<float> root = mine;
  w.broadcast(root, 0);
  double differs[1] = {std::memcmp(root.data(), mine.data(), mine.size() * sizeof(float)) ? 1.0
                                                                                          : 0.0};
  w.all_reduce(std::span<double>(differs, 1));
  return differs[0] == 0.0;
}

// One rank's part of DistRanks.HfReduceEqualsReferenceSum (run under mpirun with 2 or 4 ranks).
void hfreduce_on_this_rank() {
  dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  const int N = w.size(), me = w.rank();
  ASSERT_GT(N, 1);
  for (const int per_node : {N, N / 2}) {  // one node; two emulated nodes
    dist::HfReduce hf({.ranks_per_node = per_node, .chunk_elements = 65536});
    dist::HfReduce tiny_chunks({.ranks_per_node = per_node, .chunk_elements = 3});
    ASSERT_EQ(hf.nodes(), N / per_node);
    ASSERT_EQ(hf.ranks_per_node(), per_node);
    for (const int64_t n : {int64_t(1), int64_t(7), int64_t(1000003)}) {
      // The double-precision sum, its bound, and the fixed-order float sum HFReduce's deterministic
      // mode promises: inside each node in local-rank order, then the node partials in node order.
      std::vector<double> ref(size_t(n), 0.0), mag(size_t(n), 0.0);
      std::vector<float> fixed(static_cast<size_t>(n), 0.0f), node_sum(static_cast<size_t>(n));
      for (int r = 0; r < N; ++r) {
        const std::vector<float> x = hf_input(r, n);
        for (int64_t i = 0; i < n; ++i) {
          ref[size_t(i)] += double(x[size_t(i)]);
          mag[size_t(i)] += std::fabs(double(x[size_t(i)]));
          node_sum[size_t(i)] =
              r % per_node == 0 ? x[size_t(i)] : node_sum[size_t(i)] + x[size_t(i)];
          if (r % per_node == per_node - 1)
            fixed[size_t(i)] =
                r < per_node ? node_sum[size_t(i)] : fixed[size_t(i)] + node_sum[size_t(i)];
        }
      }
      // This rank's block of an uneven split (rank 0 gets none when n > 1).
      std::vector<int64_t> counts(size_t(N), 0);
      for (int r = 1; r < N; ++r) counts[size_t(r)] = n / (N - 1) + (r == 1 ? n % (N - 1) : 0);
      if (n == 1) {
        counts.assign(size_t(N), 0);
        counts[size_t(N - 1)] = 1;
      }
      int64_t first = 0;
      for (int r = 0; r < me; ++r) first += counts[size_t(r)];
      for (dist::HfReduce* h : {&hf, &tiny_chunks}) {
        if (h == &tiny_chunks && n > 1000) continue;  // 333k rounds: too slow for the suite
        for (const bool det : {false, true}) {
          SCOPED_TRACE(fmt::format("{} ranks per node, n {}, chunk {}, deterministic {}", per_node,
                                   n, h == &hf ? 65536 : 3, det));
          std::vector<float> data = hf_input(me, n);
          h->reduce_async(data, data, 0, det)->wait();
          int64_t bad = 0, not_fixed = 0;
          for (int64_t i = 0; i < n; ++i) {
            bad += !(std::fabs(double(data[size_t(i)]) - ref[size_t(i)]) <=
                     4.0 * FLT_EPSILON * mag[size_t(i)]);
            not_fixed += data[size_t(i)] != fixed[size_t(i)];
          }
          EXPECT_EQ(bad, 0) << "elements off the double-precision sum";
          // One node sums in local-rank order in either mode; across nodes only deterministic
          // mode fixes the order.
          if (det || per_node == N) {
            EXPECT_EQ(not_fixed, 0) << "elements off the fixed-order sum";
          }
          EXPECT_TRUE(same_on_every_rank(w, data));
          if (det) {  // a repeat gives the same bits
            std::vector<float> again = hf_input(me, n);
            h->reduce_async(again, again, 0, true)->wait();
            EXPECT_EQ(std::memcmp(again.data(), data.data(), data.size() * sizeof(float)), 0);
          }
          // Reduce-scatter form: only this rank's block, out of a separate (poisoned) buffer.
          const std::vector<float> in = hf_input(me, n);
          std::vector<float> block(static_cast<size_t>(counts[size_t(me)]), std::nanf(""));
          h->reduce_async(in, block, first, det)->wait();
          for (size_t i = 0; i < block.size(); ++i)
            ASSERT_EQ(block[i], data[size_t(first) + i]) << "block element " << i;
        }
      }
    }
    // Several operations in flight, tested and waited for out of order (they run in issue order).
    std::vector<std::vector<float>> bufs;
    for (int64_t n : {300001, 5, 70000}) bufs.push_back(hf_input(me, n));
    std::vector<std::unique_ptr<dist::Work>> works;
    for (auto& b : bufs) works.push_back(hf.reduce_async(b, b, 0, false));
    for (int k = 2; k >= 0; --k) works[size_t(k)]->test();
    for (int k = 2; k >= 0; --k) works[size_t(k)]->wait();
    for (size_t k = 0; k < bufs.size(); ++k) {
      const int64_t n = int64_t(bufs[k].size());
      std::vector<double> ref(size_t(n), 0.0);
      for (int r = 0; r < N; ++r) {
        const std::vector<float> x = hf_input(r, n);
        for (int64_t i = 0; i < n; ++i) ref[size_t(i)] += x[size_t(i)];
      }
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i)
        bad += !(std::fabs(bufs[k][size_t(i)] - ref[size_t(i)]) <= 4.0 * FLT_EPSILON * N);
      EXPECT_EQ(bad, 0) << "operation " << k << " of 3 in flight";
    }
  }
  // Through the process group: the world's all-reduce and reduce-scatter with HFReduce selected,
  // two emulated nodes from the environment.
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", std::to_string(N / 2).c_str(), 1);
  w.set_all_reduce_algorithm(dist::AllReduceAlgorithm::HfReduce);
  EXPECT_EQ(w.all_reduce_description(),
            fmt::format("HFReduce, 2 nodes of {} rank{}", N / 2, N / 2 == 1 ? "" : "s"));
  std::vector<float> data = hf_input(me, 4099);
  w.all_reduce(std::span<float>(data));
  std::vector<float> grads = hf_input(me, 4099), mine(4099 / size_t(N) + 1, std::nanf(""));
  std::vector<int64_t> counts;
  for (int r = 0; r < N; ++r) counts.push_back(dist::even_share(4099, N, r).count);
  mine.resize(size_t(counts[size_t(me)]));
  w.reduce_scatter(grads, mine, counts);
  const dist::Range share = dist::even_share(4099, N, me);
  for (int64_t i = 0; i < share.count; ++i) {
    double ref = 0;
    for (int r = 0; r < N; ++r) ref += hf_input(r, 4099)[size_t(share.first + i)];
    ASSERT_NEAR(mine[size_t(i)], ref, 4.0 * FLT_EPSILON * N) << i;
    ASSERT_EQ(mine[size_t(i)], data[size_t(share.first + i)]) << i;
  }
  w.set_all_reduce_algorithm(dist::AllReduceAlgorithm::Mpi);
  EXPECT_EQ(w.all_reduce_description(), "MPI");
  // Bad layouts are errors on every rank (so none is left waiting).
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", std::to_string(N + 1).c_str(), 1);
  try {
    w.set_all_reduce_algorithm(dist::AllReduceAlgorithm::HfReduce);
    ADD_FAILURE() << "nodes of N+1 ranks accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format(
                  "DSEEK_HFREDUCE_RANKS_PER_NODE {}: must divide the {} ranks", N + 1, N)),
              std::string::npos)
        << e.what();
  }
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "two", 1);
  EXPECT_THROW(w.set_all_reduce_algorithm(dist::AllReduceAlgorithm::HfReduce), Error);
  ::unsetenv("DSEEK_HFREDUCE_RANKS_PER_NODE");
  EXPECT_EQ(w.all_reduce_algorithm(), dist::AllReduceAlgorithm::Mpi);
  w.barrier();
  dist::finalize_world();
}

}  // namespace

// HFReduce on real MPI ranks, 2 and 4 of them, as one node and as 2 emulated nodes: buffers of 1,
// 7 and 1000003 elements (chunks of 65536 and of 3 elements, so sizes divide by neither the ranks
// nor the chunk) equal the double-precision sum within 4 float epsilons of Σ|x|, and, inside one
// node or in deterministic mode, the fixed-order float sum exactly; every rank holds the same bits;
// deterministic repeats are identical; the reduce-scatter form delivers this rank's block (rank 0's
// empty) into a poisoned buffer; three operations in flight complete when waited for out of order;
// the world group's all-reduce and reduce-scatter run HFReduce once selected (nodes emulated
// through DSEEK_HFREDUCE_RANKS_PER_NODE), and a node size that does not divide the ranks, or one
// that is not a number, is an error.
TEST(DistRanks, HfReduceEqualsReferenceSum) {
  if (dist::launcher_world_size() > 1) {
    hfreduce_on_this_rank();
    return;
  }
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "x", 1);
  EXPECT_THROW(dist::hfreduce_ranks_per_node_from_env(), Error);
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "0", 1);
  EXPECT_THROW(dist::hfreduce_ranks_per_node_from_env(), Error);
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "2", 1);
  EXPECT_EQ(dist::hfreduce_ranks_per_node_from_env(), 2);
  ::unsetenv("DSEEK_HFREDUCE_RANKS_PER_NODE");
  EXPECT_EQ(dist::hfreduce_ranks_per_node_from_env(), 0);
  run_test_on_ranks("DistRanks.HfReduceEqualsReferenceSum", 2);
  run_test_on_ranks("DistRanks.HfReduceEqualsReferenceSum", 4);
}

// 4 data-parallel ranks as 2 emulated nodes of 2 with dist.all_reduce=hfreduce (the ZeRO-1
// gradient reduce-scatters run through HFReduce) train like one process; the banner names it.
TEST_F(DistTrain, HfReduceFourRanksTrainLikeOneProcess) {
  TempDir dir;
  const fs::path run_dir = dir.path / "hf4";
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "2", 1);
  const CliRun r = run(
      mpirun_, mpirun_args(4, train_args(run_dir, kSteps, {"--set", "dist.all_reduce=hfreduce"})));
  ::unsetenv("DSEEK_HFREDUCE_RANKS_PER_NODE");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("MPI-ordered reductions (HFReduce, 2 nodes of 2 ranks)"), std::string::npos)
      << r.err;
  expect_same_training(single_run(), run_dir);
}

// dist.all_reduce other than mpi / hfreduce, and emulated nodes that do not divide the ranks.
TEST_F(DistTrain, HfReduceSettingsAreClearErrors) {
  TempDir dir;
  const CliRun bad =
      run(DSEEK_BINARY, train_args(dir.path / "a", 2, {"--set", "dist.all_reduce=ring"}));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("dist.all_reduce: expected mpi or hfreduce, got 'ring'"),
            std::string::npos)
      << bad.err;
  ::setenv("DSEEK_HFREDUCE_RANKS_PER_NODE", "3", 1);
  const CliRun odd =
      run(mpirun_,
          mpirun_args(2, train_args(dir.path / "b", 2, {"--set", "dist.all_reduce=hfreduce"})));
  ::unsetenv("DSEEK_HFREDUCE_RANKS_PER_NODE");
  EXPECT_NE(odd.exit_code, 0);
  EXPECT_NE(odd.err.find("DSEEK_HFREDUCE_RANKS_PER_NODE 3: must divide the 2 ranks"),
            std::string::npos)
      << odd.err;
}
