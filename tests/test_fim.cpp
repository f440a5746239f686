// Fill-in-the-middle: training documents (fim_encode) and inference prompts (fim_prompt, `dseek
// generate --fim-prefix/--fim-suffix`) with the real DeepSeek Coder tokenizer. Round trips: a
// document split at random character boundaries, encoded in PSM or SPM order, decodes between its
// sentinels back to exactly its prefix, suffix and middle (multi-byte UTF-8 included); the
// inference prompt is the training document minus its middle, equals DeepSeek-Coder's README
// string tokenized with BOS, and is what the CLI feeds the model; bad flags are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "cli_util.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/fim.h"
#include "test_generate_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

const Tokenizer& coder() {
  static const Tokenizer t = Tokenizer::load(coder_tokenizer_path());
  return t;
}

// Code with multi-byte characters (2-, 3- and 4-byte UTF-8) so cuts can fall next to them. (Not
// ü, ö and the other Latin-1 letters that DeepSeek Coder has as added tokens 32000-32012: they
// decode through the byte-level decoder to U+FFFD, in transformers too.)
const std::string kDocument =
    "def greet(name: str) -> str:\n"
    "    # Straße → 世界 🐍\n"
    "    if not name:\n"
    "        return \"héllo, wÉrld\"\n"
    "    return f\"hello, {name}!\"\n";

struct Pieces {
  std::string before_first, between, after_second, after_third;
};

// The text between the sentinels, in order of appearance: [first sentinel] A [second] B [end] C.
Pieces cut_at(const std::vector<int32_t>& ids, int32_t first, int32_t second, int32_t end) {
  auto find = [&](int32_t id) { return std::find(ids.begin(), ids.end(), id); };
  auto a = find(first), b = find(second), c = find(end);
  EXPECT_TRUE(a == ids.begin() && a < b && b < c && c != ids.end());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), first), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), second), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), end), 1);
  Pieces p;
  p.between = coder().decode(std::vector<int32_t>(a + 1, b));
  p.after_second = coder().decode(std::vector<int32_t>(b + 1, c));
  p.after_third = coder().decode(std::vector<int32_t>(c + 1, ids.end()));
  return p;
}

std::string last_line(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

TEST(FimRoundTrip, PsmAndSpmDecodeBackToTheirPiecesAtEveryCut) {
  const FimTokens t = FimTokens::from_tokenizer(coder());
  EXPECT_EQ(t.hole, 32015);
  EXPECT_EQ(t.begin, 32016);
  EXPECT_EQ(t.end, 32017);
  Rng rng(7);
  int multibyte_cuts = 0;
  for (int trial = 0; trial < 60; ++trial) {
    SCOPED_TRACE(trial);
    const FimSplit s = fim_split(kDocument, rng);
    ASSERT_EQ(s.prefix + s.middle + s.suffix, kDocument);
    for (const std::string* piece : {&s.prefix, &s.middle, &s.suffix})
      EXPECT_FALSE(utf8::first_invalid(*piece).has_value()) << *piece;
    // A cut right after a multi-byte character: the case that breaks byte-level splitting.
    const auto after_multibyte = [](const std::string& left) {
      return !left.empty() && (static_cast<unsigned char>(left.back()) & 0x80);
    };
    multibyte_cuts += after_multibyte(s.prefix) || after_multibyte(s.prefix + s.middle);

    const Pieces psm = cut_at(fim_encode(coder(), s, t, FimMode::PSM), t.begin, t.hole, t.end);
    EXPECT_EQ(psm.between, s.prefix);
    EXPECT_EQ(psm.after_second, s.suffix);
    EXPECT_EQ(psm.after_third, s.middle);
    const Pieces spm = cut_at(fim_encode(coder(), s, t, FimMode::SPM), t.hole, t.begin, t.end);
    EXPECT_EQ(spm.between, s.suffix);
    EXPECT_EQ(spm.after_second, s.prefix);
    EXPECT_EQ(spm.after_third, s.middle);
  }
  EXPECT_GT(multibyte_cuts, 0);
}

TEST(FimPrompt, IsTheTrainingDocumentWithoutItsMiddle) {
  const FimTokens t = FimTokens::from_tokenizer(coder());
  const FimSplit s{"def add(a, b):\n    ", "return a + b", "\n\nprint(add(2, 3))\n"};
  for (FimMode mode : {FimMode::PSM, FimMode::SPM}) {
    const std::vector<int32_t> doc = fim_encode(coder(), s, t, mode);
    const std::vector<int32_t> prompt = fim_prompt(coder(), s.prefix, s.suffix, t, mode);
    const std::vector<int32_t> middle = coder().encode(s.middle);
    ASSERT_EQ(prompt.size() + middle.size(), doc.size());
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), doc.begin()));
    EXPECT_EQ(prompt.back(), t.end);
  }
}

TEST(FimPrompt, PsmEqualsTheCoderReadmeStringTokenizedWithBos) {
  const FimTokens t = FimTokens::from_tokenizer(coder());
  const std::string prefix = "def quick_sort(arr):\n    if len(arr) <= 1:\n        return arr\n";
  const std::string suffix = "\n    return quick_sort(left) + [pivot] + quick_sort(right)";
  // DeepSeek-Coder's README: tokenizer("<｜fim▁begin｜>" + prefix + "<｜fim▁hole｜>" + suffix +
  // "<｜fim▁end｜>") with the BOS the tokenizer adds.
  const std::vector<int32_t> readme = coder().encode(
      "<｜fim▁begin｜>" + prefix + "<｜fim▁hole｜>" + suffix + "<｜fim▁end｜>", true);
  std::vector<int32_t> hand = {32013, 32016};
  for (int32_t id : coder().encode(prefix)) hand.push_back(id);
  hand.push_back(32015);
  for (int32_t id : coder().encode(suffix)) hand.push_back(id);
  hand.push_back(32017);
  EXPECT_EQ(readme, hand);
  EXPECT_EQ(fim_prompt(coder(), prefix, suffix, t, FimMode::PSM, /*add_bos=*/true), hand);
}

TEST(FimPrompt, ModesAndMissingSentinelsAreClearErrors) {
  EXPECT_EQ(parse_fim_mode("psm"), FimMode::PSM);
  EXPECT_EQ(parse_fim_mode("spm"), FimMode::SPM);
  try {
    parse_fim_mode("PSM ");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[fim] mode 'PSM ' is not psm or spm");
  }
  const Tokenizer llm = Tokenizer::load(std::string(DSEEK_SOURCE_DIR) +
                                        "/../shared/tokenizers/deepseek-llm.tokenizer.json");
  try {
    FimTokens::from_tokenizer(llm);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[fim] the tokenizer has no '<｜fim▁begin｜>' token"),
              std::string::npos)
        << e.what();
  }
}

TEST(CliFim, InfillPromptIsTheHandBuiltSequence) {
  const std::string model = tiny_coder_model_dir();
  const std::string prefix = "def fib(n):\n    ", suffix = "\n    return a\n";
  std::vector<int32_t> hand = {32013, 32016};
  for (int32_t id : coder().encode(prefix)) hand.push_back(id);
  hand.push_back(32015);
  for (int32_t id : coder().encode(suffix)) hand.push_back(id);
  hand.push_back(32017);
  const std::vector<std::string> common = {"generate", "--model",  model,        "-n",
                                           "6",        "--greedy", "--print-ids"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  const CliRun fim = run_dseek(with({"--fim-prefix", prefix, "--fim-suffix", suffix}));
  ASSERT_EQ(fim.exit_code, 0) << fim.err;
  EXPECT_NE(fim.err.find("[timing] prefill " + std::to_string(hand.size()) + " tok"),
            std::string::npos)
      << fim.err;
  const CliRun ids = run_dseek(with({"--ids", join_ids(hand)}));
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  EXPECT_EQ(last_line(fim.out), last_line(ids.out));
  // SPM: the same tokens in the other order.
  std::vector<int32_t> spm_hand = {32013, 32015};
  for (int32_t id : coder().encode(suffix)) spm_hand.push_back(id);
  spm_hand.push_back(32016);
  for (int32_t id : coder().encode(prefix)) spm_hand.push_back(id);
  spm_hand.push_back(32017);
  const CliRun spm =
      run_dseek(with({"--fim-prefix", prefix, "--fim-suffix", suffix, "--fim-mode", "spm"}));
  ASSERT_EQ(spm.exit_code, 0) << spm.err;
  const CliRun spm_ids = run_dseek(with({"--ids", join_ids(spm_hand)}));
  ASSERT_EQ(spm_ids.exit_code, 0) << spm_ids.err;
  EXPECT_EQ(last_line(spm.out), last_line(spm_ids.out));
}

TEST(CliFim, BadFlagsAreClearErrors) {
  const std::string model = tiny_coder_model_dir();
  const struct {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"--fim-prefix", "x = "}, "needs both --fim-prefix and --fim-suffix"},
      {{"--fim-prefix", "a", "--fim-suffix", "b", "--fim-mode", "mps"},
       "--fim-mode: 'mps' is not psm or spm"},
      {{"--fim-prefix", "a", "--fim-suffix", "b", "--prompt", "c"},
       "give exactly one of --prompt, --ids or --fim"},
      {{"--prompt", "a", "--fim-mode", "spm"}, "--fim-mode needs --fim-prefix and --fim-suffix"},
      {{"--fim-prefix", "a", "--fim-suffix", "b", "--chat"}, "--chat needs --prompt"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"generate", "--model", model, "-n", "2"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    SCOPED_TRACE(c.message);
    const CliRun r = run_dseek(args);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("dseek: [generate] "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}
