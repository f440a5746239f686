#include "data/chat_example.h"

#include "core/error.h"

namespace dseek {

ChatRenderer::ChatRenderer(Tokenizer tokenizer, std::string format_name)
    : tokenizer_(std::move(tokenizer)), format_(std::move(format_name)) {
  if (format_.empty())
    DSEEK_CHECK(!tokenizer_.chat_template_name().empty(),
                "[data] the tokenizer has no chat_template in tokenizer_config.json: name a chat "
                "format ({})",
                fmt::join(Tokenizer::chat_template_names(), ", "));
}

std::string ChatRenderer::format_name() const {
  return format_.empty() ? tokenizer_.chat_template_name() : format_;
}

std::string ChatRenderer::render(const std::vector<ChatMessage>& messages, bool gen) const {
  return format_.empty() ? tokenizer_.apply_chat_template(messages, gen)
                         : tokenizer_.apply_chat_template(messages, gen, format_);
}

MaskedTokens ChatRenderer::tokenize(const std::string& text,
                                    const std::vector<std::pair<size_t, size_t>>& spans,
                                    const std::string& where) const {
  MaskedTokens out;
  out.tokens = tokenizer_.encode(text);
  out.trained.assign(out.tokens.size(), 0);
  // Byte-level BPE without normalisation: the tokens' bytes concatenate to the text, which gives
  // every token its byte range.
  size_t offset = 0;
  for (size_t i = 0; i < out.tokens.size(); ++i) {
    const size_t begin = offset;
    offset += tokenizer_.token_bytes(out.tokens[i]).size();
    for (const auto& [a, b] : spans)
      if (begin < b && offset > a) out.trained[i] = 1;
  }
  DSEEK_CHECK(offset == text.size(),
              "[data] {}: the tokens of the rendered chat cover {} bytes of its {} (a tokenizer "
              "that normalises text cannot map the assistant turns to tokens)",
              where, offset, text.size());
  return out;
}

MaskedTokens ChatRenderer::sft_example(const std::vector<ChatMessage>& messages,
                                       const std::string& where) const {
  const std::string full = render(messages, false);
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    const std::vector<ChatMessage> before(messages.begin(), messages.begin() + long(i));
    const std::vector<ChatMessage> through(messages.begin(), messages.begin() + long(i) + 1);
    const std::string prompt = render(before, true);
    const std::string turn = render(through, false);
    // The spans are byte ranges of `full`, so each partial render must be a prefix of it (true
    // for DeepSeek's formats; a template that rewrites earlier turns would break the mask).
    DSEEK_CHECK(full.compare(0, turn.size(), turn) == 0 && turn.compare(0, prompt.size(), prompt) == 0,
                "[data] {}: messages[{}]: the chat format '{}' does not render the conversation "
                "up to this turn as a prefix of the whole, so its tokens cannot be masked",
                where, i, format_name());
    spans.emplace_back(prompt.size(), turn.size());
  }
  DSEEK_CHECK(!spans.empty(), "[data] {}: messages: no assistant message to train on", where);
  return tokenize(full, spans, where);
}

MaskedTokens ChatRenderer::response_example(const std::vector<ChatMessage>& prompt,
                                            const std::string& response,
                                            const std::string& where) const {
  std::vector<ChatMessage> all = prompt;
  all.push_back({"assistant", response});
  const std::string head = render(prompt, true);
  const std::string full = render(all, false);
  DSEEK_CHECK(full.compare(0, head.size(), head) == 0,
              "[data] {}: the chat format '{}' does not render the prompt as a prefix of prompt + "
              "response",
              where, format_name());
  return tokenize(full, {{head.size(), full.size()}}, where);
}

std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& value, const std::string& where,
                                             const std::string& field) {
  DSEEK_CHECK(value.is_array(), "[data] {}: {}: expected an array of messages, got {}", where,
              field, value.type_name());
  DSEEK_CHECK(!value.empty(), "[data] {}: {}: no messages", where, field);
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < value.size(); ++i) {
    const nlohmann::json& m = value[i];
    const std::string name = fmt::format("{}[{}]", field, i);
    DSEEK_CHECK(m.is_object(), "[data] {}: {}: expected an object with role and content", where,
                name);
    DSEEK_CHECK(m.contains("role"), "[data] {}: {}.role: missing", where, name);
    DSEEK_CHECK(m.contains("content"), "[data] {}: {}.content: missing", where, name);
    const nlohmann::json& role = m["role"];
    const nlohmann::json& content = m["content"];
    const bool known = role.is_string() && (role == "system" || role == "user" || role == "assistant");
    DSEEK_CHECK(known, "[data] {}: {}.role: expected one of system/user/assistant, got {}", where,
                name, role.dump());
    DSEEK_CHECK(content.is_string(), "[data] {}: {}.content: expected a string, got {}", where, name,
                content.type_name());
    out.push_back({role.get<std::string>(), content.get<std::string>()});
  }
  return out;
}

}  // namespace dseek
