// Fill-in-the-middle (FIM) transform for code, as DeepSeek-Coder trains it: a document is cut at
// two random character positions into prefix, middle and suffix, and re-ordered so the model
// learns to write the middle from both sides. Coder's sentinel tokens:
//   <｜fim▁begin｜> marks the prefix, <｜fim▁hole｜> the hole (suffix follows), <｜fim▁end｜>
//   the end of the context (the middle follows).
//   PSM: <fim_begin> prefix <fim_hole> suffix <fim_end> middle
//   SPM: <fim_hole> suffix <fim_begin> prefix <fim_end> middle
// Cut points fall on UTF-8 character boundaries; each piece is tokenized on its own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace dseek {

class Tokenizer;

struct FimOptions {
  double rate = 0.0;      // fraction of documents transformed
  double spm_rate = 0.0;  // of those, the fraction in SPM order (the rest PSM)
};

struct FimTokens {
  int32_t begin = -1, hole = -1, end = -1;
  // Looks the sentinels up in the tokenizer; throws naming the missing token.
  static FimTokens from_tokenizer(const Tokenizer& tokenizer);
};

enum class FimMode { PSM, SPM };

struct FimSplit {
  std::string prefix, middle, suffix;
};

// Two cut points drawn uniformly over character boundaries (ordered), from `rng`.
FimSplit fim_split(const std::string& document, Rng& rng);
std::vector<int32_t> fim_encode(const Tokenizer& tokenizer, const FimSplit& split, const FimTokens& tokens,
                                FimMode mode);

}  // namespace dseek
