// Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention", 2023; the needle-in-a-haystack
// test of long-context papers such as DeepSeek-Coder-V2): a five-digit key hidden at a chosen
// depth in filler text of an exact token length, then a question whose answer is the key.
//
//   [filler ...] The pass key is 48213. Remember it. [filler ...] What is the pass key? The pass key is
//
// A model that can use its whole context copies the key; one whose positions break down beyond
// its training length cannot. Everything is built in token space from separately tokenized
// pieces (the filler cycles through its sentence's tokens, cut wherever the length ends), so a
// prompt is exactly `length` tokens and training documents and evaluation prompts are made the
// same way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace dseek {

class Tokenizer;

struct PasskeyPieces {
  std::vector<int32_t> filler;    // one cycle of the filler sentences
  std::vector<int32_t> question;  // " What is the pass key? The pass key is"
  // The needle " The pass key is <key>. Remember it." and the answer " <key>." for a key.
  std::vector<int32_t> needle(const Tokenizer& tokenizer, const std::string& key) const;
  std::vector<int32_t> answer(const Tokenizer& tokenizer, const std::string& key) const;
  static PasskeyPieces from_tokenizer(const Tokenizer& tokenizer);
};

struct PasskeySample {
  std::vector<int32_t> prompt;  // exactly the requested length
  std::vector<int32_t> answer;  // the tokens of " <key>." (what training documents continue with)
  std::string key;              // five digits, no leading zero
  int64_t needle_position = 0;  // token index where the needle starts
  double depth = 0.0;           // the requested depth in [0, 1]
};

// The fewest prompt tokens a sample can have (needle + question, no filler).
int64_t passkey_min_length(const Tokenizer& tokenizer, const PasskeyPieces& pieces);

// A prompt of `length` tokens with a random key whose needle starts after round(depth × filler)
// filler tokens. Throws "[passkey] ..." when length is below passkey_min_length or depth outside
// [0, 1].
PasskeySample make_passkey_sample(const Tokenizer& tokenizer, const PasskeyPieces& pieces,
                                  int64_t length, double depth, Rng& rng);

// The key a model answered: the digits at the start of its continuation (after spaces), e.g.
// " 48213. Rem" → "48213", " the key" → "".
std::string passkey_answer(const std::string& continuation);

}  // namespace dseek
