// Added tokens of tokenizer.json and the way Hugging Face tokenizers finds them in raw text before
// pre-tokenization: leftmost-longest matching over all contents (aho-corasick LeftmostLongest),
// then the single_word / lstrip / rstrip rules of AddedVocabulary::find_matches.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dseek {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A span of the text: either an added token (id >= 0) or text still to be tokenized (id -1).
struct Segment {
  size_t begin, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Splits `text` into added-token and plain segments, covering it in order.
  std::vector<Segment> split(std::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                 // index into tokens_
  };
  int32_t child(int32_t node, uint8_t byte) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

}  // namespace dseek
