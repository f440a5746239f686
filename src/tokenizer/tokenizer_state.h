// The immutable state behind a Tokenizer (internal to src/tokenizer/).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pre_tokenizer.h"

namespace dseek {

struct TokenizerState {
  std::string source;         // file or directory, for messages
  std::string config_source;  // tokenizer_config.json path, for messages
  BpeModel model;
  PreTokenizer pre_tokenizer;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized = false
  AddedTokenMatcher normalized_matcher;  // added tokens with normalized = true
  std::vector<std::string> tokens;       // per id: token string ("" where no token)
  std::vector<std::string> bytes;        // per id: bytes it decodes to
  std::vector<uint8_t> known;            // per id: 1 where a token exists
  std::vector<uint8_t> special;          // per id: 1 for special added tokens
  std::optional<int32_t> bos, eos;
  std::string bos_token, eos_token;  // strings for chat templates
  std::string chat_template;         // as found in the config ("" if none)
  ChatFormat chat_format = ChatFormat::kNone;
};

}  // namespace dseek
