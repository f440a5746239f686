// Post-training data (data/chat_example.h, data/chat_rows.h): loss masks of multi-turn chats
// rendered with real DeepSeek chat templates (tokenizer_config.json's, recorded in
// tests/fixtures/tokenizer/chat_templates.json) and the real DeepSeek LLM tokenizer; packing into
// rows with segments; the on-disk round trip; JSONL errors that name file:line and the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "data/chat_rows.h"
#include "data/token_shards.h"
#include "test_util.h"
#include "train/train_batches.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string llm_tokenizer_json() {
  return slurp(std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/deepseek-llm.tokenizer.json");
}

json fixture_templates() {
  return json::parse(slurp(std::string(DSEEK_SOURCE_DIR) +
                           "/tests/fixtures/tokenizer/chat_templates.json"))["templates"];
}

// The DeepSeek LLM tokenizer with the tokenizer_config.json of a chat model using `format`.
json chat_config(const std::string& format) {
  return {{"bos_token", "<｜begin▁of▁sentence｜>"},
          {"eos_token", "<｜end▁of▁sentence｜>"},
          {"chat_template", fixture_templates()[format]}};
}

Tokenizer llm_tokenizer(const std::string& format) {
  return Tokenizer::from_json_text(llm_tokenizer_json(), chat_config(format).dump(), "llm");
}

// The texts of the maximal runs of trained tokens.
std::vector<std::string> trained_runs(const Tokenizer& tok, const MaskedTokens& m) {
  std::vector<std::string> runs;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= m.tokens.size(); ++i) {
    if (i < m.tokens.size() && m.trained[i]) {
      run.push_back(m.tokens[i]);
    } else if (!run.empty()) {
      runs.push_back(tok.decode(run));
      run.clear();
    }
  }
  return runs;
}

const std::vector<ChatMessage> kChat = {{"system", "Be brief."},
                                        {"user", "What is the capital of France?"},
                                        {"assistant", "Paris."},
                                        {"user", "And of Italy?"},
                                        {"assistant", "Rome, of course."}};

// A tokenizer directory: the DeepSeek LLM tokenizer with a chat model's tokenizer_config.json.
std::string write_tokenizer(const fs::path& dir, const std::string& format) {
  fs::create_directories(dir / "tok");
  std::ofstream(dir / "tok" / "tokenizer.json") << llm_tokenizer_json();
  std::ofstream(dir / "tok" / "tokenizer_config.json") << chat_config(format).dump();
  return (dir / "tok").string();
}

}  // namespace

// DeepSeek LLM chat ("User: ...\n\nAssistant: ...<eos>"): each assistant turn's content, with the
// space the template puts after "Assistant:", and its end-of-sentence token are trained; the
// system prompt, user turns and role headers are not.
TEST(ChatMask, DeepSeekLlmMultiTurn) {
  const Tokenizer tok = llm_tokenizer("deepseek_llm");
  const ChatRenderer renderer(tok);
  EXPECT_EQ(renderer.format_name(), "deepseek_llm");
  const MaskedTokens m = renderer.sft_example(kChat, "test:1");
  EXPECT_EQ(tok.decode(m.tokens), renderer.render(kChat, false));
  EXPECT_EQ(m.tokens.front(), tok.bos_id());
  EXPECT_EQ(trained_runs(tok, m),
            (std::vector<std::string>{" Paris.<｜end▁of▁sentence｜>",
                                      " Rome, of course.<｜end▁of▁sentence｜>"}));
}

// DeepSeek-V3 ("<｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>"): the content right after the
// assistant tag and the end token.
TEST(ChatMask, DeepSeekV3MultiTurn) {
  const Tokenizer tok = llm_tokenizer("deepseek_v3");
  const ChatRenderer renderer(tok);
  EXPECT_EQ(renderer.format_name(), "deepseek_v3");
  const MaskedTokens m = renderer.sft_example(kChat, "test:1");
  EXPECT_EQ(tok.decode(m.tokens), renderer.render(kChat, false));
  EXPECT_EQ(trained_runs(tok, m),
            (std::vector<std::string>{"Paris.<｜end▁of▁sentence｜>",
                                      "Rome, of course.<｜end▁of▁sentence｜>"}));
  // DPO: only the response after the prompt's generation header.
  const MaskedTokens r =
      renderer.response_example({{"user", "Capital of Spain?"}}, "Madrid.", "t:2");
  EXPECT_EQ(trained_runs(tok, r), (std::vector<std::string>{"Madrid.<｜end▁of▁sentence｜>"}));
}

// Rows: segments of n − 1 positions (targets shifted, untrained ones −100), packed greedily,
// padded with an ignored segment, cut to fit when longer than a row; read back unchanged.
TEST(ChatRows, PackAndRoundTrip) {
  TempDir tmp;
  ChatRowWriter w(10, 99);
  const MaskedTokens a{{5, 6, 7, 8}, {0, 0, 1, 1}};              // 3 positions
  const MaskedTokens b{{1, 2, 3, 4, 5, 6}, {0, 1, 1, 0, 1, 1}};  // 5 positions
  const MaskedTokens c{{9, 8, 7, 6}, {0, 1, 1, 0}};              // 3 positions: a new row
  const MaskedTokens longer{std::vector<int32_t>(15, 3), std::vector<uint8_t>(15, 1)};
  EXPECT_FALSE(w.add({&a}, {SegmentKind::kSft}));
  EXPECT_FALSE(w.add({&b}, {SegmentKind::kSft}));
  EXPECT_FALSE(w.add({&c}, {SegmentKind::kSft}));
  EXPECT_TRUE(w.add({&longer}, {SegmentKind::kSft}));
  w.write((tmp.path / "d").string(), {{"task", "sft"}, {"vocab_size", 100}});
  const auto rows = ChatRows::open((tmp.path / "d").string());
  ASSERT_EQ(rows->rows(), 3);
  EXPECT_EQ(rows->seq_len(), 10);
  const ChatRow& r0 = rows->row(0);
  EXPECT_EQ(r0.inputs, (std::vector<int32_t>{5, 6, 7, 1, 2, 3, 4, 5, 99, 99}));
  EXPECT_EQ(r0.targets, (std::vector<int32_t>{-100, 7, 8, 2, 3, -100, 5, 6, -100, -100}));
  EXPECT_EQ(r0.lengths, (std::vector<int64_t>{3, 5, 2}));  // the last one padding
  EXPECT_EQ(r0.kinds, (std::vector<SegmentKind>{SegmentKind::kSft, SegmentKind::kSft,
                                                SegmentKind::kPadding}));
  EXPECT_EQ(rows->row(1).targets[1], 7);
  EXPECT_EQ(rows->row(1).targets[2], -100);
  EXPECT_EQ(rows->row(1).lengths, (std::vector<int64_t>{3, 7}));
  EXPECT_EQ(rows->row(2).lengths, (std::vector<int64_t>{10}));  // 14 positions cut to 10
  // A damaged file is an error naming it.
  std::ofstream(tmp.path / "d" / "segments.bin", std::ios::app) << "xxxx";
  EXPECT_NE(error_of([&] { ChatRows::open((tmp.path / "d").string()); }).find("segments.bin"),
            std::string::npos);
}

// TrainBatches::peek (the trainer tells the optimizer the next forward's ids): what next() will
// return, slices too, with the position unmoved — also where next() starts a new epoch, whose
// shuffle the peek must not leave behind. Over packed chat rows and over pretraining windows.
TEST(TrainBatches, PeekIsTheNextBatchAndKeepsThePosition) {
  TempDir tmp;
  ChatRowWriter w(6, 99);
  std::vector<MaskedTokens> docs;
  for (int32_t d = 0; d < 7; ++d)  // one conversation a row (7 positions do not fit two)
    docs.push_back({std::vector<int32_t>(7, d + 1), std::vector<uint8_t>(7, 1)});
  for (const MaskedTokens& d : docs) w.add({&d}, {SegmentKind::kSft});
  w.write((tmp.path / "sft").string(), {{"task", "sft"}, {"vocab_size", 100}});
  ShardWriter shards((tmp.path / "pretrain").string(), 1000, 0, 999, 50);
  for (int32_t d = 0; d < 9; ++d) {
    std::vector<int32_t> doc;
    for (int32_t i = 0; i < 3 + d; ++i) doc.push_back(d * 100 + i + 1);
    shards.append(doc);
    shards.end_document();
  }
  shards.finish();
  for (const std::string task : {"sft", "pretrain"}) {
    SCOPED_TRACE(task);
    train::TrainBatches a(task, (tmp.path / task).string(), 5, 3, 7, 0.0);
    train::TrainBatches b(task, (tmp.path / task).string(), 5, 3, 7, 0.0);
    int epochs = 0;
    for (int step = 0; step < 12; ++step) {
      const int64_t first = step % 3, count = 3 - first;
      const train::MicroBatch peeked = a.peek(first, count);
      const nlohmann::json at = a.position();
      EXPECT_EQ(a.peek(first, count).inputs, peeked.inputs) << "step " << step;  // again
      const train::MicroBatch got = a.next(first, count);
      const train::MicroBatch twin = b.next(first, count);  // never peeked
      ASSERT_FALSE(got.inputs.empty());
      EXPECT_EQ(peeked.inputs, got.inputs) << "step " << step;
      EXPECT_EQ(peeked.targets, got.targets) << "step " << step;
      EXPECT_EQ(got.inputs, twin.inputs) << "step " << step;
      EXPECT_EQ(a.position(), b.position()) << "step " << step;
      EXPECT_NE(a.position(), at) << "step " << step;  // next() moved on, peek() had not
      epochs = int(a.position().at("epoch").get<int64_t>());
    }
    EXPECT_GE(epochs, 2) << "the steps did not cross epochs";
  }
}

// Bad JSONL lines are errors naming file:line and the field at fault.
TEST(ChatData, BadLinesNameFileLineAndField) {
  TempDir tmp;
  const std::string tok = write_tokenizer(tmp.path, "deepseek_llm");
  const ChatRenderer renderer(Tokenizer::load(tok));  // loaded once: the 102K vocabulary is slow
  const json good = {
      {"messages",
       {{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", "hello"}}}}};
  auto sft_error = [&](const std::string& bad_line) {
    std::ofstream(tmp.path / "chats.jsonl") << good.dump() << "\n\n"
                                            << good.dump() << "\n"
                                            << bad_line << "\n";
    ChatPrepareOptions o;
    o.input = (tmp.path / "chats.jsonl").string();
    o.out_dir = (tmp.path / "out").string();
    return error_of([&] { prepare_sft(o, renderer); });
  };
  EXPECT_NE(
      sft_error(
          R"({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})")
          .find("chats.jsonl:4: messages[1].role: expected one of system/user/assistant"),
      std::string::npos);
  EXPECT_NE(sft_error(R"({"messages": [{"role": "user"}]})")
                .find("chats.jsonl:4: messages[0].content: missing"),
            std::string::npos);
  EXPECT_NE(sft_error(R"({"messages": [{"role": "user", "content": 3}]})")
                .find("chats.jsonl:4: messages[0].content: expected a string"),
            std::string::npos);
  EXPECT_NE(sft_error(R"({"messages": [{"role": "user", "content": "q"}]})")
                .find("chats.jsonl:4: messages: no assistant message"),
            std::string::npos);
  EXPECT_NE(sft_error(R"({"messages": [)").find("chats.jsonl:4: not valid JSON"),
            std::string::npos);
  EXPECT_NE(sft_error(R"({"text": "x"})").find("chats.jsonl:4: messages: missing"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.path / "out" / "index.json"));

  std::ofstream(tmp.path / "pairs.jsonl") << R"({"prompt": "q", "chosen": "a", "rejected": "b"})"
                                          << "\n"
                                          << R"({"prompt": "q", "chosen": "a"})"
                                          << "\n";
  ChatPrepareOptions o;
  o.input = (tmp.path / "pairs.jsonl").string();
  o.out_dir = (tmp.path / "out").string();
  EXPECT_NE(error_of([&] { prepare_dpo(o, renderer); }).find("pairs.jsonl:2: rejected: missing"),
            std::string::npos);
  std::ofstream(tmp.path / "pairs.jsonl")
      << R"({"prompt": [{"role": "usr", "content": "q"}], "chosen": "a", "rejected": "b"})"
      << "\n";
  EXPECT_NE(error_of([&] {
              prepare_dpo(o, renderer);
            }).find("pairs.jsonl:1: prompt[0].role: expected one of"),
            std::string::npos);
  // A good file: pairs kept together as chosen, rejected segments.
  std::ofstream(tmp.path / "pairs.jsonl")
      << R"({"prompt": "q", "chosen": "yes indeed", "rejected": "no"})"
      << "\n";
  const ChatPrepareSummary s = prepare_dpo(o, renderer);
  EXPECT_EQ(s.examples, 1);
  const auto rows = ChatRows::open(o.out_dir);
  EXPECT_EQ(rows->task(), "dpo");
  EXPECT_EQ(rows->row(0).kinds[0], SegmentKind::kChosen);
  EXPECT_EQ(rows->row(0).kinds[1], SegmentKind::kRejected);
}
