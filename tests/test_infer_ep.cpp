// Expert-parallel inference (docs/DISTRIBUTED.md, model/placement.h ExpertShard): in process, a
// rank's MoE layers hold only its block of routed experts — a checkpoint stripped of the other
// ranks' experts loads, and the ranks' partial routed sums add up to the whole layer's; through
// real `mpirun` ranks of the built binary, `dseek logits --expert-parallel` on 2 and 4 ranks
// equals one process (and the fixture's transformers logits), greedy `dseek generate
// --expert-parallel` prints what one process prints, and the mistakes (a rank count that does
// not divide the experts, no MPI job, a dense model) are clear errors. `dseek serve
// --expert-parallel` on 2 ranks answers concurrent HTTP requests (batched together) as one
// process's server does, and every rank stops cleanly on SIGTERM.
//
// The mpirun tests skip when this dseek was built without MPI or mpirun is missing; as root (CI)
// mpirun needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), set here.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model_fixtures.h"
#include "mpi_run.h"
#include "test_ops_util.h"

extern char** environ;

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;
using Args = std::vector<std::string>;

namespace {

// A process group that only claims to be rank `r` of `n` (deterministic): loading a shard needs
// one, and these tests never sum through it (a collective would be a test bug, so it throws).
class ClaimedGroup final : public dist::ProcessGroup {
 public:
  ClaimedGroup(int r, int n) : r_(r), n_(n) { set_deterministic(true); }
  int rank() const override { return r_; }
  int size() const override { return n_; }
  std::string backend() const override { return "claimed"; }
  std::unique_ptr<dist::Work> all_reduce_async(std::span<float>) override { return none(); }
  std::unique_ptr<dist::Work> reduce_scatter_async(std::span<const float>, std::span<float>,
                                                   const std::vector<int64_t>&) override {
    return none();
  }
  std::unique_ptr<dist::Work> all_gather_async(std::span<const float>, std::span<float>,
                                               const std::vector<int64_t>&) override {
    return none();
  }
  std::unique_ptr<dist::Work> broadcast_async(std::span<float>, int) override { return none(); }
  void broadcast_bytes(std::span<std::byte>, int) override { none(); }
  std::unique_ptr<dist::ProcessGroup> split(int) override { return none_group(); }
  void all_reduce(std::span<double>) override { none(); }
  void gather(std::span<const float>, std::span<float>, const std::vector<int64_t>&, int) override {
    none();
  }
  void barrier() override { none(); }
  void all_to_all_v(std::span<const float>, const std::vector<int64_t>&, std::span<float>,
                    const std::vector<int64_t>&) override {
    none();
  }
  void all_to_all_v_bytes(const std::byte*, const std::vector<int64_t>&, std::byte*,
                          const std::vector<int64_t>&) override {
    none();
  }
  void all_to_all(std::span<const int64_t>, std::span<int64_t>) override { none(); }
  std::unique_ptr<dist::Work> send_async(std::span<const float>, int, int) override {
    return none();
  }
  std::unique_ptr<dist::Work> recv_async(std::span<float>, int, int) override { return none(); }

 private:
  static std::unique_ptr<dist::Work> none() { fail("[test] ClaimedGroup has no collectives"); }
  static std::unique_ptr<dist::ProcessGroup> none_group() {
    fail("[test] ClaimedGroup has no collectives");
  }
  int r_, n_;
};

Placement shard_placement(dist::ProcessGroup& group) {
  Placement p;
  p.experts = expert_shard(group);
  return p;
}

std::unique_ptr<Transformer> load_transformer(const fs::path& dir, const Placement& placement) {
  const ModelConfig config = load_model_config(dir.string());
  WeightStore store = WeightStore::open(dir.string());
  return std::make_unique<Transformer>(config, store, placement);
}

// "model.layers.1.mlp.experts.5.up_proj.weight" -> 5; -1 for a tensor of no routed expert.
int expert_of(const std::string& name) {
  const std::string key = ".mlp.experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos) return -1;
  return std::stoi(name.substr(at + key.size()));
}

TEST(ExpertShardLoad, RankLoadsOnlyItsExperts) {
  // v3_bf16 with routed experts 0..3 of every layer removed: rank 1 of 2 (experts 4..7) loads it,
  // one process cannot (so the loading really needs only rank 1's tensors).
  const fs::path src = fixtures_root() / "v3_bf16";
  TempDir tmp("ep-strip");
  const WeightStore store = WeightStore::open(src.string());
  std::vector<std::pair<std::string, Tensor>> kept;
  int64_t removed = 0;
  for (const std::string& name : store.names()) {
    const int e = expert_of(name);
    if (e >= 0 && e < 4) {
      ++removed;
      continue;
    }
    kept.emplace_back(name, store.get(name));
  }
  ASSERT_GT(removed, 0);
  save_safetensors((tmp.path / "model.safetensors").string(), kept);
  fs::copy_file(src / "config.json", tmp.path / "config.json");

  ClaimedGroup rank1(1, 2);
  std::unique_ptr<Transformer> sharded;
  ASSERT_NO_THROW(sharded = load_transformer(tmp.path, shard_placement(rank1)));
  const std::unique_ptr<Transformer> full = load_transformer(src, Placement());
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < full->config().num_hidden_layers; ++l) {
    const MoE* moe = sharded->block(l).moe();
    if (!moe) continue;
    ++moe_layers;
    EXPECT_EQ(moe->expert_first(), 4);
    ASSERT_EQ(moe->experts().size(), 4u);
    // The held expert is the checkpoint's expert 4 (its bytes), not a renumbered one.
    const Tensor held = moe->experts()[0].up_proj();
    const Tensor want = full->block(l).moe()->experts()[4].up_proj();
    ASSERT_EQ(held.nbytes(), want.nbytes());
    EXPECT_EQ(std::memcmp(held.raw(), want.raw(), size_t(held.nbytes())), 0);
  }
  EXPECT_GT(moe_layers, 0);
  EXPECT_GT(full->routed_expert_bytes(), 0);
  EXPECT_EQ(2 * sharded->routed_expert_bytes(), full->routed_expert_bytes());

  try {
    load_transformer(tmp.path, Placement());
    ADD_FAILURE() << "one process loaded a checkpoint without experts 0..3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("experts.0."), std::string::npos) << e.what();
  }
}

TEST(ExpertShardLoad, PartialRoutedSumsAddUpToTheLayer) {
  // For each MoE layer of two fixtures (sigmoid noaux_tc and softmax greedy routing): the
  // routed outputs of 2 (and 4) shards, each over its own experts only, sum to one process's.
  for (const char* name : {"v3_bf16", "v2_lite"}) {
    const fs::path dir = fixtures_root() / name;
    const std::unique_ptr<Transformer> full = load_transformer(dir, Placement());
    const int64_t D = full->config().hidden_size, T = 9;
    for (int ranks : {2, 4}) {
      std::vector<std::unique_ptr<ClaimedGroup>> groups;
      std::vector<std::unique_ptr<Transformer>> shards;
      for (int r = 0; r < ranks; ++r) {
        groups.push_back(std::make_unique<ClaimedGroup>(r, ranks));
        shards.push_back(load_transformer(dir, shard_placement(*groups.back())));
      }
      std::mt19937 rng(11 + unsigned(ranks));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (int64_t l = 0; l < full->config().num_hidden_layers; ++l) {
        const MoE* moe = full->block(l).moe();
        if (!moe) continue;
        Tensor x = Tensor::empty({T, D});
        for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = normal(rng);
        const Routing routing = moe->gate().route(x);
        const Tensor want = moe->forward_experts(x, routing);
        std::vector<float> sum(size_t(T * D), 0.0f);
        int contributing = 0;
        for (int r = 0; r < ranks; ++r) {
          const MoE* part = shards[size_t(r)]->block(l).moe();
          ASSERT_EQ(int64_t(part->experts().size()), full->config().n_routed_experts / ranks);
          EXPECT_EQ(part->expert_first(), r * int64_t(part->experts().size()));
          const Tensor y = part->forward_experts(x, routing);
          double norm = 0;
          for (int64_t i = 0; i < T * D; ++i) {
            ASSERT_TRUE(std::isfinite(y.data<float>()[i])) << name << " rank " << r;
            sum[size_t(i)] += y.data<float>()[i];
            norm += std::fabs(y.data<float>()[i]);
          }
          contributing += norm > 0;
        }
        // More than one shard did real work (9 tokens × top-k spread over the experts).
        EXPECT_GE(contributing, 2) << name << " layer " << l << " ranks " << ranks;
        double worst = 0;
        for (int64_t i = 0; i < T * D; ++i) {
          const double w = want.data<float>()[i];
          worst = std::max(worst, std::fabs(double(sum[size_t(i)]) - w) / (std::fabs(w) + 1e-3));
        }
        EXPECT_LE(worst, 1e-5) << name << " layer " << l << " over " << ranks << " ranks";
      }
    }
  }
}

TEST(ExpertShardLoad, ClearErrors) {
  const fs::path v3 = fixtures_root() / "v3_bf16";
  ClaimedGroup three(1, 3);
  try {
    load_transformer(v3, shard_placement(three));
    ADD_FAILURE() << "8 experts loaded over 3 ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8 routed experts do not split evenly over 3 ranks"),
              std::string::npos)
        << e.what();
  }
  ClaimedGroup two(0, 2);
  try {
    load_transformer(fixtures_root() / "llama_gqa", shard_placement(two));
    ADD_FAILURE() << "a dense model loaded with an expert shard";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no routed experts"), std::string::npos) << e.what();
  }
  two.set_deterministic(false);
  try {
    load_transformer(v3, shard_placement(two));
    ADD_FAILURE() << "an expert shard over a nondeterministic group";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deterministic"), std::string::npos) << e.what();
  }
  Placement wrong;
  wrong.experts = ExpertShard{1, 2, nullptr};
  try {
    load_transformer(v3, wrong);
    ADD_FAILURE() << "an expert shard without a group";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs a process group"), std::string::npos) << e.what();
  }
}

// ---- real ranks --------------------------------------------------------------------------------

// The ranks run through tests/mpi_run.h.
CliRun run(const std::string& program, const Args& args) {
  return mpi_run(program, args);
}

class ExpertParallelInference : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
    mpirun_ = find_mpirun();
    if (mpirun_.empty()) GTEST_SKIP() << "mpirun not found (scripts/setup.sh installs OpenMPI)";
  }

  // `mpirun -np N dseek args...` (not bound to cores; oversubscription allowed for small boxes).
  CliRun mpirun(int n, const Args& dseek_args) const {
    Args a = {"-np", std::to_string(n), "--bind-to", "none", "--oversubscribe", DSEEK_BINARY};
    a.insert(a.end(), dseek_args.begin(), dseek_args.end());
    return run(mpirun_, a);
  }

  // `dseek logits` of the fixture's input ids into a file pre-filled with NaN (a run that writes
  // nothing cannot pass); on `ranks` > 1 expert-parallel ranks under mpirun, else one process.
  std::vector<float> logits(const ModelFixture& f, int ranks, std::string* err = nullptr) const {
    TempDir tmp("ep-logits");
    const fs::path out = tmp.path / "logits.bin";
    {
      std::vector<float> nan(size_t(f.rows * f.vocab), std::numeric_limits<float>::quiet_NaN());
      std::ofstream(out, std::ios::binary)
          .write(reinterpret_cast<const char*>(nan.data()), std::streamsize(nan.size() * 4));
    }
    const Args args = {"logits", "--model",   f.dir.string(), "--ids", join_ids(f.input_ids),
                       "--out",  out.string()};
    Args ep = args;
    ep.push_back("--expert-parallel");
    const CliRun r = ranks > 1 ? mpirun(ranks, ep) : run(DSEEK_BINARY, args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (err) *err = r.err;
    if (ranks > 1) {
      // Rank 0 alone prints its line.
      EXPECT_EQ(r.out, "logits [" + std::to_string(f.rows) + ", " + std::to_string(f.vocab) +
                           "] -> " + out.string() + "\n");
    }
    return read_f32(out);
  }

  std::string mpirun_;
};

TEST_F(ExpertParallelInference, LogitsEqualOneProcess) {
  // (fixture, ranks): sigmoid noaux_tc routing on 2 and 4 ranks (2 experts each), softmax greedy
  // (V2-Lite) and DeepSeekMoE (multi-head attention, 2 shared experts) on 2.
  const std::vector<std::pair<std::string, int>> cases = {
      {"v3_bf16", 2}, {"v3_bf16", 4}, {"v2_lite", 2}, {"deepseekmoe", 2}};
  std::string last_fixture;
  std::vector<float> single;
  for (const auto& [name, ranks] : cases) {
    const ModelFixture f = load_model_fixture(name);
    if (name != last_fixture) single = logits(f, 1);
    last_fixture = name;
    std::string err;
    const std::vector<float> ep = logits(f, ranks, &err);
    ASSERT_EQ(ep.size(), size_t(f.rows * f.vocab)) << name;
    // Relative to the logits' scale: the sums differ only in where one addition per rank
    // boundary rounds.
    const double rel =
        max_abs_diff(ep, single) / max_abs_diff(single, std::vector<float>(single.size()));
    std::printf(
        "  %-12s %d ranks: max |diff| / max |logit| vs one process %.3g, max abs diff vs "
        "transformers %.3g\n",
        name.c_str(), ranks, rel, max_abs_diff(ep, f.logits));
    EXPECT_LE(rel, 1e-5) << name << " on " << ranks << " ranks";
    EXPECT_LE(max_abs_diff(ep, f.logits), f.tolerance) << name << " on " << ranks << " ranks";
    const std::string line = "expert parallel inference: 8 routed experts over " +
                             std::to_string(ranks) + " ranks (" + std::to_string(8 / ranks) +
                             " each; expert weights per rank: ";
    EXPECT_NE(err.find(line), std::string::npos) << err;
  }
}

TEST_F(ExpertParallelInference, GreedyGenerateMatchesOneProcess) {
  // Token ids (no tokenizer): 2 ranks continue the fixture's greedy prompt as transformers does.
  const ModelFixture f = load_model_fixture("v3_bf16");
  const Args ids = {"generate",
                    "--model",
                    f.dir.string(),
                    "--ids",
                    join_ids(f.greedy_prompt),
                    "--greedy",
                    "-n",
                    std::to_string(f.greedy_continuation.size()),
                    "--print-ids"};
  Args ep = ids;
  ep.push_back("--expert-parallel");
  const CliRun one = run(DSEEK_BINARY, ids), two = mpirun(2, ep);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(one.out, join_ids(f.greedy_continuation, " ") + "\n");
  EXPECT_EQ(two.out, one.out);  // rank 1 printed nothing

  // Text through the tokenizer of the exported V3 fixture, on 4 ranks.
  const fs::path v3 = fixtures_root() / "export_v3";
  const Args text = {"generate", "--model", v3.string(), "--prompt",   "The cat",
                     "--greedy", "-n",      "12",        "--print-ids"};
  Args ep_text = text;
  ep_text.push_back("--expert-parallel");
  const CliRun one_text = run(DSEEK_BINARY, text), four_text = mpirun(4, ep_text);
  ASSERT_EQ(one_text.exit_code, 0) << one_text.err;
  ASSERT_EQ(four_text.exit_code, 0) << four_text.err;
  EXPECT_FALSE(one_text.out.empty());
  EXPECT_EQ(four_text.out, one_text.out);
  EXPECT_NE(four_text.err.find("expert parallel inference: 8 routed experts over 4 ranks (2 each"),
            std::string::npos)
      << four_text.err;
}

TEST_F(ExpertParallelInference, ClearErrors) {
  const ModelFixture f = load_model_fixture("v3_bf16");
  TempDir tmp("ep-errors");
  const Args args = {"logits",
                     "--model",
                     f.dir.string(),
                     "--ids",
                     "1,2,3",
                     "--out",
                     (tmp.path / "l.bin").string(),
                     "--expert-parallel"};
  const CliRun three = mpirun(3, args);
  EXPECT_NE(three.exit_code, 0);
  EXPECT_NE(three.err.find("8 routed experts do not split evenly over 3 ranks"), std::string::npos)
      << three.err;
  const CliRun alone = run(DSEEK_BINARY, args);
  EXPECT_EQ(alone.exit_code, 1);
  EXPECT_NE(alone.err.find("--expert-parallel splits the routed experts over the ranks of an MPI "
                           "job, but this process runs alone"),
            std::string::npos)
      << alone.err;
  Args dense = {"generate",
                "--model",
                (fixtures_root() / "llama_gqa").string(),
                "--ids",
                "1,2",
                "-n",
                "2",
                "--expert-parallel"};
  const CliRun llama = mpirun(2, dense);
  EXPECT_NE(llama.exit_code, 0);
  EXPECT_NE(llama.err.find("has no routed experts to split over 2 ranks"), std::string::npos)
      << llama.err;
}

// A `dseek serve --port 0` process (under mpirun when `ranks` > 1): started, its port read from
// the "listening on" line; stopped with SIGTERM (to mpirun, which passes it on) by stop().
struct ServeProcess {
  TempDir io{"ep-serve"};
  pid_t pid = -1;
  int port = 0;

  ServeProcess(const std::string& mpirun, int ranks, const Args& serve_args) {
    Args args = {"serve"};
    args.insert(args.end(), serve_args.begin(), serve_args.end());
    if (ranks > 1) {
      Args a = {"-np", std::to_string(ranks), "--bind-to", "none", "--oversubscribe", DSEEK_BINARY};
      a.insert(a.end(), args.begin(), args.end());
      a.push_back("--expert-parallel");
      pid = mpi_spawn(mpirun, a, io.path / "out", io.path / "err");
    } else {
      pid = mpi_spawn(DSEEK_BINARY, args, io.path / "out", io.path / "err");
    }
    const std::string key = "listening on http://127.0.0.1:";
    for (int i = 0; i < 1200 && pid > 0 && port == 0; ++i) {  // up to 60 s (a loaded CI box)
      const std::string out = slurp(io.path / "out");
      const size_t at = out.find(key);
      if (at != std::string::npos) {
        port = std::atoi(out.c_str() + at + key.size());
      } else {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
          pid = -1;  // exited before listening
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }
  // SIGTERM, then the exit code (the shell's convention for signals).
  int stop() {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
    return exit_code_of(status);
  }
  ~ServeProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  std::string err() const { return slurp(io.path / "err"); }
};

// The completion texts of `prompts` sent at once (so the engine batches them), greedy.
std::vector<std::string> complete_all(int port, const std::vector<std::string>& prompts) {
  std::vector<std::string> texts(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(60, 0);
      const nlohmann::json body = {{"model", "export_v3"},
                                   {"prompt", prompts[i]},
                                   {"max_tokens", 10 + 3 * int(i)},
                                   {"temperature", 0}};
      const httplib::Result res = c.Post("/v1/completions", body.dump(), "application/json");
      if (!res) {
        texts[i] = "<no response>";
      } else if (res->status != 200) {
        texts[i] = "<" + std::to_string(res->status) + "> " + res->body;
      } else {
        texts[i] = nlohmann::json::parse(res->body)["choices"][0]["text"].get<std::string>();
      }
    });
  }
  for (std::thread& t : clients) t.join();
  return texts;
}

TEST_F(ExpertParallelInference, ServeAnswersAsOneProcess) {
  const Args args = {
      "--model", (fixtures_root() / "export_v3").string(), "--port", "0", "--cache-tokens", "1024"};
  const std::vector<std::string> prompts = {"The cat", "Once upon a time", "def f(x):"};
  std::vector<std::string> want;
  {
    ServeProcess one(mpirun_, 1, args);
    ASSERT_GT(one.port, 0) << one.err();
    want = complete_all(one.port, prompts);
    EXPECT_EQ(one.stop(), 0) << one.err();
  }
  ServeProcess two(mpirun_, 2, args);
  ASSERT_GT(two.port, 0) << two.err();
  const std::vector<std::string> got = complete_all(two.port, prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_FALSE(want[i].empty() || want[i][0] == '<') << want[i];
    EXPECT_EQ(got[i], want[i]) << prompts[i];
  }
  // OpenMPI's mpirun exits 1 after passing a SIGTERM on, however its ranks end; theirs is in
  // their lines: rank 0 drained and stopped, then told rank 1 to return.
  const int code = two.stop();
  const std::string err = two.err();
  EXPECT_EQ(code, 1) << err;
  EXPECT_NE(err.find("dseek serve: rank 1 stopped with rank 0"), std::string::npos) << err;
  EXPECT_EQ(err.find("dseek: "), std::string::npos) << err;  // no error on any rank
  EXPECT_NE(err.find("expert parallel inference: 8 routed experts over 2 ranks (4 each"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("dseek serve: stopped"), std::string::npos) << err;
}

}  // namespace
