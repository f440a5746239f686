// BPE training (`dseek tokenizer train`): the learned merges against a naive trainer that recounts
// every pair at every step, the Hugging Face course's worked example, the pre-tokenizer and chat
// template against the DeepSeek-V3 fixtures, and the trained tokenizer through dseek's runtime
// Tokenizer (round trips of arbitrary UTF-8, special tokens, vocab size), determinism, errors and
// the CLI.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/fim.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace fs = std::filesystem;
using namespace dseek;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string fixture(const std::string& name) {
  return std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name;
}

Tokenizer load(const TrainedTokenizer& t) {
  return Tokenizer::from_json_text(t.tokenizer.dump(), t.config.dump(), "trained");
}

std::vector<std::string> merges_of(const TrainedTokenizer& t) {
  return t.tokenizer["model"]["merges"].get<std::vector<std::string>>();
}

// Runs `body`, expecting a dseek::Error whose message holds `part`.
template <typename F>
void expect_error(F body, const std::string& part) {
  try {
    body();
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// English-ish text with repeats, digits, punctuation and CJK, so many merges are learned.
std::string sample_corpus() {
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog.\n",
      "A penny saved is a penny earned; a stitch in time saves nine.\n",
      "To be, or not to be: that is the question.\n",
      "In 1984, 2001 and 2024 the numbers 12345678 were printed 3 times.\n",
      "   indented    text\twith\ttabs   \n\n",
      "中文分词测试，日本語のテキスト。\n",
      "She sells sea shells by the sea shore; the shells she sells are surely seashells.\n",
  };
  std::string text;
  for (int rep = 0; rep < 20; ++rep) {
    for (const char* line : lines) text += line;
  }
  return text;
}

TrainedTokenizer train_on(const std::vector<std::string>& docs, BpeTrainerOptions options) {
  BpeTrainer trainer(std::move(options));
  for (const auto& d : docs) trainer.add_text(d);
  return trainer.train();
}

// Reference BPE on whole words (no pre-tokenization needed: the test words are letters only):
// recount all pairs each step, take the most frequent, ties to the smallest (left id, right id),
// merge left to right in every word; a merge that spells an existing token reuses its id.
std::vector<std::string> naive_merges(const std::map<std::string, int64_t>& word_counts,
                                      int64_t max_tokens) {
  std::vector<std::string> tokens;  // byte symbols in bytes_to_unicode code point order
  std::vector<std::pair<char32_t, int>> order;
  for (int b = 0; b < 256; ++b) order.emplace_back(utf8::byte_to_char(uint8_t(b)), b);
  std::sort(order.begin(), order.end());
  std::map<int, int32_t> byte_id;
  for (const auto& [cp, b] : order) {
    byte_id[b] = int32_t(tokens.size());
    std::string s;
    utf8::append(s, cp);
    tokens.push_back(s);
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : word_counts) {
    std::vector<int32_t> s;
    for (const char ch : w) s.push_back(byte_id[uint8_t(ch)]);
    words.emplace_back(s, c);
  }
  std::vector<std::string> merges;
  while (int64_t(tokens.size()) < max_tokens) {
    std::map<std::pair<int32_t, int32_t>, int64_t> counts;
    for (const auto& [s, c] : words) {
      for (size_t i = 0; i + 1 < s.size(); ++i) counts[{s[i], s[i + 1]}] += c;
    }
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [pair, c] : counts) {  // map order: the first of equal counts is smallest
      if (c > best_count) best = pair, best_count = c;
    }
    if (best_count < 2) break;
    const std::string merged = tokens[size_t(best.first)] + tokens[size_t(best.second)];
    const auto found = std::find(tokens.begin(), tokens.end(), merged);
    const auto id = int32_t(found - tokens.begin());
    if (found == tokens.end()) tokens.push_back(merged);
    merges.push_back(tokens[size_t(best.first)] + " " + tokens[size_t(best.second)]);
    for (auto& [s, c] : words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) {
          out.push_back(id);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = out;
    }
  }
  return merges;
}

}  // namespace

TEST(BpeTrainer, HuggingFaceCourseExample) {
  // The corpus of the Hugging Face NLP course's BPE chapter: the first merges are "u g"
  // (20 times), "u n" (16), then "h ug" (15).
  std::vector<std::string> docs;
  const std::pair<const char*, int> words[] = {
      {"hug", 10}, {"pug", 5}, {"pun", 12}, {"bun", 4}, {"hugs", 5}};
  for (const auto& [w, n] : words) {
    for (int i = 0; i < n; ++i) docs.emplace_back(w);
  }
  BpeTrainerOptions options;
  options.vocab_size = 256 + 3 + 7;
  const TrainedTokenizer t = train_on(docs, options);
  EXPECT_EQ(merges_of(t), (std::vector<std::string>{"u g", "u n", "h ug"}));
  EXPECT_EQ(t.vocab_size, 266);
  const Tokenizer tok = load(t);
  EXPECT_EQ(tok.vocab_size(), 266);
  // Training words encode to the symbols training ended with.
  EXPECT_EQ(tok.encode("hug"), (std::vector<int32_t>{*tok.token_to_id("hug")}));
  EXPECT_EQ(tok.encode("pun"),
            (std::vector<int32_t>{*tok.token_to_id("p"), *tok.token_to_id("un")}));
  EXPECT_EQ(tok.token_to_id("ug"), 256);
  EXPECT_EQ(tok.token_to_id("un"), 257);
  EXPECT_EQ(tok.token_to_id("hug"), 258);
  EXPECT_EQ(tok.token_to_id("!"), 0);  // byte symbols in GPT-2 order
  EXPECT_EQ(tok.token_to_id("a"), 'a' - '!');
  // The corpus totals: 36 words, 113 bytes, ending as hug(10) p+ug(5) p+un(12) b+un(4) hug+s(5).
  EXPECT_EQ(t.corpus_bytes, 3 * 10 + 3 * 5 + 3 * 12 + 3 * 4 + 4 * 5);
  EXPECT_EQ(t.corpus_tokens, 1 * 10 + 2 * 5 + 2 * 12 + 2 * 4 + 2 * 5);
}

TEST(BpeTrainer, TiesGoToTheSmallestPairWhateverTheInputOrder) {
  BpeTrainerOptions options;
  options.vocab_size = 256 + 2 + 7;
  const auto a = train_on({"cd", "cd", "ab", "ab", "xy", "xy"}, options);
  const auto b = train_on({"xy", "ab", "cd", "xy", "cd", "ab"}, options);
  EXPECT_EQ(merges_of(a), (std::vector<std::string>{"a b", "c d"}));
  EXPECT_EQ(a.tokenizer.dump(), b.tokenizer.dump());
}

TEST(BpeTrainer, IncrementalCountsMatchANaiveTrainer) {
  // Words over a small alphabet with long runs ("aaaaaa" overlaps itself): many ties and stale
  // counts in the heap.
  Rng rng(7);
  std::map<std::string, int64_t> counts;
  std::vector<std::string> docs;
  for (int i = 0; i < 3000; ++i) {
    std::string w;
    const int length = 1 + int(rng.next_u64() % 9);
    for (int k = 0; k < length; ++k) {
      const char c = "aaabbcd"[rng.next_u64() % 7];
      w += c;
      if (rng.next_u64() % 4 == 0) w += std::string(rng.next_u64() % 5, c);
    }
    docs.push_back(w);
    ++counts[w];
  }
  BpeTrainerOptions options;
  options.vocab_size = 256 + 7 + 300;
  const TrainedTokenizer t = train_on(docs, options);
  const std::vector<std::string> expected = naive_merges(counts, 256 + 300);
  ASSERT_GT(expected.size(), 250u);
  EXPECT_EQ(merges_of(t), expected);
  // Every training word still round-trips and the vocabulary is exactly as asked.
  const Tokenizer tok = load(t);
  EXPECT_EQ(tok.vocab_size(), 256 + 7 + 300);
  for (const auto& [w, c] : counts) ASSERT_EQ(tok.decode(tok.encode(w)), w);
}

TEST(BpeTrainer, VocabSizeIsHonouredAndMergesStopAtMinFrequency) {
  const std::string text = sample_corpus();
  for (const int64_t size : {263, 264, 300, 400}) {
    BpeTrainerOptions options;
    options.vocab_size = size;
    const TrainedTokenizer t = train_on({text}, options);
    EXPECT_EQ(t.vocab_size, size);
    EXPECT_EQ(t.tokenizer["model"]["vocab"].size(), size_t(size - 7));
    EXPECT_EQ(load(t).vocab_size(), size);
  }
  // More than the corpus has pairs for: merges stop when no pair is seen twice.
  BpeTrainerOptions big;
  big.vocab_size = 5000;
  const TrainedTokenizer all = train_on({text}, big);
  EXPECT_GT(all.vocab_size, 400);
  EXPECT_LT(all.vocab_size, 5000);
  EXPECT_EQ(load(all).vocab_size(), all.vocab_size);
  // Every pair seen once: nothing reaches min_frequency 2, so only the bytes and added tokens.
  BpeTrainerOptions options;
  const TrainedTokenizer t = train_on({"xyz", "uvw"}, options);
  EXPECT_EQ(t.merges, 0);
  EXPECT_EQ(t.vocab_size, 256 + 7);
  options.min_frequency = 1;
  EXPECT_EQ(train_on({"xyz", "uvw"}, options).merges, 4);
}

TEST(BpeTrainer, MergesStayInsidePreTokenizerPieces) {
  std::vector<std::string> docs(50, "hello world 1234567 hello\n");
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  const TrainedTokenizer t = train_on(docs, options);
  const Tokenizer tok = load(t);
  // V3's pieces: digits in threes first, then words with their leading space; the space before
  // the digits stays alone.
  const std::vector<std::string> expected = {"hello", "Ġworld", "Ġ",      "123",
                                             "456",   "7",      "Ġhello", "Ċ"};
  std::vector<std::string> got;
  for (const int32_t id : tok.encode(docs[0])) got.push_back(tok.id_to_token(id));
  EXPECT_EQ(got, expected);
  for (const std::string& m : merges_of(t)) {
    EXPECT_EQ(m.find("1234"), std::string::npos) << m;  // digits group by three
    EXPECT_NE(m.substr(m.find(' ') + 1).rfind("Ġ", 0), 0u) << m << ": a space only starts a piece";
  }
}

TEST(BpeTrainer, RoundTripsArbitraryUtf8) {
  static const char kControl[] = "control \x01\x02\x7f and NUL \0 inside";
  BpeTrainerOptions options;
  options.vocab_size = 600;
  const Tokenizer tok = load(train_on({sample_corpus()}, options));
  const std::vector<std::string> texts = {
      "",
      "The quick brown fox.",
      "emoji 🦀🎉👩‍👩‍👧 and flags 🇫🇷",
      "中文分词测试 한국어 テキスト",
      "Ωμέγα Кириллица עברית العربية",
      std::string(kControl, sizeof(kControl) - 1),
      "combining e\u0301 and zero-width\u200bjoin",
      "\r\n\t  \n\n   trailing   ",
      "<｜begin▁of▁sentence｜> not at the start",
      "\U0010FFFF\U0001F600\u00A0\u3000",
  };
  for (const std::string& text : texts) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text) << text;
  }
  // Random code points from all planes (bytes never seen in training among them).
  Rng rng(11);
  for (int n = 0; n < 300; ++n) {
    std::string text;
    const int length = 1 + int(rng.next_u64() % 20);
    for (int k = 0; k < length; ++k) {
      char32_t cp;
      switch (rng.next_u64() % 4) {
        case 0: cp = char32_t(rng.next_u64() % 0x80); break;
        case 1: cp = char32_t(0x80 + rng.next_u64() % 0x780); break;
        case 2: cp = char32_t(0x800 + rng.next_u64() % 0xF800); break;
        default: cp = char32_t(0x10000 + rng.next_u64() % 0x100000); break;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = U'?';
      utf8::append(text, cp);
    }
    ASSERT_EQ(tok.decode(tok.encode(text)), text) << nlohmann::json(text).dump();
  }
}

TEST(BpeTrainer, SpecialAndChatTokensAreSingleIds) {
  // The corpus holds the special tokens too: they are never split into merges.
  std::vector<std::string> docs(30, "<｜begin▁of▁sentence｜>some text<｜end▁of▁sentence｜>");
  BpeTrainerOptions options;
  options.vocab_size = 400;
  const TrainedTokenizer t = train_on(docs, options);
  for (const auto& [token, id] : t.tokenizer["model"]["vocab"].items()) {
    EXPECT_EQ(token.find("ï½ľ"), std::string::npos) << token;  // byte-level "｜"
  }
  const Tokenizer tok = load(t);
  const int64_t base = t.vocab_size - 7;
  EXPECT_EQ(tok.bos_id(), base);
  EXPECT_EQ(tok.eos_id(), base + 1);
  const std::vector<int32_t> ids =
      tok.encode("<｜begin▁of▁sentence｜>some<｜fim▁hole｜><｜User｜>text<｜end▁of▁sentence｜>");
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids.front(), base);
  EXPECT_EQ(ids.back(), base + 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), int32_t(base + 2)), 1);  // fim hole
  EXPECT_EQ(std::count(ids.begin(), ids.end(), int32_t(base + 5)), 1);  // User
  EXPECT_TRUE(tok.is_special(int32_t(base)));
  EXPECT_FALSE(tok.is_special(int32_t(base + 5)));  // as in DeepSeek-V3
  const FimTokens fim = FimTokens::from_tokenizer(tok);
  EXPECT_EQ(fim.hole, base + 2);
  EXPECT_EQ(fim.begin, base + 3);
  EXPECT_EQ(fim.end, base + 4);
  EXPECT_EQ(tok.encode("x", true).front(), tok.bos_id());
  EXPECT_EQ(tok.decode(ids, true), "some<｜User｜>text");  // User is not special
  // The chat template is DeepSeek-V3's; its role markers are one id each.
  EXPECT_EQ(tok.chat_template_name(), "deepseek_v3");
  const std::string chat = tok.apply_chat_template({{"user", "some"}}, true);
  EXPECT_EQ(chat, "<｜begin▁of▁sentence｜><｜User｜>some<｜Assistant｜>");
  EXPECT_EQ(tok.encode(chat).size(), 4u);
}

TEST(BpeTrainer, WritesDeepSeekV3Sections) {
  const auto v3 = nlohmann::json::parse(read_text(fixture("v3_pre_tokenizer.json")));
  // ordered_json compares key order too: compare as plain json.
  const auto plain = [](const nlohmann::ordered_json& j) {
    return nlohmann::json::parse(j.dump());
  };
  const auto sections = plain(BpeTrainer::deepseek_v3_pre_tokenizer());
  EXPECT_EQ(sections["pre_tokenizer"], v3["pre_tokenizer"]);
  EXPECT_EQ(sections["normalizer"], v3["normalizer"]);
  const auto templates = nlohmann::json::parse(read_text(fixture("chat_templates.json")));
  BpeTrainerOptions options;
  const TrainedTokenizer t = train_on({"abc abc"}, options);
  EXPECT_EQ(t.config["chat_template"], templates["templates"]["deepseek_v3"]);
  EXPECT_EQ(plain(t.tokenizer["pre_tokenizer"]), sections["pre_tokenizer"]);
  EXPECT_EQ(t.tokenizer["model"]["type"], "BPE");
  EXPECT_EQ(t.tokenizer["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(t.tokenizer["post_processor"]["special_tokens"]["<｜begin▁of▁sentence｜>"]["ids"][0],
            t.vocab_size - 7);
  EXPECT_EQ(t.config["bos_token"]["content"], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(t.config["eos_token"]["content"], "<｜end▁of▁sentence｜>");
  // transformers 5 would rebuild a LlamaTokenizerFast with Llama's own pre-tokenizer.
  EXPECT_EQ(t.config["tokenizer_class"], "PreTrainedTokenizerFast");
  // Without chat tokens and template: five added tokens, no template.
  options.chat_tokens.clear();
  options.chat_template.clear();
  const Tokenizer tok = load(train_on({"abc abc"}, options));
  EXPECT_EQ(tok.chat_template_name(), "");
  EXPECT_EQ(tok.vocab_size(), 256 + 2 + 5);  // "a b", "ab c" (in "abc" and " abc")
}

TEST(BpeTrainer, SameInputSameFiles) {
  BpeTrainerOptions options;
  options.vocab_size = 700;
  const std::string text = sample_corpus();
  const TrainedTokenizer a = train_on({text}, options);
  const TrainedTokenizer b = train_on({text}, options);
  EXPECT_EQ(a.tokenizer.dump(), b.tokenizer.dump());
  EXPECT_EQ(a.config.dump(), b.config.dump());
  // The same documents in another order: the same word counts, so the same files.
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line + "\n");
  const TrainedTokenizer c = train_on(lines, options);
  std::reverse(lines.begin(), lines.end());
  const TrainedTokenizer d = train_on(lines, options);
  EXPECT_EQ(c.tokenizer.dump(), d.tokenizer.dump());
}

TEST(BpeTrainer, BadOptionsAndEmptyCorpusAreClearErrors) {
  BpeTrainerOptions options;
  options.vocab_size = 260;
  expect_error([&] { BpeTrainer{options}; },
               "vocab_size 260 is too small: the 256 byte tokens and 7 added tokens need at "
               "least 263");
  options = {};
  options.min_frequency = 0;
  expect_error([&] { BpeTrainer{options}; }, "min_frequency 0");
  options = {};
  options.special_tokens.push_back("<｜User｜>");
  expect_error([&] { BpeTrainer{options}; }, "listed twice");
  options = {};
  options.bos_token = "<s>";
  expect_error([&] { BpeTrainer{options}; }, "bos_token \"<s>\" is not one of");
  options = {};
  options.pre_tokenizer = "/nonexistent/tokenizer.json";
  expect_error([&] { BpeTrainer{options}; }, "/nonexistent/tokenizer.json: cannot open");
  options = {};
  options.chat_template = "llama";
  expect_error([&] { BpeTrainer{options}; }, "chat_template 'llama'");

  BpeTrainer empty{BpeTrainerOptions{}};
  expect_error([&] { empty.train(); }, "the corpus is empty");
  empty.add_text("");
  empty.add_text("<｜end▁of▁sentence｜>");  // only an added token: still no words
  expect_error([&] { empty.train(); }, "the corpus is empty");
  expect_error([&] { empty.add_text("bad \xff byte"); }, "not valid UTF-8 at byte 4");
}

TEST(BpeTrainer, PreTokenizerFromATokenizerJson) {
  const std::string path =
      std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/deepseek-coder.tokenizer.json";
  if (!fs::exists(path)) GTEST_SKIP() << "shared tokenizers not present";
  BpeTrainerOptions options;
  options.pre_tokenizer = path;
  options.vocab_size = 500;
  const TrainedTokenizer t = train_on({sample_corpus()}, options);
  const auto coder = nlohmann::json::parse(read_text(path));
  EXPECT_EQ(nlohmann::json::parse(t.tokenizer["pre_tokenizer"].dump()), coder["pre_tokenizer"]);
  // Coder splits digits one by one: no merge of two digits.
  for (const std::string& m : merges_of(t)) EXPECT_NE(m, "1 2") << m;
  const Tokenizer tok = load(t);
  EXPECT_EQ(tok.decode(tok.encode("x = 12345;")), "x = 12345;");
}

TEST(BpeTrainer, CommandLineTrainsFortuneStyleFiles) {
  const fs::path dir = fs::temp_directory_path() / ("dseek-bpe-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "corpus");
  {
    std::ofstream out(dir / "corpus" / "fortunes", std::ios::binary);
    for (int i = 0; i < 40; ++i) {
      out << "A fortune number " << i << " says: look before you leap.\n%\n";
      out << "Another one: a penny saved is a penny earned.\n%\n";
    }
  }
  const std::string out_dir = (dir / "tok").string();
  const std::string cmd = std::string("\"") + DSEEK_BINARY + "\" tokenizer train --input \"" +
                          (dir / "corpus").string() + "\" --separator % --vocab-size 300 --out \"" +
                          out_dir + "\" > \"" + (dir / "log").string() + "\" 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_text((dir / "log").string());
  EXPECT_NE(read_text((dir / "log").string()).find("vocab size 300"), std::string::npos);
  const Tokenizer tok = Tokenizer::load(out_dir);  // directory: tokenizer_config.json included
  EXPECT_EQ(tok.vocab_size(), 300);
  EXPECT_EQ(tok.chat_template_name(), "deepseek_v3");
  EXPECT_EQ(tok.decode(tok.encode("a penny saved 🦀")), "a penny saved 🦀");
  // The separator lines are not text: "%" alone never became a word with its newline.
  EXPECT_FALSE(tok.token_to_id("%Ċ").has_value());
  EXPECT_FALSE(fs::exists(out_dir + "/tokenizer.json.tmp"));

  const std::string bad = std::string("\"") + DSEEK_BINARY + "\" tokenizer train --input \"" +
                          (dir / "corpus").string() + "\" --vocab-size 100 --out \"" + out_dir +
                          "x\" > \"" + (dir / "log").string() + "\" 2>&1";
  const int status = std::system(bad.c_str());
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(read_text((dir / "log").string()).find("vocab_size 100 is too small"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out_dir + "x"));
  fs::remove_all(dir);
}
