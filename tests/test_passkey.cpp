// Passkey retrieval (data/passkey.h, `dseek data passkey`, `dseek eval passkey`): prompts are
// exactly the requested length with the needle at the requested depth and the question last; the
// answer extraction; the training documents (prompt + answer) within their length range; the
// evaluator's table and JSON agree with its own trials on a tiny random model; clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli_util.h"
#include "core/error.h"
#include "data/chat_rows.h"
#include "data/passkey.h"
#include "data/passkey_data.h"
#include "data/token_shards.h"
#include "ops/cross_entropy.h"
#include "test_generate_util.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const Tokenizer& coder() {
  static const Tokenizer t = Tokenizer::load(coder_tokenizer_path());
  return t;
}

std::vector<int32_t> document(const TokenDataset& ds, int64_t d) {
  int64_t n = 0;
  const uint32_t* t = ds.document(d, &n);
  return std::vector<int32_t>(t, t + n);
}

bool contains_at(const std::vector<int32_t>& ids, size_t pos, const std::vector<int32_t>& part) {
  return pos + part.size() <= ids.size() &&
         std::equal(part.begin(), part.end(), ids.begin() + long(pos));
}

}  // namespace

TEST(Passkey, PromptsHaveTheExactLengthTheNeedleAtItsDepthAndTheQuestionLast) {
  const PasskeyPieces pieces = PasskeyPieces::from_tokenizer(coder());
  const int64_t shortest = passkey_min_length(coder(), pieces);
  EXPECT_GT(shortest, 10);
  Rng rng(3);
  for (int64_t length : {shortest, shortest + 1, int64_t(100), int64_t(257), int64_t(1024)}) {
    for (double depth : {0.0, 0.25, 0.5, 0.9, 1.0}) {
      SCOPED_TRACE(std::to_string(length) + " @ " + std::to_string(depth));
      const PasskeySample s = make_passkey_sample(coder(), pieces, length, depth, rng);
      ASSERT_EQ(int64_t(s.prompt.size()), length);
      ASSERT_EQ(s.key.size(), 5u);
      EXPECT_NE(s.key[0], '0');
      const std::vector<int32_t> needle = pieces.needle(coder(), s.key);
      EXPECT_TRUE(contains_at(s.prompt, size_t(s.needle_position), needle));
      const int64_t filler = length - int64_t(needle.size() + pieces.question.size());
      EXPECT_EQ(s.needle_position, std::llround(depth * double(filler)));
      EXPECT_TRUE(contains_at(s.prompt, s.prompt.size() - pieces.question.size(), pieces.question));
      // The filler runs through its sentence in order, on both sides of the needle.
      for (int64_t i = 0; i < filler; ++i) {
        const size_t at = size_t(i < s.needle_position ? i : i + int64_t(needle.size()));
        ASSERT_EQ(s.prompt[at], pieces.filler[size_t(i) % pieces.filler.size()]) << i;
      }
      // The text reads as the task says.
      const std::string text = coder().decode(s.prompt);
      EXPECT_NE(text.find("The pass key is " + s.key + ". Remember it."), std::string::npos);
      EXPECT_EQ(text.substr(text.size() - 38), " What is the pass key? The pass key is");
      EXPECT_EQ(coder().decode(s.answer), " " + s.key + ".");
    }
  }
}

TEST(Passkey, AnswerIsTheLeadingDigitsOfTheContinuation) {
  EXPECT_EQ(passkey_answer(" 48213. Remember"), "48213");
  EXPECT_EQ(passkey_answer("48213"), "48213");
  EXPECT_EQ(passkey_answer("\n 4821"), "4821");
  EXPECT_EQ(passkey_answer(" the key"), "");
  EXPECT_EQ(passkey_answer(" x48213"), "");
  EXPECT_EQ(passkey_answer(""), "");
}

TEST(Passkey, ShortLengthsAndBadDepthsAreErrors) {
  const PasskeyPieces pieces = PasskeyPieces::from_tokenizer(coder());
  Rng rng(1);
  try {
    make_passkey_sample(coder(), pieces, 5, 0.5, rng);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[passkey] length 5 is too short"), std::string::npos);
  }
  EXPECT_THROW(make_passkey_sample(coder(), pieces, 100, 1.5, rng), Error);
}

TEST(PasskeyData, DocumentsArePromptPlusAnswerWithinTheLengthRangeMixedWithText) {
  const fs::path dir =
      fs::temp_directory_path() / ("dseek_passkey_data_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "text.txt") << "first text document\n%\nsecond one\n%\n";
  PasskeyDataOptions o;
  o.tokenizer = coder_tokenizer_path();
  o.out_dir = (dir / "data").string();
  o.length = 80;
  o.min_length = 40;
  o.count = 25;
  o.text_inputs = {(dir / "text.txt").string()};
  o.corpus.separator_line = "%";
  const PasskeyDataSummary s = write_passkey_data(o);
  EXPECT_EQ(s.passkey_documents, 25);
  EXPECT_EQ(s.text_documents, 2);
  const auto ds = TokenDataset::open(o.out_dir);
  ASSERT_EQ(ds->num_documents(), 27);
  const PasskeyPieces pieces = PasskeyPieces::from_tokenizer(coder());
  std::set<int64_t> lengths;
  for (int64_t d = 0; d < 25; ++d) {
    const std::vector<int32_t> doc = document(*ds, d);
    const std::string text = coder().decode(doc);
    const size_t q = text.rfind(" What is the pass key? The pass key is ");
    ASSERT_NE(q, std::string::npos) << text;
    const std::string key = passkey_answer(text.substr(q + 38));
    ASSERT_EQ(key.size(), 5u);
    EXPECT_NE(text.find("The pass key is " + key + ". Remember it."), std::string::npos);
    const int64_t prompt = int64_t(doc.size() - pieces.answer(coder(), key).size());
    EXPECT_GE(prompt, 40);
    EXPECT_LE(prompt, 80);
    lengths.insert(prompt);
  }
  EXPECT_GT(lengths.size(), 5u);  // lengths vary across the range
  EXPECT_EQ(coder().decode(document(*ds, 26)), "second one\n");
  o.out_dir = (dir / "bad").string();
  o.min_length = 90;
  EXPECT_THROW(write_passkey_data(o), Error);
  fs::remove_all(dir);
}

TEST(PasskeyData, RowsKeepEachDocumentInItsOwnSegmentAndAnswerOnlyTrainsTheKey) {
  const fs::path dir =
      fs::temp_directory_path() / ("dseek_passkey_rows_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "text.txt") << "first text document\n%\nsecond one\n%\n";
  PasskeyDataOptions o;
  o.tokenizer = coder_tokenizer_path();
  o.out_dir = (dir / "rows").string();
  o.length = 60;
  o.min_length = 40;
  o.count = 12;
  o.text_inputs = {(dir / "text.txt").string()};
  o.corpus.separator_line = "%";
  o.rows = 90;
  o.answer_only = true;
  const PasskeyDataSummary s = write_passkey_data(o);
  EXPECT_EQ(s.passkey_documents, 12);
  EXPECT_EQ(s.text_documents, 2);
  const auto rows = ChatRows::open(o.out_dir);
  EXPECT_EQ(rows->seq_len(), 90);
  EXPECT_EQ(rows->task(), "sft");
  int64_t passkey_segments = 0, text_segments = 0;
  for (int64_t r = 0; r < rows->rows(); ++r) {
    const ChatRow& row = rows->row(r);
    int64_t at = 0;
    for (size_t k = 0; k < row.lengths.size(); ++k) {
      const int64_t n = row.lengths[k];
      if (row.kinds[k] == SegmentKind::kSft) {
        // The segment's inputs are one document starting at BOS; its trained targets are the
        // answer " <key>." and EOS for a passkey document, every token for a text document.
        const std::vector<int32_t> in(row.inputs.begin() + at, row.inputs.begin() + at + n);
        EXPECT_EQ(in[0], coder().bos_id());
        const std::string text = coder().decode(std::vector<int32_t>(in.begin() + 1, in.end()));
        std::vector<int32_t> trained;
        for (int64_t i = at; i < at + n; ++i)
          if (row.targets[size_t(i)] != ops::kIgnoreIndex)
            trained.push_back(row.targets[size_t(i)]);
        const size_t q = text.rfind(" What is the pass key? The pass key is");
        if (q != std::string::npos) {
          ++passkey_segments;
          const std::string key = passkey_answer(text.substr(q + 38));
          ASSERT_EQ(key.size(), 5u) << text;
          std::vector<int32_t> want = PasskeyPieces::from_tokenizer(coder()).answer(coder(), key);
          want.push_back(coder().eos_id());
          EXPECT_EQ(trained, want) << text;
          int occurrences = 0;  // the needle and the question: one document per segment
          for (size_t at = text.find("The pass key is"); at != std::string::npos;
               at = text.find("The pass key is", at + 1))
            ++occurrences;
          EXPECT_EQ(occurrences, 2) << text;
        } else {
          ++text_segments;
          EXPECT_EQ(int64_t(trained.size()), n) << text;
        }
      }
      at += n;
    }
  }
  EXPECT_EQ(passkey_segments, 12);
  EXPECT_EQ(text_segments, 2);
  o.out_dir = (dir / "small").string();
  o.rows = 50;  // shorter than the longest document
  EXPECT_THROW(write_passkey_data(o), Error);
  o.rows = 0;  // --answer-only without --rows
  EXPECT_THROW(write_passkey_data(o), Error);
  fs::remove_all(dir);
}

TEST(CliEvalPasskey, TableAndJsonAgreeWithTheTrials) {
  const std::string model = tiny_coder_model_dir();
  const fs::path json_path =
      fs::temp_directory_path() / ("dseek_passkey_" + std::to_string(::getpid()) + ".json");
  const CliRun r =
      run_dseek_shell("eval passkey --model " + model +
                      " --lengths 40,72 --trials 3 --seed 5 --json " + json_path.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| length | accuracy | correct |"), std::string::npos) << r.out;
  const json report = json::parse(slurp(json_path));
  fs::remove(json_path);
  ASSERT_EQ(report["lengths"].size(), 2u);
  for (const json& row : report["lengths"]) {
    int64_t correct = 0;
    ASSERT_EQ(row["trials"].size(), 3u);
    for (const json& t : row["trials"]) {
      const bool ok =
          passkey_answer(t["continuation"].get<std::string>()) == t["key"].get<std::string>();
      EXPECT_EQ(t["correct"].get<bool>(), ok);
      correct += ok;
    }
    EXPECT_EQ(row["correct"].get<int64_t>(), correct);
    EXPECT_DOUBLE_EQ(row["accuracy"].get<double>(), double(correct) / 3.0);
    const std::string line = "| " + std::to_string(row["length"].get<int64_t>()) + " | ";
    EXPECT_NE(r.out.find(line), std::string::npos) << r.out;
  }
  // The same seed gives the same keys and depths.
  const CliRun again =
      run_dseek_shell("eval passkey --model " + model + " --lengths 40,72 --trials 3 --seed 5");
  EXPECT_EQ(again.out, r.out);
}

TEST(CliEvalPasskey, BadLengthsAreClearErrors) {
  const std::string model = tiny_coder_model_dir();
  const CliRun shortr =
      run_dseek_shell("eval passkey --model " + model + " --lengths 40,8 --trials 1");
  EXPECT_EQ(shortr.exit_code, 1);
  EXPECT_NE(shortr.err.find("dseek: [eval] --lengths: 8 is too short"), std::string::npos)
      << shortr.err;
  const CliRun bad =
      run_dseek_shell("eval passkey --model " + model + " --lengths 40,x --trials 1");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("[eval] --lengths: 'x' is not a positive token count"), std::string::npos)
      << bad.err;
}
