// Chat formats of DeepSeek's chat models, rendered natively. The format is recognised from the
// Jinja chat_template of tokenizer_config.json (by the strings that make each one distinct), and
// each renderer reproduces what transformers' apply_chat_template makes of that template for
// messages with a role and a text content (tests compare them on recorded renders).
#pragma once

#include <string>
#include <vector>

namespace dseek {

struct ChatMessage;

enum class ChatFormat {
  kNone,
  kDeepSeekLlm,  // deepseek-llm-*-chat, DeepSeek-V2-Chat (first release): "User: ...\n\nAssistant:"
  kDeepSeekCoder,  // deepseek-coder-*-instruct: "### Instruction:" / "### Response:"
  kDeepSeekV2,     // DeepSeek-V2-Chat-0628, V2-Lite-Chat: "<｜User｜>...<｜Assistant｜>"
  kDeepSeekV25,    // DeepSeek-V2.5: like V3, but only the last system message is kept
  kDeepSeekV3,     // DeepSeek-V3: system messages joined by "\n\n", tool outputs
};

// Recognises `chat_template`; throws naming `where` if it is not one of the known formats.
ChatFormat recognise_chat_template(const std::string& chat_template, const std::string& where);

ChatFormat chat_format_from_name(const std::string& name);  // throws for unknown names
std::string chat_format_name(ChatFormat format);
std::vector<std::string> chat_format_names();

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::string& bos_token,
                        const std::string& eos_token);

}  // namespace dseek
