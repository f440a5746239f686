// dseek's tokenizer: byte-level BPE loaded from Hugging Face tokenizer.json that reproduces the
// `tokenizers` library exactly for DeepSeek tokenizers (DeepSeek LLM, Coder, V2, V3):
//   encode: added tokens are found in the raw text first, the rest is normalized (only no-op
//           normalizers are supported), pre-tokenized (Split regexes via PCRE2, Digits,
//           ByteLevel) and run through ranked BPE merges;
//   decode: ids -> tokens -> bytes (ByteLevel decoder) -> UTF-8 with U+FFFD for invalid bytes.
// A Tokenizer is cheap to copy: copies share one immutable state (and its thread-safe cache).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dseek {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (V2.5/V3 also "tool")
  std::string content;
};

struct TokenizerState;

class Tokenizer {
 public:
  // `file_or_dir`: a tokenizer.json, or a directory holding tokenizer.json and optionally
  // tokenizer_config.json (bos/eos tokens, chat_template) or chat_template.jinja.
  static Tokenizer load(const std::string& file_or_dir);
  // From the texts of tokenizer.json and tokenizer_config.json (`config_json` may be empty);
  // `source` names them in error messages.
  static Tokenizer from_json_text(std::string_view tokenizer_json, std::string_view config_json,
                                  const std::string& source);

  // Token ids of `text` (which must be valid UTF-8); BOS first only when `add_bos`.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const;
  // Text of `ids`; special added tokens are dropped when `skip_special`.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int32_t bos_id() const;      // throws when the tokenizer has no BOS token
  int32_t eos_id() const;      // throws when the tokenizer has no EOS token
  int64_t vocab_size() const;  // largest id + 1, added tokens included
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws for unknown ids
  bool is_special(int32_t id) const;

  // The bytes that token `id` stands for (before UTF-8 decoding); used by StreamDecoder.
  const std::string& token_bytes(int32_t id) const;

  // Renders a conversation with the chat format recognised from tokenizer_config.json's
  // chat_template (see chat_template_names()); throws if there is none or it is unrecognised.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) const;
  // The same with an explicitly named format (for tokenizers without a template).
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt, const std::string& format) const;
  // Name of the recognised chat format, "" when the tokenizer has no chat_template.
  std::string chat_template_name() const;
  static std::vector<std::string> chat_template_names();

 private:
  explicit Tokenizer(std::shared_ptr<const TokenizerState> state) : state_(std::move(state)) {}
  std::shared_ptr<const TokenizerState> state_;
};

// Incremental detokenization: push() returns the text that is complete so far (a multi-byte
// character split across tokens is held back until its last byte arrives); flush() returns what
// is left (an incomplete sequence becomes U+FFFD). The concatenation of all outputs equals
// Tokenizer::decode of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
};

}  // namespace dseek
