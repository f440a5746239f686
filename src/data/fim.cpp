#include "data/fim.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

FimTokens FimTokens::from_tokenizer(const Tokenizer& tokenizer) {
  auto lookup = [&](const char* token) {
    auto id = tokenizer.token_to_id(token);
    DSEEK_CHECK(id.has_value(), "[fim] the tokenizer has no '{}' token (FIM needs a DeepSeek-Coder tokenizer)",
                token);
    return *id;
  };
  FimTokens t;
  t.begin = lookup("<｜fim▁begin｜>");
  t.hole = lookup("<｜fim▁hole｜>");
  t.end = lookup("<｜fim▁end｜>");
  return t;
}

FimSplit fim_split(const std::string& document, Rng& rng) {
  std::vector<size_t> boundaries;  // byte offsets that start a character, plus the end
  for (size_t i = 0; i < document.size(); ++i) {
    if ((static_cast<unsigned char>(document[i]) & 0xc0) != 0x80) boundaries.push_back(i);
  }
  boundaries.push_back(document.size());
  size_t a = boundaries[size_t(rng.next_u64() % boundaries.size())];
  size_t b = boundaries[size_t(rng.next_u64() % boundaries.size())];
  if (a > b) std::swap(a, b);
  return {document.substr(0, a), document.substr(a, b - a), document.substr(b)};
}

std::vector<int32_t> fim_encode(const Tokenizer& tokenizer, const FimSplit& split, const FimTokens& tokens,
                                FimMode mode) {
  auto prefix = tokenizer.encode(split.prefix);
  auto middle = tokenizer.encode(split.middle);
  auto suffix = tokenizer.encode(split.suffix);
  std::vector<int32_t> out;
  out.reserve(prefix.size() + middle.size() + suffix.size() + 3);
  auto put = [&](const std::vector<int32_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); };
  if (mode == FimMode::PSM) {
    out.push_back(tokens.begin);
    put(prefix);
    out.push_back(tokens.hole);
    put(suffix);
  } else {
    out.push_back(tokens.hole);
    put(suffix);
    out.push_back(tokens.begin);
    put(prefix);
  }
  out.push_back(tokens.end);
  put(middle);
  return out;
}

}  // namespace dseek
