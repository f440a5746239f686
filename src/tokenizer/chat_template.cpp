#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dseek {
namespace {

bool has(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

constexpr std::string_view kCoderSystemPrompt =
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
    "Deepseek Company, and you only answer questions related to computer science. For politically "
    "sensitive questions, security and privacy issues, and other non-computer science questions, "
    "you will refuse to answer\n";

constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";

struct Named {
  ChatFormat format;
  const char* name;
};
constexpr Named kNames[] = {
    {ChatFormat::kDeepSeekLlm, "deepseek_llm"}, {ChatFormat::kDeepSeekCoder, "deepseek_coder"},
    {ChatFormat::kDeepSeekV2, "deepseek_v2"},   {ChatFormat::kDeepSeekV25, "deepseek_v2.5"},
    {ChatFormat::kDeepSeekV3, "deepseek_v3"},
};

std::string render_llm(const std::vector<ChatMessage>& messages, bool gen, const std::string& bos,
                       const std::string& eos) {
  std::string out = bos;
  for (const auto& m : messages) {
    if (m.role == "user") {
      out += "User: " + m.content + "\n\n";
    } else if (m.role == "assistant") {
      out += "Assistant: " + m.content + eos;
    } else if (m.role == "system") {
      out += m.content + "\n\n";
    }
  }
  if (gen) out += "Assistant:";
  return out;
}

std::string render_coder(const std::vector<ChatMessage>& messages, bool gen,
                         const std::string& bos) {
  std::string out = bos;
  bool has_system = false;
  for (const auto& m : messages) has_system = has_system || m.role == "system";
  if (!has_system) out += kCoderSystemPrompt;
  for (const auto& m : messages) {
    if (m.role == "system") {
      out += m.content;
    } else if (m.role == "user") {
      out += "### Instruction:\n" + m.content + "\n";
    } else {  // the template treats every other role as the assistant's
      out += "### Response:\n" + m.content + "\n<|EOT|>\n";
    }
  }
  if (gen) out += "### Response:\n";
  return out;
}

std::string render_v2(const std::vector<ChatMessage>& messages, bool gen, const std::string& bos,
                      const std::string& eos) {
  std::string out = bos;
  for (const auto& m : messages) {
    if (m.role == "user") {
      out += std::string(kUser) + m.content;
    } else if (m.role == "assistant") {
      out += std::string(kAssistant) + m.content + eos;
    } else if (m.role == "system") {
      out += m.content + "\n\n";
    }
  }
  if (gen) out += kAssistant;
  return out;
}

// V2.5 and V3: the system prompt comes first; tool outputs are grouped between
// tool▁outputs▁begin/end. Assistant messages with tool calls are not representable here.
std::string render_v3(const std::vector<ChatMessage>& messages, bool gen, const std::string& bos,
                      bool join_system_prompts) {
  std::string system_prompt;
  bool first_system = true;
  for (const auto& m : messages) {
    if (m.role != "system") continue;
    if (!join_system_prompts) {
      system_prompt = m.content;  // V2.5 keeps the last one
    } else {
      system_prompt += (first_system ? "" : "\n\n") + m.content;
    }
    first_system = false;
  }
  std::string out = bos + system_prompt;
  bool is_tool = false, output_first = true;
  for (const auto& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      out += std::string(kUser) + m.content;
    } else if (m.role == "assistant") {
      out += (is_tool ? std::string("<｜tool▁outputs▁end｜>") : std::string(kAssistant)) +
             m.content + std::string(kEndOfSentence);
      is_tool = false;
    } else if (m.role == "tool") {
      is_tool = true;
      out += output_first ? "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>"
                          : "\n<｜tool▁output▁begin｜>";
      out += m.content + "<｜tool▁output▁end｜>";
      output_first = false;
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (gen && !is_tool) out += kAssistant;
  return out;
}

}  // namespace

ChatFormat recognise_chat_template(const std::string& t, const std::string& where) {
  // Reasoning-model templates (R1, V3.1) rewrite assistant content; they are not these formats.
  const bool thinking = has(t, "</think>") || has(t, "thinking");
  if (!thinking) {
    if (has(t, "<｜tool▁output▁begin｜>") && has(t, "'<｜User｜>'")) {
      return has(t, "is_first_sp") ? ChatFormat::kDeepSeekV3 : ChatFormat::kDeepSeekV25;
    }
    if (has(t, "'<｜User｜>'") && has(t, "'<｜Assistant｜>'") && has(t, "eos_token") &&
        !has(t, "tool")) {
      return ChatFormat::kDeepSeekV2;
    }
    if (has(t, "### Instruction:\\n") && has(t, "### Response:\\n") &&
        has(t, "utilizing the Deepseek Coder model") && has(t, "add_generation_prompt")) {
      return ChatFormat::kDeepSeekCoder;
    }
    if (has(t, "'User: '") && has(t, "'Assistant: '") && has(t, "'Assistant:'")) {
      return ChatFormat::kDeepSeekLlm;
    }
  }
  std::string names;
  for (const auto& n : kNames) names += std::string(names.empty() ? "" : ", ") + n.name;
  fail("[tokenizer] {}: chat_template is not a recognised DeepSeek chat format ({})", where, names);
}

ChatFormat chat_format_from_name(const std::string& name) {
  for (const auto& n : kNames) {
    if (name == n.name) return n.format;
  }
  std::string names;
  for (const auto& n : kNames) names += std::string(names.empty() ? "" : ", ") + n.name;
  fail("[tokenizer] unknown chat template name '{}' (known: {})", name, names);
}

std::string chat_format_name(ChatFormat format) {
  for (const auto& n : kNames) {
    if (format == n.format) return n.name;
  }
  return "";
}

std::vector<std::string> chat_format_names() {
  std::vector<std::string> names;
  for (const auto& n : kNames) names.emplace_back(n.name);
  return names;
}

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool gen,
                        const std::string& bos, const std::string& eos) {
  switch (format) {
    case ChatFormat::kDeepSeekLlm: return render_llm(messages, gen, bos, eos);
    case ChatFormat::kDeepSeekCoder: return render_coder(messages, gen, bos);
    case ChatFormat::kDeepSeekV2: return render_v2(messages, gen, bos, eos);
    case ChatFormat::kDeepSeekV25: return render_v3(messages, gen, bos, false);
    case ChatFormat::kDeepSeekV3: return render_v3(messages, gen, bos, true);
    case ChatFormat::kNone: break;
  }
  fail("[tokenizer] no chat template to apply");
}

}  // namespace dseek
