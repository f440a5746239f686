#include "data/passkey.h"

#include <cmath>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

namespace {

// The filler of Mohtashami & Jaggi's passkey test.
constexpr const char* kFiller =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr const char* kQuestion = " What is the pass key? The pass key is";

void append(std::vector<int32_t>& out, const std::vector<int32_t>& ids) {
  out.insert(out.end(), ids.begin(), ids.end());
}

// `count` filler tokens, continuing the cycle at `phase`.
void append_filler(std::vector<int32_t>& out, const std::vector<int32_t>& filler, int64_t count,
                   int64_t phase) {
  for (int64_t i = 0; i < count; ++i) out.push_back(filler[size_t((phase + i) % int64_t(filler.size()))]);
}

}  // namespace

PasskeyPieces PasskeyPieces::from_tokenizer(const Tokenizer& tokenizer) {
  PasskeyPieces p;
  p.filler = tokenizer.encode(kFiller);
  p.question = tokenizer.encode(kQuestion);
  DSEEK_CHECK(!p.filler.empty() && !p.question.empty(), "[passkey] the tokenizer encodes the filler to nothing");
  return p;
}

std::vector<int32_t> PasskeyPieces::needle(const Tokenizer& tokenizer, const std::string& key) const {
  return tokenizer.encode(" The pass key is " + key + ". Remember it.");
}

std::vector<int32_t> PasskeyPieces::answer(const Tokenizer& tokenizer, const std::string& key) const {
  return tokenizer.encode(" " + key + ".");
}

int64_t passkey_min_length(const Tokenizer& tokenizer, const PasskeyPieces& pieces) {
  // Keys of five digits may tokenize to different lengths; the longest needle bounds them all.
  size_t needle = 0;
  for (const char* key : {"10000", "99999", "48213", "77777", "12345"})
    needle = std::max(needle, pieces.needle(tokenizer, key).size());
  return int64_t(needle + pieces.question.size());
}

PasskeySample make_passkey_sample(const Tokenizer& tokenizer, const PasskeyPieces& pieces,
                                  int64_t length, double depth, Rng& rng) {
  DSEEK_CHECK(depth >= 0 && depth <= 1, "[passkey] depth {} is outside [0, 1]", depth);
  PasskeySample s;
  s.depth = depth;
  s.key = std::to_string(10000 + rng.next_u64() % 90000);
  const std::vector<int32_t> needle = pieces.needle(tokenizer, s.key);
  const int64_t filler = length - int64_t(needle.size() + pieces.question.size());
  DSEEK_CHECK(filler >= 0,
              "[passkey] length {} is too short: the needle and the question alone take {} tokens",
              length, needle.size() + pieces.question.size());
  const int64_t before = std::llround(depth * double(filler));
  s.prompt.reserve(size_t(length));
  append_filler(s.prompt, pieces.filler, before, 0);
  s.needle_position = before;
  append(s.prompt, needle);
  append_filler(s.prompt, pieces.filler, filler - before, before);
  append(s.prompt, pieces.question);
  s.answer = pieces.answer(tokenizer, s.key);
  return s;
}

std::string passkey_answer(const std::string& continuation) {
  size_t i = continuation.find_first_not_of(" \t\n");
  if (i == std::string::npos) return "";
  size_t j = i;
  while (j < continuation.size() && continuation[j] >= '0' && continuation[j] <= '9') ++j;
  return continuation.substr(i, j - i);
}

}  // namespace dseek
