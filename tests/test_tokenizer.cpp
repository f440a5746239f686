// Tokenizer conformance: dseek's byte-level BPE against vectors recorded from Hugging Face
// `tokenizers` (scripts/fixtures/make_tokenizer_vectors.py) for the DeepSeek LLM and Coder
// tokenizers and a DeepSeek-V3-regex test tokenizer, plus decoding, streaming and bad input.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

using namespace dseek;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string shared_tokenizer(const std::string& name) {
  return std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/" + name + ".tokenizer.json";
}

std::string fixture(const std::string& name) {
  return std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name;
}

// Loaded once: the 3.7 MB llm tokenizer takes a moment under the sanitizers.
const Tokenizer& tokenizer(const std::string& name) {
  static const Tokenizer llm = Tokenizer::load(shared_tokenizer("deepseek-llm"));
  static const Tokenizer coder = Tokenizer::load(shared_tokenizer("deepseek-coder"));
  static const Tokenizer v3regex = [] {
    // deepseek-llm's vocabulary with DeepSeek-V3's normalizer and pre-tokenizer.
    nlohmann::json doc = nlohmann::json::parse(read_text(shared_tokenizer("deepseek-llm")));
    const nlohmann::json v3 = nlohmann::json::parse(read_text(fixture("v3_pre_tokenizer.json")));
    doc["normalizer"] = v3["normalizer"];
    doc["pre_tokenizer"] = v3["pre_tokenizer"];
    return Tokenizer::from_json_text(doc.dump(), "", "v3regex");
  }();
  if (name == "llm") return llm;
  if (name == "coder") return coder;
  return v3regex;
}

std::string printable(const std::string& s) {
  return nlohmann::json(s).dump();
}

class TokenizerVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerVectors, EncodeMatchesHuggingFace) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto vectors = nlohmann::json::parse(read_text(fixture("vectors_" + GetParam() + ".json")));
  ASSERT_GE(vectors["texts"].size(), 60u);
  for (const auto& v : vectors["texts"]) {
    const std::string text = v["text"].get<std::string>();
    const auto expected = v["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text), expected) << "text " << printable(text);
  }
}

TEST_P(TokenizerVectors, EncodeMatchesHuggingFaceOnRandomStrings) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto vectors = nlohmann::json::parse(read_text(fixture("vectors_" + GetParam() + ".json")));
  ASSERT_GE(vectors["random"].size(), 200u);
  for (const auto& v : vectors["random"]) {
    const std::string text = v["text"].get<std::string>();
    const auto ids = v["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text), ids) << "text " << printable(text);
    // Every piece of these texts maps to tokens, so decoding gives the text back unless it has
    // characters that deepseek-llm/coder store as lone Latin-1 added tokens (decoded lossily).
    if (text.find("ø") == std::string::npos) {
      EXPECT_EQ(tok.decode(ids), text);
    }
  }
}

TEST_P(TokenizerVectors, DecodeMatchesHuggingFace) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto vectors = nlohmann::json::parse(read_text(fixture("vectors_" + GetParam() + ".json")));
  size_t round_trips = 0;
  for (const auto* list : {&vectors["texts"], &vectors["decode"]}) {
    for (const auto& v : *list) {
      const auto ids = v["ids"].get<std::vector<int32_t>>();
      const std::string decoded = v["decoded"].get<std::string>();
      EXPECT_EQ(tok.decode(ids), decoded) << "ids " << v["ids"].dump();
      EXPECT_EQ(tok.decode(ids, true), v["decoded_skip"].get<std::string>())
          << "ids " << v["ids"].dump();
      if (v.contains("text") && v["text"].get<std::string>() == decoded) ++round_trips;
    }
  }
  // Text without the tokens that decode lossily (the lone Latin-1 added tokens) round-trips.
  EXPECT_GE(round_trips, 60u);
}

TEST_P(TokenizerVectors, StreamDecodeEqualsFullDecode) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto vectors = nlohmann::json::parse(read_text(fixture("vectors_" + GetParam() + ".json")));
  for (const auto* list : {&vectors["texts"], &vectors["decode"]}) {
    for (const auto& v : *list) {
      const auto ids = v["ids"].get<std::vector<int32_t>>();
      for (const bool skip : {false, true}) {
        StreamDecoder stream(tok, skip);
        std::string text;
        for (const int32_t id : ids) {
          const std::string part = stream.push(id);
          EXPECT_FALSE(utf8::first_invalid(part).has_value()) << "ids " << v["ids"].dump();
          text += part;
        }
        text += stream.flush();
        EXPECT_EQ(text, tok.decode(ids, skip)) << "ids " << v["ids"].dump();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DeepSeek, TokenizerVectors, ::testing::Values("llm", "coder", "v3regex"));

TEST(Tokenizer, SpecialTokensAndIds) {
  const Tokenizer& llm = tokenizer("llm");
  EXPECT_EQ(llm.bos_id(), 100000);
  EXPECT_EQ(llm.eos_id(), 100001);
  EXPECT_EQ(llm.vocab_size(), 102400);
  EXPECT_TRUE(llm.is_special(100000));
  EXPECT_FALSE(llm.is_special(100002));  // "ø": an added token, not a special one
  EXPECT_FALSE(llm.is_special(17464));
  EXPECT_EQ(llm.id_to_token(100001), "<｜end▁of▁sentence｜>");
  EXPECT_EQ(llm.token_to_id("<｜begin▁of▁sentence｜>"), 100000);
  EXPECT_EQ(llm.token_to_id("Hello"), 17464);
  EXPECT_FALSE(llm.token_to_id("no such token at all").has_value());

  const Tokenizer& coder = tokenizer("coder");
  EXPECT_EQ(coder.bos_id(), 32013);
  EXPECT_EQ(coder.eos_id(), 32014);
  EXPECT_EQ(coder.vocab_size(), 32256);
  EXPECT_EQ(coder.token_to_id("<｜fim▁hole｜>"), 32015);
}

TEST(Tokenizer, AddBosPrependsOnlyWhenAsked) {
  const Tokenizer& llm = tokenizer("llm");
  const auto plain = llm.encode("Hello world");
  const auto with_bos = llm.encode("Hello world", true);
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], llm.bos_id());
  EXPECT_TRUE(std::equal(plain.begin(), plain.end(), with_bos.begin() + 1));
  EXPECT_NE(plain.front(), llm.bos_id());
}

TEST(Tokenizer, InvalidUtf8InputIsAnError) {
  const Tokenizer& llm = tokenizer("llm");
  const std::pair<std::string, size_t> cases[] = {
      {std::string("abc\xff"), 3},          {std::string("\xc3"), 0},
      {std::string("ok \xe4\xb8"), 3},      {std::string("a\xed\xa0\x80"), 1},  // surrogate
      {std::string("\xf4\x90\x80\x80"), 0},                                     // above U+10FFFF
      {std::string("\xc0\xaf"), 0},                                             // overlong
  };
  for (const auto& [text, offset] : cases) {
    try {
      llm.encode(text);
      ADD_FAILURE() << "no error for " << printable(text);
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                "[tokenizer] input is not valid UTF-8 at byte " + std::to_string(offset));
    }
  }
}

TEST(Tokenizer, DecodeRejectsUnknownIds) {
  const Tokenizer& coder = tokenizer("coder");
  EXPECT_THROW(coder.decode({1, 2, 32256}), Error);
  EXPECT_THROW(coder.decode({-1}), Error);
  EXPECT_THROW(coder.id_to_token(40000), Error);
  StreamDecoder stream(coder);
  EXPECT_THROW(stream.push(1 << 20), Error);
}

TEST(Tokenizer, StreamDecoderHoldsBackPartialCharacters) {
  const Tokenizer& llm = tokenizer("llm");
  // "你" is E4 BD A0: three byte tokens, each a single byte-level symbol.
  std::vector<int32_t> ids;
  for (const char* symbol : {"ä", "½", "ł"}) ids.push_back(*llm.token_to_id(symbol));
  ASSERT_EQ(llm.decode(ids), "你");
  StreamDecoder stream(llm);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "你");
  EXPECT_EQ(stream.flush(), "");
  // A sequence cut short is held, then replaced by one U+FFFD at the end.
  StreamDecoder cut(llm);
  EXPECT_EQ(cut.push(ids[0]), "");
  EXPECT_EQ(cut.push(ids[1]), "");
  EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");
  // ... or as soon as a byte shows it cannot complete.
  StreamDecoder broken(llm);
  EXPECT_EQ(broken.push(ids[0]), "");
  EXPECT_EQ(broken.push(*llm.token_to_id("A")),
            "\xEF\xBF\xBD"
            "A");
}

TEST(Tokenizer, CopiesShareState) {
  const Tokenizer copy = tokenizer("coder");
  EXPECT_EQ(copy.encode("int main() { return 0; }"),
            tokenizer("coder").encode("int main() { return 0; }"));
}

}  // namespace
