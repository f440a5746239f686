// Chat conversations → token ids with a loss mask, for supervised fine-tuning and DPO.
//
// The conversation is rendered with the tokenizer's chat template (tokenizer/chat_template.h) and
// tokenised once as a whole. The tokens trained on are those of each assistant turn: the text
// that rendering messages[0..i] adds to rendering messages[0..i) with the generation prompt
// (the assistant's content and its end-of-turn token, e.g. " answer<｜end▁of▁sentence｜>" after
// "Assistant:"), mapped to tokens by byte offsets, a token counting when it overlaps that text:
// what transformers' return_assistant_tokens_mask and TRL compute. System and user turns and the
// role headers are never trained on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace dseek {

struct MaskedTokens {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> trained;  // 1 where token i is a label the loss counts
};

// How conversations become text: the tokenizer's own chat template, or a named format
// (chat_format_names()) for a tokenizer without one.
class ChatRenderer {
 public:
  ChatRenderer(Tokenizer tokenizer, std::string format_name = "");

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Every assistant turn trained (SFT).
  MaskedTokens sft_example(const std::vector<ChatMessage>& messages, const std::string& where) const;
  // prompt + one assistant response; only the response trained (DPO).
  MaskedTokens response_example(const std::vector<ChatMessage>& prompt, const std::string& response,
                                const std::string& where) const;
  const Tokenizer& tokenizer() const { return tokenizer_; }
  std::string format_name() const;

 private:
  // Tokens of `text` and a mask of those overlapping the byte ranges [begin, end).
  MaskedTokens tokenize(const std::string& text,
                        const std::vector<std::pair<size_t, size_t>>& spans,
                        const std::string& where) const;

  Tokenizer tokenizer_;
  std::string format_;  // "" → the tokenizer's template
};

// Messages of a JSON array [{"role": ..., "content": ...}, ...]; errors say
// "<where>: <field>[i].role: ..." (where = "file:line").
std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& value, const std::string& where,
                                             const std::string& field);

}  // namespace dseek
