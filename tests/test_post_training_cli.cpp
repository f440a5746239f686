// End-to-end post-training through the built binary (DSEEK_BINARY): `dseek data sft` on a small
// multi-turn chat set made here, SFT of a tiny model from scratch (the loss on assistant tokens
// falls), `dseek data dpo` and DPO from the SFT run (model.init_from): the first step's loss is
// log 2 (policy = reference), reward margins and accuracy rise on the training pairs; an
// interrupted and resumed DPO run logs exactly what an uninterrupted one does (the cached
// reference log-probs are reused).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "cli_util.h"

using nlohmann::json;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

// A scratch directory for one test's files, and dseek runs whose stderr stays readable.
struct Env {
  TempDir dir{"posttrain"};
  CliRun last;
  // Runs dseek with `args` (a shell command line); returns its exit code, its stderr kept for
  // err().
  int run(const std::string& args) {
    last = run_dseek_shell(args);
    return last.exit_code;
  }
  std::string err() const { return last.err; }
  std::string p(const std::string& name) const { return (dir.path / name).string(); }
};

std::vector<json> metrics(const fs::path& run) {
  std::vector<json> out;
  std::istringstream in(slurp(run / "metrics.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

const char* kColors[] = {"red", "blue", "green", "gold", "black", "white"};

}  // namespace

TEST(PostTrainingCli, SftThenDpo) {
  Env env;
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> digit(1, 9), color(0, 5);
  {
    std::ofstream chats(env.p("chats.jsonl")), pairs(env.p("pairs.jsonl")), text(env.p("text.txt"));
    for (int i = 0; i < 40; ++i) {
      const int a = digit(rng), b = digit(rng);
      const std::string c = kColors[color(rng)];
      const json m = {{"messages",
                       {{{"role", "user"},
                         {"content", "add " + std::to_string(a) + " and " + std::to_string(b)}},
                        {{"role", "assistant"}, {"content", std::to_string(a + b) + "."}},
                        {{"role", "user"}, {"content", "say " + c}},
                        {{"role", "assistant"}, {"content", c + " it is."}}}}};
      chats << m.dump() << "\n";
      text << "User: add " << a << " and " << b << "\n\nAssistant: " << a + b << ".\nsay " << c
           << " it is.\n%\n";
    }
    for (int i = 0; i < 16; ++i) {
      const int a = digit(rng), b = digit(rng);
      pairs << json({{"prompt", "add " + std::to_string(a) + " and " + std::to_string(b)},
                     {"chosen", std::to_string(a + b) + "."},
                     {"rejected", "no idea, sorry."}})
                   .dump()
            << "\n";
    }
  }
  ASSERT_EQ(env.run("tokenizer train --input " + env.p("text.txt") +
                    " --separator % --vocab-size 320 --out " + env.p("tok")),
            0)
      << env.err();
  ASSERT_EQ(
      env.run("data sft --tokenizer " + env.p("tok") + " --chat-format deepseek_llm --input " +
              env.p("chats.jsonl") + " --max-len 64 --out " + env.p("sft")),
      0)
      << env.err();
  ASSERT_EQ(
      env.run("data dpo --tokenizer " + env.p("tok") + " --chat-format deepseek_llm --input " +
              env.p("pairs.jsonl") + " --max-len 64 --out " + env.p("dpo")),
      0)
      << env.err();

  const std::string common =
      " --tokenizer " + env.p("tok") +
      " --set train.batch_size=4 --set optim.warmup_steps=2 --set run.threads=2";
  ASSERT_EQ(
      env.run("train --preset tiny-dense --data " + env.p("sft") + " --out " + env.p("run_sft") +
              common + " --set train.task=sft --set train.steps=14 --set optim.lr=3e-3"),
      0)
      << env.err();
  const std::vector<json> sft = metrics(env.p("run_sft"));
  ASSERT_EQ(sft.size(), 14u);
  EXPECT_LT(sft.back()["loss"].get<double>(), 0.6 * sft.front()["loss"].get<double>());
  EXPECT_EQ(json::parse(slurp(env.p("run_sft") + "/run.json"))["task"], "sft");

  const std::string dpo_args =
      "train --data " + env.p("dpo") + common +
      " --set train.task=dpo --set dpo.beta=0.2 --set optim.lr=1e-3 --set optim.schedule=constant "
      "--set checkpoint.interval=4 --set model.init_from=" +
      env.p("run_sft");
  ASSERT_EQ(env.run(dpo_args + " --set train.steps=10 --out " + env.p("run_dpo")), 0) << env.err();
  const std::vector<json> dpo = metrics(env.p("run_dpo"));
  ASSERT_EQ(dpo.size(), 10u);
  EXPECT_NEAR(dpo[0]["loss"].get<double>(), std::log(2.0), 1e-4);  // policy = reference
  EXPECT_NEAR(dpo[0]["rewards/margins"].get<double>(), 0.0, 1e-4);
  double margin = 0, accuracy = 0;
  for (size_t s = 7; s < 10; ++s) {
    margin += dpo[s]["rewards/margins"].get<double>() / 3;
    accuracy += dpo[s]["rewards/accuracies"].get<double>() / 3;
    EXPECT_LT(dpo[s]["loss"].get<double>(), std::log(2.0));
  }
  EXPECT_GT(margin, 0.05);
  EXPECT_GT(accuracy, 0.7);
  EXPECT_TRUE(fs::exists(env.p("run_dpo") + "/reference_logps.json"));

  // Interrupted at step 6 (after the checkpoint at 4 and one at 6) and resumed to 10: the same log.
  ASSERT_EQ(env.run(dpo_args + " --set train.steps=6 --out " + env.p("run_dpo2")), 0) << env.err();
  ASSERT_EQ(env.run(dpo_args + " --set train.steps=10 --resume --out " + env.p("run_dpo2")), 0)
      << env.err();
  const std::vector<json> resumed = metrics(env.p("run_dpo2"));
  ASSERT_EQ(resumed.size(), dpo.size());
  for (size_t s = 0; s < dpo.size(); ++s)
    for (const char* key : {"loss", "rewards/margins", "rewards/accuracies", "grad_norm"})
      EXPECT_NEAR(resumed[s][key].get<double>(), dpo[s][key].get<double>(), 1e-9)
          << "step " << s + 1 << " " << key;

  // A data set of the other kind is a clear error.
  EXPECT_NE(env.run("train --data " + env.p("sft") + " --out " + env.p("bad") +
                    " --set train.task=dpo --set train.steps=1"),
            0);
  EXPECT_NE(env.err().find("made by `dseek data sft`"), std::string::npos) << env.err();
}
