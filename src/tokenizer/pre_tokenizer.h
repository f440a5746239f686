// Pre-tokenization of tokenizer.json: a Sequence of Split (regex or string, any behaviour), Digits
// and a final ByteLevel. Pieces are byte ranges of the input; ByteLevel's character mapping is
// applied later, by the BPE model, one byte per initial symbol.
#pragma once

#include <deque>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace dseek {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitStep {
  Regex regex;
  SplitBehavior behavior;
  bool invert;
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  // `json` is the "pre_tokenizer" field (null allowed); `where` names the file for errors.
  static PreTokenizer from_json(const nlohmann::json& json, const std::string& where);

  // Splits `text` into pieces (views into `text`, or into `arena` for pieces that received
  // ByteLevel's prefix space); appends them to `out`.
  void split(std::string_view text, std::deque<std::string>& arena,
             std::vector<std::string_view>& out) const;

  bool byte_level() const { return byte_level_; }

 private:
  void add(const nlohmann::json& json, const std::string& field, const std::string& where,
           bool last);

  std::vector<SplitStep> steps_;  // before ByteLevel
  bool byte_level_ = false;
  bool add_prefix_space_ = false;
  std::vector<SplitStep> byte_level_steps_;  // ByteLevel's own regex (use_regex)
};

// One Split step applied to one piece, as tokenizers' NormalizedString::split does.
void split_piece(const SplitStep& step, std::string_view piece, std::vector<std::string_view>& out);

}  // namespace dseek
