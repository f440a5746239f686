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

std::vector<int32_t> fim_prompt(const Tokenizer& tokenizer, const std::string& prefix,
                                const std::string& suffix, const FimTokens& tokens, FimMode mode,
                                bool add_bos) {
  const std::vector<int32_t> p = tokenizer.encode(prefix), s = tokenizer.encode(suffix);
  std::vector<int32_t> out;
  out.reserve(p.size() + s.size() + 4);
  if (add_bos) out.push_back(tokenizer.bos_id());
  auto put = [&](const std::vector<int32_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); };
  if (mode == FimMode::PSM) {
    out.push_back(tokens.begin);
    put(p);
    out.push_back(tokens.hole);
    put(s);
  } else {
    out.push_back(tokens.hole);
    put(s);
    out.push_back(tokens.begin);
    put(p);
  }
  out.push_back(tokens.end);
  return out;
}

std::vector<int32_t> fim_encode(const Tokenizer& tokenizer, const FimSplit& split, const FimTokens& tokens,
                                FimMode mode) {
  std::vector<int32_t> out = fim_prompt(tokenizer, split.prefix, split.suffix, tokens, mode);
  const std::vector<int32_t> middle = tokenizer.encode(split.middle);
  out.insert(out.end(), middle.begin(), middle.end());
  return out;
}

FimMode parse_fim_mode(const std::string& text) {
  if (text == "psm") return FimMode::PSM;
  if (text == "spm") return FimMode::SPM;
  fail("[fim] mode '{}' is not psm or spm", text);
}

}  // namespace dseek
