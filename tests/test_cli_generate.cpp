// End-to-end tests of `dseek generate`, `dseek chat` and `dseek init` through the built binary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_util.h"
#include "infer/generator.h"
#include "model/model.h"
#include "test_generate_util.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST(CliGenerate, IdsWithPrintIdsMatchesTheLibrary) {
  const std::string model = tiny_coder_model_dir();
  const CliRun run = run_dseek_shell("generate --model " + model +
                                     " --ids 32013,1558,16600 -n 7 --greedy --print-ids");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::unique_ptr<Model> m = Model::load(model);
  GenerationOptions options;
  options.max_new_tokens = 7;
  options.sampling.temperature = 0.0f;
  options.ignore_eos = false;
  const GenerationResult expected = generate(*m, {32013, 1558, 16600}, options);
  std::string ids;
  for (int32_t id : expected.ids) ids += (ids.empty() ? "" : " ") + std::to_string(id);
  const std::vector<std::string> lines = lines_of(run.out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back(), ids);
  EXPECT_NE(run.err.find("[timing] prefill 3 tok"), std::string::npos) << run.err;
}

TEST(CliGenerate, PromptStreamsTextAndStopsAtStopString) {
  const std::string model = tiny_coder_model_dir();
  const CliRun full =
      run_dseek_shell("generate --model " + model + " --prompt 'def fib(n):' -n 12 --greedy");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  ASSERT_GT(full.out.size(), 4u);
  // Stop at the 3rd..4th bytes of the output: the text before it is printed, nothing after.
  const std::string stop = full.out.substr(2, 2);
  ASSERT_EQ(stop.find('\''), std::string::npos);
  const CliRun cut = run_dseek_shell(
      "generate --model " + model + " --prompt 'def fib(n):' -n 12 --greedy --stop '" + stop + "'");
  ASSERT_EQ(cut.exit_code, 0) << cut.err;
  EXPECT_EQ(cut.out, full.out.substr(0, full.out.find(stop)) + "\n");
  EXPECT_NE(cut.err.find("finish: stop"), std::string::npos) << cut.err;
}

TEST(CliChat, PipedTurnsResetAndExit) {
  const std::string model = tiny_coder_model_dir();
  const CliRun run = run_dseek_shell(
      "chat --model " + model + " --chat-format deepseek_coder -n 4 --greedy --timing",
      "hello\n/reset\nwrite fib\n/exit\nnever read\n");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.err.find("(history cleared)"), std::string::npos) << run.err;
  // Two replies, each timed.
  size_t timings = 0;
  for (size_t pos = run.err.find("[timing]"); pos != std::string::npos;
       pos = run.err.find("[timing]", pos + 1)) {
    ++timings;
  }
  EXPECT_EQ(timings, 2u) << run.err;
  // Without a template or --chat-format, chat explains what is missing.
  const CliRun none = run_dseek_shell("chat --model " + model, "hi\n");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.err.find("--chat-format"), std::string::npos) << none.err;
}

TEST(CliGenerate, BadFlagsFailWithAClearMessage) {
  const std::string model = tiny_coder_model_dir();
  CliRun r = run_dseek_shell("generate --model " + model + " --ids 1,2 --top-p 1.5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("[sampler] top_p"), std::string::npos) << r.err;
  r = run_dseek_shell("generate --model " + model + " --ids 1,x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("[generate] --ids: 'x'"), std::string::npos) << r.err;
  r = run_dseek_shell("generate --model " + model + " --ids 1 --prompt hi");
  EXPECT_NE(r.exit_code, 0);
  r = run_dseek_shell("generate --model " + model + " --greedy --temperature 0.5 --ids 1");
  EXPECT_NE(r.exit_code, 0);
  r = run_dseek_shell("generate --ids 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  r = run_dseek_shell("generate --model /nonexistent/dir --ids 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent/dir"), std::string::npos) << r.err;
  // Number checks say what they want (cli/validators.h), not CLI11's range up to DBL_MAX.
  r = run_dseek_shell("generate --model " + model + " --ids 1 -n -3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--max-new-tokens: must be at least 0, got -3"), std::string::npos) << r.err;
  r = run_dseek_shell("serve --model " + model + " --max-queue 0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--max-queue: must be above 0, got 0"), std::string::npos) << r.err;
  r = run_dseek_shell("serve --model " + model + " --request-timeout soon");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--request-timeout: 'soon' is not a number"), std::string::npos) << r.err;
}

TEST(CliInit, WritesALoadableCheckpoint) {
  const fs::path dir = fs::temp_directory_path() / ("dseek_cli_init_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 16,
    "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "max_position_embeddings": 32})";
  const CliRun run = run_dseek_shell("init --config " + (dir / "config.json").string() + " --out " +
                                     (dir / "ckpt").string() + " --dtype f32 --seed 4");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::unique_ptr<Model> m = Model::load((dir / "ckpt").string());
  EXPECT_EQ(m->config().num_key_value_heads, 1);
  const Tensor logits = m->forward({1, 2, 3});
  EXPECT_EQ(logits.shape(), (Shape{3, 64}));
  const CliRun bad = run_dseek_shell("init --config " + (dir / "missing.json").string() +
                                     " --out " + (dir / "x").string());
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("missing.json"), std::string::npos) << bad.err;
  fs::remove_all(dir);
}
