// Tokenizer loading: components of tokenizer.json (on a tiny hand-made tokenizer whose ids can be
// worked out by hand), errors for bad files, chat templates against transformers' renders, and
// the tokenize/detokenize commands.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using nlohmann::json;

namespace {

// Vocabulary: a b ab Ġ 1 Ġab 11, merges "a b" (rank 0), "Ġ ab" (rank 1), "1 1" (rank 2), and the
// sentence / EOT tokens as added tokens.
json tiny() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 7, "content": "<｜begin▁of▁sentence｜>", "single_word": false, "lstrip": false,
       "rstrip": false, "normalized": false, "special": true},
      {"id": 8, "content": "<｜end▁of▁sentence｜>", "single_word": false, "lstrip": false,
       "rstrip": false, "normalized": false, "special": true},
      {"id": 9, "content": "<|EOT|>", "single_word": false, "lstrip": false, "rstrip": false,
       "normalized": true, "special": false}
    ],
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\s+$"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
              "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "1": 4, "Ġab": 5, "11": 6},
              "merges": ["a b", "Ġ ab", "1 1"]}
  })");
}

Tokenizer from(const json& doc, const json& config = json()) {
  return Tokenizer::from_json_text(doc.dump(), config.is_null() ? "" : config.dump(), "tiny.json");
}

std::string error_of(const json& doc) {
  try {
    from(doc);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

json split(const std::string& kind, const std::string& pattern, const std::string& behavior) {
  return {
      {"type", "Split"}, {"pattern", {{kind, pattern}}}, {"behavior", behavior}, {"invert", false}};
}

json with_pre(std::vector<json> steps) {
  json doc = tiny();
  doc["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  return doc;
}

const json kByteLevel = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};

using Ids = std::vector<int32_t>;

TEST(TokenizerLoad, MergesByRankAcrossTheWord) {
  const Tokenizer tok = from(tiny());
  EXPECT_EQ(tok.encode("ab ab"), (Ids{2, 5}));  // a b Ġ a b -> ab Ġ ab -> ab Ġab
  EXPECT_EQ(tok.encode("abab 11"), (Ids{2, 2, 3, 6}));
  EXPECT_EQ(tok.encode("111"), (Ids{6, 4}));           // equal ranks merge leftmost first
  EXPECT_EQ(tok.encode("a<|EOT|>b"), (Ids{0, 9, 1}));  // added tokens are cut out first
  EXPECT_EQ(tok.encode("c"), Ids{});                   // no unk token: unknown bytes vanish
  EXPECT_EQ(tok.decode({2, 5, 8}), "ab ab<｜end▁of▁sentence｜>");
  EXPECT_EQ(tok.decode({2, 5, 8}, true), "ab ab");
  EXPECT_EQ(tok.vocab_size(), 10);
  EXPECT_EQ(tok.bos_id(), 7);
}

TEST(TokenizerLoad, MergesAsPairs) {
  json doc = tiny();
  doc["model"]["merges"] = json::array({json::array({"a", "b"}), json::array({"Ġ", "ab"})});
  EXPECT_EQ(from(doc).encode("ab ab"), (Ids{2, 5}));
}

TEST(TokenizerLoad, SplitBehaviours) {
  // The regex " " around "ab ab": which pieces reach BPE decides whether "Ġ ab" can merge.
  EXPECT_EQ(from(with_pre({split("String", " ", "Isolated"), kByteLevel})).encode("ab ab"),
            (Ids{2, 3, 2}));
  EXPECT_EQ(from(with_pre({split("String", " ", "Removed"), kByteLevel})).encode("ab ab"),
            (Ids{2, 2}));
  EXPECT_EQ(from(with_pre({split("Regex", " ", "MergedWithNext"), kByteLevel})).encode("ab ab"),
            (Ids{2, 5}));
  EXPECT_EQ(from(with_pre({split("Regex", " ", "MergedWithPrevious"), kByteLevel})).encode("ab ab"),
            (Ids{2, 3, 2}));
  json inverted = split("Regex", "ab", "Removed");
  inverted["invert"] = true;  // removes what is not "ab"
  EXPECT_EQ(from(with_pre({inverted, kByteLevel})).encode("ab ab"), (Ids{2, 2}));
}

TEST(TokenizerLoad, DigitsAndByteLevelRegex) {
  const json individual = {{"type", "Digits"}, {"individual_digits", true}};
  const json runs = {{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(from(with_pre({individual, kByteLevel})).encode("11"), (Ids{4, 4}));
  EXPECT_EQ(from(with_pre({runs, kByteLevel})).encode("11"), (Ids{6}));
  // ByteLevel's own GPT-2 split, with and without the prefix space.
  json doc = tiny();
  doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_EQ(from(doc).encode("ab ab"), (Ids{5, 5}));
  doc["pre_tokenizer"]["add_prefix_space"] = false;
  EXPECT_EQ(from(doc).encode("ab1ab"), (Ids{2, 4, 2}));
}

TEST(TokenizerLoad, DollarIsALineAnchorAsInOniguruma) {
  // "\s+$" (the tiny tokenizer's split) also isolates spaces before a newline in Ruby syntax.
  json doc = tiny();
  doc["model"]["vocab"]["Ċ"] = 10;
  doc["model"]["vocab"]["ĠĠ"] = 11;
  doc["model"]["vocab"]["ĠĠĊ"] = 12;
  doc["model"]["merges"] = {"a b", "Ġ ab", "Ġ Ġ", "ĠĠ Ċ"};
  // Without the anchor split, "  \n" would merge into one token.
  EXPECT_EQ(from(doc).encode("ab  \nab"), (Ids{2, 11, 10, 2}));
  doc["pre_tokenizer"] = kByteLevel;
  EXPECT_EQ(from(doc).encode("ab  \nab"), (Ids{2, 12, 2}));
}

TEST(TokenizerLoad, BadFilesAreErrorsNamingTheField) {
  auto expect_error = [](const json& doc, const std::string& part) {
    const std::string what = error_of(doc);
    EXPECT_NE(what.find(part), std::string::npos) << what;
    EXPECT_EQ(what.rfind("[tokenizer] tiny.json", 0), 0u) << what;
  };
  json doc = tiny();
  doc.erase("model");
  expect_error(doc, "model: missing");
  expect_error(with_pre({{{"type", "Whitespace"}}, kByteLevel}),
               "pre_tokenizer.pretokenizers[0].type: unsupported pre-tokenizer 'Whitespace'");
  expect_error(with_pre({kByteLevel, split("Regex", "a", "Isolated")}),
               "ByteLevel must be the last");
  expect_error(with_pre({split("Regex", "(a", "Isolated")}), "does not compile");
  expect_error(with_pre({split("Regex", "a", "Sideways")}), "unknown split behavior 'Sideways'");
  doc = tiny();
  doc["model"]["merges"] = {"a b c"};
  expect_error(doc, "merges[0]");
  doc["model"]["merges"] = {"a z"};
  expect_error(doc, "is not in the vocab");
  doc["model"]["merges"] = {"b b"};
  expect_error(doc, "the merged token \"bb\" is not in the vocab");
  doc["model"]["merges"] = {json::array({"a"})};
  expect_error(doc, "merges[0]");
  doc = tiny();
  doc["model"]["type"] = "WordPiece";
  expect_error(doc, "only BPE models");
  doc = tiny();
  doc["normalizer"] = {{"type", "NFKC"}};
  expect_error(doc, "unsupported normalizer 'NFKC'");
  doc = tiny();
  doc["decoder"] = {{"type", "WordPiece"}};
  expect_error(doc, "decoder");
  doc = tiny();
  doc["added_tokens"][0]["id"] = "seven";
  expect_error(doc, "added_tokens[0].id");
  EXPECT_THROW(Tokenizer::from_json_text("{\"model\": ", "", "tiny.json"), Error);
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), Error);
  // An empty normalizer sequence (DeepSeek-V3's) is accepted.
  doc = tiny();
  doc["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array()}};
  EXPECT_EQ(from(doc).encode("ab ab"), (Ids{2, 5}));
}

TEST(TokenizerLoad, AddedTokenStripping) {
  json doc = tiny();
  doc["added_tokens"][2]["lstrip"] = true;
  doc["added_tokens"][2]["rstrip"] = true;
  EXPECT_EQ(from(doc).encode("ab <|EOT|>  ab"), (Ids{2, 9, 2}));
  doc["added_tokens"][2]["lstrip"] = false;
  doc["added_tokens"][2]["rstrip"] = false;
  doc["added_tokens"][2]["single_word"] = true;
  EXPECT_EQ(from(doc).encode("ab <|EOT|> ab"), (Ids{2, 3, 9, 5}));
  // Glued to a word it stays text (whose bytes this vocabulary cannot represent).
  EXPECT_EQ(from(doc).encode("ab<|EOT|>"), (Ids{2}));
}

// ---- chat templates: dseek's renderers against transformers' apply_chat_template.

TEST(TokenizerChat, MatchesTransformersRenders) {
  const json fixture = json::parse(std::ifstream(std::string(DSEEK_SOURCE_DIR) +
                                                 "/tests/fixtures/tokenizer/chat_templates.json"));
  size_t checked = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string name = c["template"];
    const json config = {
        {"bos_token", fixture["bos_token"]},
        {"eos_token", name == "deepseek_coder" ? "<|EOT|>" : "<｜end▁of▁sentence｜>"},
        {"chat_template", fixture["templates"][name]}};
    const Tokenizer tok = from(tiny(), config);
    EXPECT_EQ(tok.chat_template_name(), name);
    std::vector<ChatMessage> messages;
    for (const auto& m : fixture["conversations"][c["conversation"].get<size_t>()]) {
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    EXPECT_EQ(tok.apply_chat_template(messages, c["gen"].get<bool>()), c["text"].get<std::string>())
        << name << " conversation " << c["conversation"] << " gen " << c["gen"];
    ++checked;
  }
  EXPECT_EQ(checked, 4u * 7u * 2u);
}

TEST(TokenizerChat, UnknownOrMissingTemplatesAreErrors) {
  const json config = {{"chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"}};
  try {
    from(tiny(), config);
    ADD_FAILURE() << "unrecognised template accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config"), std::string::npos) << e.what();
  }
  const Tokenizer plain = from(tiny());
  EXPECT_EQ(plain.chat_template_name(), "");
  EXPECT_THROW(plain.apply_chat_template({{"user", "hi"}}, true), Error);
  EXPECT_EQ(plain.apply_chat_template({{"user", "hi"}}, true, "deepseek_v3"),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>");
  EXPECT_THROW(plain.apply_chat_template({{"user", "hi"}}, true, "chatml"), Error);
  EXPECT_EQ(Tokenizer::chat_template_names().size(), 5u);
}

TEST(TokenizerChat, LoadsADirectory) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "dseek_tok_dir";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << tiny().dump();
  const json fixture = json::parse(std::ifstream(std::string(DSEEK_SOURCE_DIR) +
                                                 "/tests/fixtures/tokenizer/chat_templates.json"));
  std::ofstream(dir / "tokenizer_config.json")
      << json({{"bos_token", {{"content", "<｜begin▁of▁sentence｜>"}, {"lstrip", false}}},
               {"eos_token", "<|EOT|>"},
               {"chat_template", fixture["templates"]["deepseek_llm"]}})
             .dump();
  const Tokenizer tok = Tokenizer::load(dir.string());
  EXPECT_EQ(tok.chat_template_name(), "deepseek_llm");
  EXPECT_EQ(tok.eos_id(), 9);
  EXPECT_EQ(tok.apply_chat_template({{"user", "q"}, {"assistant", "a"}}, false),
            "<｜begin▁of▁sentence｜>User: q\n\nAssistant: a<|EOT|>");
  // transformers 5 keeps the template in chat_template.jinja.
  std::ofstream(dir / "tokenizer_config.json") << json({{"eos_token", "<|EOT|>"}}).dump();
  std::ofstream(dir / "chat_template.jinja")
      << fixture["templates"]["deepseek_v3"].get<std::string>();
  EXPECT_EQ(Tokenizer::load(dir.string()).chat_template_name(), "deepseek_v3");
  fs::remove_all(dir);
}

// ---- the command line.

std::string run(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "(popen failed)";
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = pclose(pipe);
  if (status != 0) out += "(exit " + std::to_string(status) + ")";
  return out;
}

TEST(TokenizerCli, TokenizeAndDetokenize) {
  const std::string tok =
      std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/deepseek-coder.tokenizer.json";
  const json vectors = json::parse(std::ifstream(std::string(DSEEK_SOURCE_DIR) +
                                                 "/tests/fixtures/tokenizer/vectors_coder.json"));
  const json& v = vectors["texts"][2];  // "Hello world!"
  ASSERT_EQ(v["text"], "Hello world!");
  std::string expected;
  for (const auto& id : v["ids"]) expected += (expected.empty() ? "" : " ") + id.dump();
  const std::string bin = DSEEK_BINARY;
  EXPECT_EQ(run(bin + " tokenize --tokenizer " + tok + " -- 'Hello world!'"), expected + "\n");
  EXPECT_EQ(run("printf 'Hello world!' | " + bin + " tokenize --tokenizer " + tok + " -"),
            expected + "\n");
  EXPECT_EQ(run(bin + " tokenize --add-bos --tokenizer " + tok + " -- 'Hello world!'"),
            "32013 " + expected + "\n");
  std::string commas = expected;
  std::replace(commas.begin(), commas.end(), ' ', ',');
  EXPECT_EQ(run(bin + " detokenize --tokenizer " + tok + " -- " + commas), "Hello world!\n");
  EXPECT_EQ(run(bin + " detokenize --tokenizer " + tok + " 32013 " + expected),
            "<｜begin▁of▁sentence｜>Hello world!\n");
  EXPECT_NE(run(bin + " detokenize --tokenizer " + tok + " 99999999 2>/dev/null").find("(exit"),
            std::string::npos);
}

}  // namespace
