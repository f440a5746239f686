// Training a byte-level BPE tokenizer on a corpus, in the format of DeepSeek-V3's tokenizer.json,
// so that a tiny model trained on a small corpus gets a small vocabulary of its own.
//
//   1. Words: each document is split as the runtime Tokenizer will split it (added tokens first,
//      then the pre-tokenizer's Split regexes, DeepSeek-V3's by default), and the distinct pieces
//      are counted. Only this word-count map is kept, never the text.
//   2. Merges: every word starts as its bytes (symbols 0..255, in the order of GPT-2's
//      bytes_to_unicode characters: "!" first). The most frequent adjacent pair of symbols over all
//      words (weighted by word count) becomes a new symbol, until the vocabulary is full or no pair
//      occurs `min_frequency` times. Ties go to the smallest (left id, right id), so the result is
//      a function of the word counts alone. Pair counts are updated incrementally: a merge only
//      rewrites the words that hold the pair (an index from pair to words), and a max-heap with
//      lazily corrected counts finds the next pair.
//   3. Output: an HF tokenizer.json (model.type "BPE"; vocab = 256 byte symbols, then one token
//      per merge; added tokens after them, special ones with "special": true; V3's normalizer,
//      pre_tokenizer, post_processor (BOS first) and ByteLevel decoder), and a
//      tokenizer_config.json (bos/eos tokens, DeepSeek-V3's chat template, and
//      PreTrainedTokenizerFast as the class so transformers uses tokenizer.json unchanged).
//
// Because the runtime merges a piece by rank and every merge was learned on pieces of the same
// pre-tokenizer, encoding a training word with the result gives exactly the symbols training
// ended with; text never seen in training still round-trips, through the byte symbols.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/pre_tokenizer.h"

namespace dseek {

struct BpeTrainerOptions {
  // Total ids: 256 byte symbols + merges + added tokens (special_tokens and chat_tokens).
  int64_t vocab_size = 4096;
  // A pair that occurs fewer times than this over the corpus is never merged.
  int64_t min_frequency = 2;
  // Added tokens with "special": true, in id order after the merges. DeepSeek's spellings
  // (fullwidth bars U+FF5C, U+2581 for spaces); the first two are BOS and EOS.
  std::vector<std::string> special_tokens = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                             "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"};
  // Added tokens with "special": false (as in DeepSeek-V3): the role markers of the chat template,
  // so a chat turn costs one id each rather than a dozen bytes.
  std::vector<std::string> chat_tokens = {"<｜User｜>", "<｜Assistant｜>"};
  std::string bos_token = "<｜begin▁of▁sentence｜>";  // must be one of the added tokens, or ""
  std::string eos_token = "<｜end▁of▁sentence｜>";    // must be one of the added tokens, or ""
  // "deepseek_v3", or the path of a tokenizer.json whose normalizer and pre_tokenizer to copy.
  std::string pre_tokenizer = "deepseek_v3";
  // Chat template written to tokenizer_config.json: "deepseek_v3" or "" for none.
  std::string chat_template = "deepseek_v3";
};

struct TrainedTokenizer {
  // Key order as Hugging Face writes them (vocab by id), hence ordered_json.
  nlohmann::ordered_json tokenizer;  // tokenizer.json
  nlohmann::ordered_json config;     // tokenizer_config.json
  int64_t merges = 0;                // merges learned (fewer than asked if pairs ran out)
  int64_t vocab_size = 0;            // ids in the result, added tokens included
  // The counted corpus (added tokens left out) in bytes and in tokens of the result.
  int64_t corpus_bytes = 0, corpus_tokens = 0;
};

class BpeTrainer {
 public:
  // Checks the options (vocab_size >= 256 + added tokens, distinct non-empty added tokens, a
  // known pre-tokenizer); throws dseek::Error naming the option at fault.
  explicit BpeTrainer(BpeTrainerOptions options);

  // Counts the words of `text` (a document, or a piece of one cut after a newline). Must be valid
  // UTF-8; added tokens in it are skipped, as the runtime tokenizer does not BPE them.
  void add_text(std::string_view text);

  int64_t distinct_words() const { return int64_t(word_counts_.size()); }
  int64_t total_words() const { return total_words_; }

  // Learns the merges and builds the files. Throws when no words were added. Shows progress on
  // stderr when `show_progress`.
  TrainedTokenizer train(bool show_progress = false) const;

  // The "normalizer" and "pre_tokenizer" sections of DeepSeek-V3's tokenizer.json.
  static nlohmann::ordered_json deepseek_v3_pre_tokenizer();

 private:
  BpeTrainerOptions options_;
  nlohmann::ordered_json normalizer_, pre_tokenizer_json_;
  PreTokenizer pre_tokenizer_;
  AddedTokenMatcher added_;
  // Piece bytes -> occurrences; looked up by string_view (no string built for a known piece).
  struct WordHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::unordered_map<std::string, int64_t, WordHash, std::equal_to<>> word_counts_;
  int64_t total_words_ = 0;
};

}  // namespace dseek
