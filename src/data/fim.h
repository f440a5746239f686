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
// The training document: fim_prompt(prefix, suffix) followed by the middle's tokens.
std::vector<int32_t> fim_encode(const Tokenizer& tokenizer, const FimSplit& split, const FimTokens& tokens,
                                FimMode mode);

// The context a model infills from, as at inference (`dseek generate --fim-prefix/--fim-suffix`):
//   PSM: <fim_begin> prefix <fim_hole> suffix <fim_end>     SPM: <fim_hole> suffix <fim_begin> prefix <fim_end>
// The model then writes the middle and EOS. DeepSeek-Coder's README builds the PSM string and
// tokenizes it with the BOS the tokenizer adds, which `add_bos` reproduces; the sentinels split the
// text before pre-tokenization, so tokenizing the pieces apart gives the same ids.
std::vector<int32_t> fim_prompt(const Tokenizer& tokenizer, const std::string& prefix,
                                const std::string& suffix, const FimTokens& tokens, FimMode mode,
                                bool add_bos = false);

// "psm" or "spm"; anything else throws "[fim] mode 'x' is not psm or spm".
FimMode parse_fim_mode(const std::string& text);

}  // namespace dseek
