#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <deque>
#include <fstream>
#include <optional>
#include <queue>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/progress.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

// DeepSeek-V3's tokenizer.json: normalizer and pre_tokenizer (as in
// tests/fixtures/tokenizer/v3_pre_tokenizer.json): digits in groups of up to three, runs of CJK
// ideographs and kana, then a GPT-style word / punctuation / whitespace split; ByteLevel without
// its own regex.
constexpr std::string_view kDeepSeekV3PreTokenizer =
    R"JSON({
  "normalizer": {"type": "Sequence", "normalizers": []},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated",
     "invert": false},
    {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated",
     "invert": false},
    {"type": "Split",
     "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|)JSON"
    R"JSON([^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|)JSON"
    R"JSON(\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
  ]}
})JSON";

// DeepSeek-V3's chat_template (tokenizer_config.json), recognised as "deepseek_v3" by
// recognise_chat_template.
constexpr std::string_view kDeepSeekV3ChatTemplate =
    R"TPL({% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %})TPL"
    R"TPL({% endif %})TPL"
    R"TPL({% set ns = namespace(is_first=false, is_tool=false, is_output_first=true,)TPL"
    R"TPL( system_prompt='', is_first_sp=true) %}{%- for message in messages %})TPL"
    R"TPL({%- if message['role'] == 'system' %}{%- if ns.is_first_sp %})TPL"
    R"TPL({% set ns.system_prompt = ns.system_prompt + message['content'] %})TPL"
    R"TPL({% set ns.is_first_sp = false %}{%- else %})TPL"
    R"TPL({% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %})TPL"
    R"TPL({%- endif %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}})TPL"
    R"TPL({%- for message in messages %}{%- if message['role'] == 'user' %})TPL"
    R"TPL({%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %})TPL"
    R"TPL({%- if message['role'] == 'assistant' and message['content'] is none %})TPL"
    R"TPL({%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%})TPL"
    R"TPL({%- if not ns.is_first %})TPL"
    R"TPL({{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] +)TPL"
    R"TPL( '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' +)TPL"
    R"TPL( tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}})TPL"
    R"TPL({%- set ns.is_first = true -%}{%- else %})TPL"
    R"TPL({{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' +)TPL"
    R"TPL( tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'])TPL"
    R"TPL( + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}})TPL"
    R"TPL({%- endif %}{%- endfor %}{%- endif %})TPL"
    R"TPL({%- if message['role'] == 'assistant' and message['content'] is not none %})TPL"
    R"TPL({%- if ns.is_tool %})TPL"
    R"TPL({{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}})TPL"
    R"TPL({%- set ns.is_tool = false -%}{%- else %})TPL"
    R"TPL({{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %})TPL"
    R"TPL({%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%})TPL"
    R"TPL({%- if ns.is_output_first %})TPL"
    R"TPL({{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] +)TPL"
    R"TPL( '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %})TPL"
    R"TPL({{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}})TPL"
    R"TPL({%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}})TPL"
    R"TPL({% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}})TPL"
    R"TPL({% endif %})TPL";

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}
int32_t pair_left(uint64_t key) {
  return int32_t(key >> 32);
}
int32_t pair_right(uint64_t key) {
  return int32_t(key & 0xffffffffu);
}

// A distinct pre-tokenized piece as a sequence of symbol ids, and how often it occurs.
struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

// Heap entry: the most frequent pair on top, ties to the smallest key (left id, then right id).
struct Candidate {
  int64_t count;
  uint64_t pair;
  bool operator<(const Candidate& o) const {
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[bpe-trainer] {}: cannot open", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::ordered_json added_token_json(int64_t id, const std::string& content, bool special) {
  nlohmann::ordered_json t;
  t["id"] = id;
  t["content"] = content;
  t["single_word"] = false;
  t["lstrip"] = false;
  t["rstrip"] = false;
  t["normalized"] = !special;
  t["special"] = special;
  return t;
}

nlohmann::ordered_json config_token(const std::string& content) {
  if (content.empty()) return nullptr;
  nlohmann::ordered_json t;
  t["__type"] = "AddedToken";
  t["content"] = content;
  t["lstrip"] = false;
  t["normalized"] = false;
  t["rstrip"] = false;
  t["single_word"] = false;
  return t;
}

}  // namespace

nlohmann::ordered_json BpeTrainer::deepseek_v3_pre_tokenizer() {
  return nlohmann::ordered_json::parse(kDeepSeekV3PreTokenizer);
}

BpeTrainer::BpeTrainer(BpeTrainerOptions options) : options_(std::move(options)) {
  const BpeTrainerOptions& o = options_;
  std::vector<std::string> added = o.special_tokens;
  added.insert(added.end(), o.chat_tokens.begin(), o.chat_tokens.end());
  std::set<std::string> seen;
  for (const std::string& token : added) {
    DSEEK_CHECK(!token.empty(), "[bpe-trainer] special_tokens/chat_tokens: empty token");
    DSEEK_CHECK(!utf8::first_invalid(token), "[bpe-trainer] added token {:?}: invalid UTF-8",
                token);
    DSEEK_CHECK(seen.insert(token).second, "[bpe-trainer] added token {:?} is listed twice", token);
  }
  const int64_t minimum = 256 + int64_t(added.size());
  DSEEK_CHECK(o.vocab_size >= minimum,
              "[bpe-trainer] vocab_size {} is too small: the 256 byte tokens and {} added tokens "
              "need at least {}",
              o.vocab_size, added.size(), minimum);
  DSEEK_CHECK(o.vocab_size <= (int64_t(1) << 30), "[bpe-trainer] vocab_size {} is too large",
              o.vocab_size);
  DSEEK_CHECK(o.min_frequency >= 1, "[bpe-trainer] min_frequency {} must be at least 1",
              o.min_frequency);
  for (const auto& [name, token] :
       {std::pair{"bos_token", &o.bos_token}, std::pair{"eos_token", &o.eos_token}}) {
    DSEEK_CHECK(token->empty() || seen.count(*token),
                "[bpe-trainer] {} {:?} is not one of the special or chat tokens", name, *token);
  }
  DSEEK_CHECK(o.chat_template.empty() || o.chat_template == "deepseek_v3",
              "[bpe-trainer] chat_template '{}': only \"deepseek_v3\" (or none) can be written",
              o.chat_template);

  nlohmann::ordered_json sections;
  std::string where;
  if (o.pre_tokenizer == "deepseek_v3") {
    sections = deepseek_v3_pre_tokenizer();
    where = "deepseek_v3 pre-tokenizer";
  } else {
    where = o.pre_tokenizer;
    try {
      sections = nlohmann::ordered_json::parse(read_file(o.pre_tokenizer));
    } catch (const nlohmann::json::exception& e) {
      fail("[bpe-trainer] {}: invalid JSON: {}", where, e.what());
    }
    DSEEK_CHECK(sections.is_object() && sections.contains("pre_tokenizer"),
                "[bpe-trainer] {}: no pre_tokenizer (pre_tokenizer must be \"deepseek_v3\" or a "
                "tokenizer.json)",
                where);
  }
  normalizer_ = sections.value("normalizer", nlohmann::ordered_json());
  pre_tokenizer_json_ = sections["pre_tokenizer"];
  DSEEK_CHECK(normalizer_.is_null() ||
                  (normalizer_.value("type", "") == "Sequence" &&
                   normalizer_.value("normalizers", nlohmann::ordered_json::array()).empty()),
              "[bpe-trainer] {}: normalizer: only an empty one is supported", where);
  pre_tokenizer_ =
      PreTokenizer::from_json(nlohmann::json::parse(pre_tokenizer_json_.dump()), where);
  DSEEK_CHECK(pre_tokenizer_.byte_level(),
              "[bpe-trainer] {}: pre_tokenizer must end with ByteLevel (byte-level BPE)", where);

  std::vector<AddedToken> matcher_tokens;
  for (size_t i = 0; i < added.size(); ++i) {
    AddedToken t;
    t.id = int32_t(i);
    t.content = added[i];
    matcher_tokens.push_back(std::move(t));
  }
  added_ = AddedTokenMatcher(std::move(matcher_tokens));
}

void BpeTrainer::add_text(std::string_view text) {
  if (const auto bad = utf8::first_invalid(text)) {
    fail("[bpe-trainer] input is not valid UTF-8 at byte {}", *bad);
  }
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  for (const Segment& segment : added_.split(text)) {
    if (segment.id >= 0) continue;  // an added token: one id at runtime, never merged
    pieces.clear();
    arena.clear();
    pre_tokenizer_.split(text.substr(segment.begin, segment.end - segment.begin), arena, pieces);
    for (const std::string_view piece : pieces) {
      if (piece.empty()) continue;
      // Most pieces are already counted: look up without building a string first.
      const auto it = word_counts_.find(piece);
      if (it != word_counts_.end()) {
        ++it->second;
      } else {
        word_counts_.emplace(std::string(piece), 1);
      }
      ++total_words_;
    }
  }
}

TrainedTokenizer BpeTrainer::train(bool show_progress) const {
  const BpeTrainerOptions& o = options_;
  DSEEK_CHECK(!word_counts_.empty(),
              "[bpe-trainer] the corpus is empty: no text to learn merges from");

  // Byte symbols: id = rank of the byte's GPT-2 character (bytes_to_unicode maps printable
  // bytes to themselves and the rest to U+0100.., so code point order puts "!" first).
  std::vector<std::string> tokens;  // per id
  int32_t byte_id[256];
  {
    std::vector<std::pair<char32_t, int>> order;
    for (int b = 0; b < 256; ++b) order.emplace_back(utf8::byte_to_char(uint8_t(b)), b);
    std::sort(order.begin(), order.end());
    for (const auto& [cp, b] : order) {
      byte_id[b] = int32_t(tokens.size());
      std::string symbol;
      utf8::append(symbol, cp);
      tokens.push_back(std::move(symbol));
    }
  }

  // Words in byte order, so every later step is independent of the hash map's order.
  std::vector<std::pair<std::string_view, int64_t>> sorted;
  sorted.reserve(word_counts_.size());
  for (const auto& [word, count] : word_counts_) sorted.emplace_back(word, count);
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [text, count] : sorted) {
    Word w;
    w.count = count;
    w.symbols.reserve(text.size());
    for (const char c : text) w.symbols.push_back(byte_id[uint8_t(c)]);
    words.push_back(std::move(w));
  }

  // Pair counts and, for each pair, the words that hold it (each word once).
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_counts[key] += words[w].count;
      auto& list = pair_words[key];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  std::priority_queue<Candidate> queue;
  for (const auto& [key, count] : pair_counts) queue.push({count, key});

  const int64_t added_count = int64_t(o.special_tokens.size() + o.chat_tokens.size());
  const int64_t token_limit = o.vocab_size - added_count;  // bytes + merged tokens
  std::unordered_map<std::string, int32_t> token_ids;
  for (size_t id = 0; id < tokens.size(); ++id) token_ids.emplace(tokens[id], int32_t(id));
  std::vector<std::pair<int32_t, int32_t>> merges;

  std::optional<Progress> progress;
  if (show_progress) progress.emplace("learning merges", token_limit - 256, "tokens");
  std::vector<uint64_t> new_pairs;
  while (int64_t(tokens.size()) < token_limit && !queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const auto found = pair_counts.find(top.pair);
    const int64_t actual = found == pair_counts.end() ? 0 : found->second;
    if (actual != top.count) {  // stale entry: queue the pair again with its true count
      if (actual > 0) queue.push({actual, top.pair});
      continue;
    }
    if (top.count < o.min_frequency) break;
    const int32_t left = pair_left(top.pair), right = pair_right(top.pair);
    // Two merges can spell the same token ("a"+"bc", "ab"+"c"): they share its id, as in HF's
    // trainer (tokenizer.json's vocab maps each string to one id).
    const std::string merged = tokens[size_t(left)] + tokens[size_t(right)];
    int32_t new_id;
    if (const auto it = token_ids.find(merged); it != token_ids.end()) {
      new_id = it->second;
    } else {
      new_id = int32_t(tokens.size());
      tokens.push_back(merged);
      token_ids.emplace(merged, new_id);
      if (progress) progress->add(1);
    }
    merges.emplace_back(left, right);

    // Rewrite the words holding the pair: their old pairs leave the counts, their new ones enter.
    const std::vector<int32_t> holders = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    new_pairs.clear();
    for (const int32_t w : holders) {
      Word& word = words[size_t(w)];
      auto& s = word.symbols;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        pair_counts[pair_key(s[i], s[i + 1])] -= word.count;
      }
      size_t out = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          s[out++] = new_id;
          ++i;
        } else {
          s[out++] = s[i];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t key = pair_key(s[i], s[i + 1]);
        pair_counts[key] += word.count;
        if (s[i] == new_id || s[i + 1] == new_id) {
          // A pair with the new symbol; also holds for a reused id, whose older pairs are in the
          // queue already (their counts can grow here, so they are queued again below).
          auto& list = pair_words[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          new_pairs.push_back(key);
        }
      }
    }
    pair_counts.erase(top.pair);
    std::sort(new_pairs.begin(), new_pairs.end());
    new_pairs.erase(std::unique(new_pairs.begin(), new_pairs.end()), new_pairs.end());
    for (const uint64_t key : new_pairs) queue.push({pair_counts[key], key});
  }
  if (progress) progress->finish();
  TrainedTokenizer result;
  for (size_t w = 0; w < words.size(); ++w) {
    result.corpus_bytes += int64_t(sorted[w].first.size()) * words[w].count;
    result.corpus_tokens += int64_t(words[w].symbols.size()) * words[w].count;
  }

  // tokenizer.json
  result.merges = int64_t(merges.size());
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = int64_t(id);
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const auto& [l, r] : merges)
    merge_list.push_back(tokens[size_t(l)] + " " + tokens[size_t(r)]);

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  int64_t next_id = int64_t(tokens.size());
  std::unordered_map<std::string, int64_t> added_ids;
  for (const std::string& t : o.special_tokens) {
    added_ids[t] = next_id;
    added.push_back(added_token_json(next_id++, t, true));
  }
  for (const std::string& t : o.chat_tokens) {
    added_ids[t] = next_id;
    added.push_back(added_token_json(next_id++, t, false));
  }
  result.vocab_size = next_id;

  nlohmann::ordered_json& doc = result.tokenizer;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  doc["added_tokens"] = std::move(added);
  doc["normalizer"] = normalizer_;
  doc["pre_tokenizer"] = pre_tokenizer_json_;
  if (o.bos_token.empty()) {
    doc["post_processor"] = nullptr;
  } else {
    // DeepSeek-V3's: BOS before each sequence (tokenizers' add_special_tokens=True).
    const nlohmann::ordered_json bos_item = {
        {"SpecialToken", {{"id", o.bos_token}, {"type_id", 0}}}};
    const nlohmann::ordered_json bos_item_b = {
        {"SpecialToken", {{"id", o.bos_token}, {"type_id", 1}}}};
    nlohmann::ordered_json pp;
    pp["type"] = "TemplateProcessing";
    pp["single"] = {bos_item, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}};
    pp["pair"] = {bos_item,
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  bos_item_b,
                  {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}};
    nlohmann::ordered_json special;
    special["id"] = o.bos_token;
    special["ids"] = {added_ids.at(o.bos_token)};
    special["tokens"] = {o.bos_token};
    pp["special_tokens"][o.bos_token] = std::move(special);
    doc["post_processor"] = std::move(pp);
  }
  doc["decoder"] = {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}};
  nlohmann::ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merge_list);
  doc["model"] = std::move(model);

  // tokenizer_config.json, as DeepSeek-V3's except for the class: V3 names LlamaTokenizerFast,
  // which transformers 5 rebuilds with Llama's own pre-tokenizer (checked with 5.17: different
  // ids, spaces lost in decode); PreTrainedTokenizerFast uses tokenizer.json as it is.
  nlohmann::ordered_json& config = result.config;
  config["add_bos_token"] = !o.bos_token.empty();
  config["add_eos_token"] = false;
  config["bos_token"] = config_token(o.bos_token);
  config["clean_up_tokenization_spaces"] = false;
  config["eos_token"] = config_token(o.eos_token);
  config["pad_token"] = config_token(o.eos_token);
  config["unk_token"] = nullptr;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  if (!o.chat_template.empty()) config["chat_template"] = std::string(kDeepSeekV3ChatTemplate);
  return result;
}

}  // namespace dseek
