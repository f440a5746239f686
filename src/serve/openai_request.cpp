#include "serve/openai_request.h"

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "serve/api_error.h"

namespace dseek::serve {
namespace {

using nlohmann::json;

std::string type_name(const json& value) {
  if (value.is_null()) return "null";
  if (value.is_boolean()) return "a boolean";
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void wrong_type(const std::string& param, const std::string& expected,
                             const json& value) {
  invalid_field(param, "expected " + expected + ", got " + type_name(value));
}

bool get_bool(const json& value, const std::string& param) {
  if (!value.is_boolean()) wrong_type(param, "a boolean", value);
  return value.get<bool>();
}

int64_t get_int(const json& value, const std::string& param, int64_t lo, int64_t hi) {
  int64_t result = 0;
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      invalid_field(param, "must be at most " + std::to_string(hi));
    }
    result = value.get<int64_t>();
  } else if (value.is_number_float() && std::floor(value.get<double>()) == value.get<double>() &&
             std::abs(value.get<double>()) < 9e15) {
    result = static_cast<int64_t>(value.get<double>());  // 2.0 from clients that write floats
  } else {
    wrong_type(param, "an integer", value);
  }
  if (result < lo || result > hi) {
    invalid_field(param, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                             "], got " + std::to_string(result));
  }
  return result;
}

double get_number(const json& value, const std::string& param, double lo, double hi) {
  if (!value.is_number()) wrong_type(param, "a number", value);
  const double result = value.get<double>();
  if (!(result >= lo && result <= hi)) {
    invalid_field(param, "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " +
                             json(result).dump());
  }
  return result;
}

std::string get_string(const json& value, const std::string& param) {
  if (!value.is_string()) wrong_type(param, "a string", value);
  return value.get<std::string>();
}

// Text of a message's content: a string, or OpenAI's array of {"type": "text", "text": ...}
// parts (joined), which newer clients send even for plain text.
std::string message_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(param, "a string or an array of text parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const std::string part = param + "[" + std::to_string(i) + "]";
    const json& p = content[i];
    if (!p.is_object()) wrong_type(part, "an object", p);
    if (!p.contains("type")) invalid_field(part + ".type", "missing");
    const std::string type = get_string(p["type"], part + ".type");
    if (type != "text") invalid_field(part + ".type", "only \"text\" parts are supported");
    if (!p.contains("text")) invalid_field(part + ".text", "missing");
    text += get_string(p["text"], part + ".text");
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& messages) {
  if (!messages.is_array()) wrong_type("messages", "an array", messages);
  if (messages.empty()) invalid_field("messages", "must not be empty");
  static const std::set<std::string> roles = {"system", "developer", "user", "assistant", "tool"};
  std::vector<ChatMessage> result;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string param = "messages[" + std::to_string(i) + "]";
    const json& m = messages[i];
    if (!m.is_object()) wrong_type(param, "an object", m);
    if (!m.contains("role")) invalid_field(param + ".role", "missing");
    std::string role = get_string(m["role"], param + ".role");
    if (!roles.count(role)) {
      invalid_field(param + ".role",
                    "unknown role \"" + role + "\" (system, developer, user, assistant or tool)");
    }
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    for (const auto& [key, value] : m.items()) {
      if (key != "role" && key != "content" && key != "name") {
        invalid_field(param + "." + key, "not supported");
      }
    }
    std::string content;
    if (!m.contains("content")) invalid_field(param + ".content", "missing");
    content = message_content(m["content"], param + ".content");
    result.push_back({role, std::move(content)});
  }
  return result;
}

// A completions prompt: a string, an array of token ids, or an array of either (several prompts).
std::vector<std::vector<int32_t>> parse_prompts(const json& prompt, const ServedModel& served) {
  auto encode = [&](const json& text, const std::string& param) {
    if (served.tokenizer == nullptr) {
      invalid_field(param, "the served model has no tokenizer; send token ids");
    }
    bool add_bos = true;
    try {
      (void)served.tokenizer->bos_id();
    } catch (const Error&) {
      add_bos = false;
    }
    return served.tokenizer->encode(get_string(text, param), add_bos);
  };
  auto ids = [&](const json& array, const std::string& param) {
    std::vector<int32_t> result;
    const int64_t vocab =
        served.tokenizer ? served.tokenizer->vocab_size() : std::numeric_limits<int32_t>::max();
    for (size_t i = 0; i < array.size(); ++i) {
      result.push_back(static_cast<int32_t>(
          get_int(array[i], param + "[" + std::to_string(i) + "]", 0, vocab - 1)));
    }
    return result;
  };
  std::vector<std::vector<int32_t>> prompts;
  if (prompt.is_string()) {
    prompts.push_back(encode(prompt, "prompt"));
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number()) {
    prompts.push_back(ids(prompt, "prompt"));
  } else if (prompt.is_array() && !prompt.empty()) {
    for (size_t i = 0; i < prompt.size(); ++i) {
      const std::string param = "prompt[" + std::to_string(i) + "]";
      if (prompt[i].is_string()) {
        prompts.push_back(encode(prompt[i], param));
      } else if (prompt[i].is_array()) {
        prompts.push_back(ids(prompt[i], param));
      } else {
        wrong_type(param, "a string or an array of token ids", prompt[i]);
      }
    }
  } else if (prompt.is_array()) {
    invalid_field("prompt", "must not be empty");
  } else {
    wrong_type("prompt", "a string or an array", prompt);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      invalid_field(prompts.size() == 1 ? "prompt" : "prompt[" + std::to_string(i) + "]",
                    "encodes to no tokens");
    }
  }
  return prompts;
}

std::vector<std::string> parse_stop(const json& stop) {
  std::vector<std::string> result;
  if (stop.is_null()) return result;
  if (stop.is_string()) {
    result.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    if (stop.size() > 4) invalid_field("stop", "at most 4 stop sequences");
    for (size_t i = 0; i < stop.size(); ++i) {
      result.push_back(get_string(stop[i], "stop[" + std::to_string(i) + "]"));
    }
  } else {
    wrong_type("stop", "a string or an array of strings", stop);
  }
  for (const std::string& s : result) {
    if (s.empty()) invalid_field("stop", "stop sequences must not be empty");
  }
  return result;
}

}  // namespace

json parse_json_body(const std::string& body) {
  try {
    return json::parse(body);
  } catch (const json::exception& e) {
    // parse_error for bad syntax, out_of_range for a number beyond double (1e999). nlohmann's
    // message: "[json.exception.parse_error.101] parse error at line 1, column 9: ..."
    std::string what = e.what();
    const size_t at = what.find("] ");
    if (at != std::string::npos) what = what.substr(at + 2);
    throw ApiError(400, "[serve] request body is not valid JSON: " + what, "", "invalid_json");
  }
}

CompletionRequest parse_completion_request(const json& body, Endpoint endpoint,
                                           const ServedModel& served) {
  if (!body.is_object()) wrong_type("body", "a JSON object", body);
  const bool chat = endpoint == Endpoint::kChat;
  CompletionRequest request;
  request.endpoint = endpoint;
  EngineRequest& base = request.base;
  base.max_tokens = chat ? served.default_max_tokens : 16;  // OpenAI's legacy default is 16
  base.sampling.temperature = 1.0f;                         // OpenAI's default
  bool logprobs = false;
  int64_t top_logprobs = -1;

  static const std::set<std::string> common = {"model",
                                               "stream",
                                               "stream_options",
                                               "max_tokens",
                                               "temperature",
                                               "top_p",
                                               "top_k",
                                               "min_p",
                                               "repetition_penalty",
                                               "frequency_penalty",
                                               "presence_penalty",
                                               "stop",
                                               "seed",
                                               "n",
                                               "logprobs",
                                               "user",
                                               "ignore_eos",
                                               "stop_token_ids",
                                               "logit_bias",
                                               "best_of"};
  static const std::set<std::string> chat_only = {"messages", "max_completion_tokens",
                                                  "top_logprobs", "response_format"};
  static const std::set<std::string> completion_only = {"prompt", "echo", "suffix"};
  for (const auto& [key, value] : body.items()) {
    if (common.count(key) || (chat ? chat_only : completion_only).count(key)) continue;
    invalid_field(key, "unknown or unsupported parameter");
  }

  if (!body.contains("model")) invalid_field("model", "missing");
  request.model = get_string(body["model"], "model");
  if (request.model != served.name) {
    throw ApiError(404,
                   "[serve] model: the model `" + request.model +
                       "` does not exist; this server serves `" + served.name + "`",
                   "model", "model_not_found");
  }

  for (const auto& [key, value] : body.items()) {
    if (key == "stream") {
      request.stream = get_bool(value, key);
    } else if (key == "stream_options") {
      if (value.is_null()) continue;
      if (!value.is_object()) wrong_type(key, "an object", value);
      for (const auto& [k, v] : value.items()) {
        if (k != "include_usage") invalid_field("stream_options." + k, "unknown option");
        request.include_usage = get_bool(v, "stream_options.include_usage");
      }
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      if (value.is_null()) continue;
      base.max_tokens = get_int(value, key, 1, std::numeric_limits<int32_t>::max());
    } else if (key == "temperature") {
      if (!value.is_null()) base.sampling.temperature = float(get_number(value, key, 0.0, 2.0));
    } else if (key == "top_p") {
      if (value.is_null()) continue;
      base.sampling.top_p = float(get_number(value, key, 0.0, 1.0));
      if (base.sampling.top_p == 0.0f) invalid_field(key, "must be in (0, 1]");
    } else if (key == "top_k") {  // vLLM's extension; −1 and 0 both mean off
      if (!value.is_null())
        base.sampling.top_k = std::max<int64_t>(0, get_int(value, key, -1, 1 << 20));
    } else if (key == "min_p") {
      if (!value.is_null()) base.sampling.min_p = float(get_number(value, key, 0.0, 1.0));
    } else if (key == "repetition_penalty") {
      if (value.is_null()) continue;
      base.sampling.repetition_penalty = float(get_number(value, key, 0.0, 100.0));
      if (base.sampling.repetition_penalty == 0.0f) invalid_field(key, "must be > 0");
    } else if (key == "frequency_penalty" || key == "presence_penalty") {
      if (!value.is_null() && get_number(value, key, -2.0, 2.0) != 0.0) {
        invalid_field(key, "not supported (only 0); use repetition_penalty");
      }
    } else if (key == "logit_bias") {
      if (!value.is_null() && !(value.is_object() && value.empty())) {
        invalid_field(key, "not supported");
      }
    } else if (key == "stop") {
      base.stop = parse_stop(value);
      if (!base.stop.empty() && served.tokenizer == nullptr) {
        invalid_field(key, "stop strings need a tokenizer; the served model has none");
      }
    } else if (key == "seed") {
      if (value.is_null()) continue;
      // OpenAI's seed is a signed 64-bit integer; negative seeds map onto the unsigned range.
      if (!value.is_number_integer()) wrong_type(key, "an integer", value);
      base.sampling.seed = value.is_number_unsigned() ? value.get<uint64_t>()
                                                      : static_cast<uint64_t>(value.get<int64_t>());
      request.seeded = true;
    } else if (key == "n") {
      if (!value.is_null()) request.n = get_int(value, key, 1, 16);
    } else if (key == "best_of") {
      if (!value.is_null() && get_int(value, key, 1, 16) != 1) {
        invalid_field(key, "not supported (only 1)");
      }
    } else if (key == "logprobs") {
      if (value.is_null()) continue;
      if (chat) {
        logprobs = get_bool(value, key);
      } else {
        top_logprobs = get_int(value, key, 0, 20);
      }
    } else if (key == "top_logprobs") {
      if (!value.is_null()) top_logprobs = get_int(value, key, 0, 20);
    } else if (key == "ignore_eos") {
      base.ignore_eos = get_bool(value, key);
    } else if (key == "stop_token_ids") {
      if (value.is_null()) continue;
      if (!value.is_array()) wrong_type(key, "an array of token ids", value);
      for (size_t i = 0; i < value.size(); ++i) {
        base.stop_token_ids.push_back(
            static_cast<int32_t>(get_int(value[i], key + "[" + std::to_string(i) + "]", 0,
                                         std::numeric_limits<int32_t>::max())));
      }
    } else if (key == "response_format") {
      if (value.is_null()) continue;
      if (!value.is_object() || !value.contains("type") || value["type"] != "text") {
        invalid_field(key, "only {\"type\": \"text\"} is supported");
      }
    } else if (key == "echo") {
      if (get_bool(value, key)) invalid_field(key, "not supported");
    } else if (key == "suffix") {
      if (!value.is_null()) invalid_field(key, "not supported");
    } else if (key == "user") {
      if (!value.is_null()) (void)get_string(value, key);
    }
  }
  if (chat) {
    if (top_logprobs >= 0 && !logprobs) invalid_field("top_logprobs", "requires logprobs: true");
    request.top_logprobs = logprobs ? static_cast<int>(std::max<int64_t>(0, top_logprobs)) : -1;
  } else {
    request.top_logprobs = static_cast<int>(top_logprobs);
  }
  base.top_logprobs = request.top_logprobs;
  if (request.include_usage && !request.stream) {
    invalid_field("stream_options", "only allowed when stream is true");
  }
  if (!request.seeded) base.sampling.seed = std::random_device{}() * 0x9E3779B97F4A7C15ull;

  if (chat) {
    if (!body.contains("messages")) invalid_field("messages", "missing");
    const std::vector<ChatMessage> messages = parse_messages(body["messages"]);
    if (served.tokenizer == nullptr) {
      invalid_field("messages", "the served model has no tokenizer, so no chat template");
    }
    std::string text;
    try {
      text = served.chat_format.empty()
                 ? served.tokenizer->apply_chat_template(messages, true)
                 : served.tokenizer->apply_chat_template(messages, true, served.chat_format);
    } catch (const Error& e) {
      throw ApiError(400, std::string("[serve] messages: ") + e.what(), "messages");
    }
    request.prompts.push_back(served.tokenizer->encode(text, /*add_bos=*/false));
    // DeepSeek Coder's instruct models end a turn with <|EOT|> rather than EOS.
    if (auto eot = served.tokenizer->token_to_id("<|EOT|>")) base.stop_token_ids.push_back(*eot);
  } else {
    if (!body.contains("prompt")) invalid_field("prompt", "missing");
    request.prompts = parse_prompts(body["prompt"], served);
  }

  const std::string prompt_param = chat ? "messages" : "prompt";
  for (const std::vector<int32_t>& prompt : request.prompts) {
    const int64_t tokens = static_cast<int64_t>(prompt.size());
    if (served.context_tokens > 0 && tokens + base.max_tokens > served.context_tokens) {
      throw ApiError(400,
                     "[serve] " + prompt_param + ": this model's context is " +
                         std::to_string(served.context_tokens) + " tokens; the request asks for " +
                         std::to_string(tokens) + " prompt + " + std::to_string(base.max_tokens) +
                         " completion tokens",
                     prompt_param, "context_length_exceeded");
    }
  }
  try {
    base.sampling.validate();
  } catch (const Error& e) {
    throw ApiError(400, std::string("[serve] ") + e.what());
  }
  return request;
}

std::vector<EngineRequest> engine_requests(const CompletionRequest& request) {
  std::vector<EngineRequest> result;
  for (const std::vector<int32_t>& prompt : request.prompts) {
    for (int64_t i = 0; i < request.n; ++i) {
      EngineRequest r = request.base;
      r.prompt = prompt;
      r.sampling.seed = request.base.sampling.seed + static_cast<uint64_t>(i);
      result.push_back(std::move(r));
    }
  }
  return result;
}

}  // namespace dseek::serve
