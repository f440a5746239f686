#include "tokenizer/tokenizer.h"

#include <fmt/ranges.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer_state.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

constexpr std::string_view kBosToken = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEosToken = "<｜end▁of▁sentence｜>";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSEEK_CHECK(in.good(), "[tokenizer] {}: cannot open", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json parse_json(std::string_view text, const std::string& where) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    fail("[tokenizer] {}: invalid JSON: {}", where, e.what());
  }
}

// Only normalizers that change nothing are supported (DeepSeek V3 has an empty Sequence).
void check_normalizer(const nlohmann::json& json, const std::string& at) {
  if (json.is_null()) return;
  DSEEK_CHECK(json.is_object() && json.contains("type") && json["type"].is_string(),
              "[tokenizer] {}.type: missing", at);
  const std::string type = json["type"].get<std::string>();
  if (type == "Sequence") {
    const auto list = json.find("normalizers");
    DSEEK_CHECK(list != json.end() && list->is_array(), "[tokenizer] {}.normalizers: missing", at);
    for (size_t i = 0; i < list->size(); ++i) {
      check_normalizer((*list)[i], at + ".normalizers[" + std::to_string(i) + "]");
    }
    return;
  }
  fail("[tokenizer] {}.type: unsupported normalizer '{}'", at, type);
}

// Post-processors only add special tokens (encode takes add_bos explicitly) or adjust offsets.
void check_post_processor(const nlohmann::json& json, const std::string& at) {
  if (json.is_null()) return;
  DSEEK_CHECK(json.is_object() && json.contains("type") && json["type"].is_string(),
              "[tokenizer] {}.type: missing", at);
  const std::string type = json["type"].get<std::string>();
  if (type == "Sequence") {
    const auto list = json.find("processors");
    DSEEK_CHECK(list != json.end() && list->is_array(), "[tokenizer] {}.processors: missing", at);
    for (size_t i = 0; i < list->size(); ++i) {
      check_post_processor((*list)[i], at + ".processors[" + std::to_string(i) + "]");
    }
    return;
  }
  DSEEK_CHECK(type == "ByteLevel" || type == "TemplateProcessing",
              "[tokenizer] {}.type: unsupported post-processor '{}'", at, type);
}

std::optional<std::string> token_string(const nlohmann::json& config, const char* key,
                                        const std::string& where) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  DSEEK_CHECK(it->is_object() && it->contains("content") && (*it)["content"].is_string(),
              "[tokenizer] {}: {} must be a string or {{\"content\": ...}}", where, key);
  return (*it)["content"].get<std::string>();
}

std::string config_chat_template(const nlohmann::json& config, const std::string& where) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  // Newer configs may hold a list of named templates; the "default" one is the chat format.
  DSEEK_CHECK(it->is_array(), "[tokenizer] {}: chat_template must be a string or a list", where);
  for (const auto& entry : *it) {
    if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
        entry["template"].is_string()) {
      return entry["template"].get<std::string>();
    }
  }
  fail("[tokenizer] {}: chat_template list has no \"default\" entry", where);
}

std::shared_ptr<TokenizerState> build(const nlohmann::json& doc, const nlohmann::json& config,
                                      const std::string& source, const std::string& config_source,
                                      std::string chat_template) {
  auto state = std::make_shared<TokenizerState>();
  state->source = source;
  state->config_source = config_source;
  DSEEK_CHECK(doc.is_object(), "[tokenizer] {}: not a JSON object", source);
  const auto model = doc.find("model");
  DSEEK_CHECK(model != doc.end() && !model->is_null(), "[tokenizer] {}: model: missing", source);
  state->model = BpeModel::from_json(*model, source);
  check_normalizer(doc.value("normalizer", nlohmann::json()), source + ": normalizer");
  state->pre_tokenizer =
      PreTokenizer::from_json(doc.value("pre_tokenizer", nlohmann::json()), source);
  check_post_processor(doc.value("post_processor", nlohmann::json()), source + ": post_processor");
  const auto decoder = doc.value("decoder", nlohmann::json());
  DSEEK_CHECK(decoder.is_object() && decoder.value("type", "") == "ByteLevel",
              "[tokenizer] {}: decoder: only the ByteLevel decoder is supported, got {}", source,
              decoder.dump());

  // Added tokens.
  int64_t limit = state->model.id_limit();
  const auto added = doc.find("added_tokens");
  if (added != doc.end() && !added->is_null()) {
    DSEEK_CHECK(added->is_array(), "[tokenizer] {}: added_tokens must be a list", source);
    for (size_t i = 0; i < added->size(); ++i) {
      const auto& a = (*added)[i];
      const std::string at = source + ": added_tokens[" + std::to_string(i) + "]";
      DSEEK_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() &&
                      a["id"].get<int64_t>() >= 0 && a["id"].get<int64_t>() < (int64_t(1) << 30),
                  "[tokenizer] {}.id: missing or invalid", at);
      DSEEK_CHECK(a.contains("content") && a["content"].is_string() &&
                      !a["content"].get<std::string>().empty(),
                  "[tokenizer] {}.content: missing or empty", at);
      AddedToken token;
      token.id = a["id"].get<int32_t>();
      token.content = a["content"].get<std::string>();
      DSEEK_CHECK(!utf8::first_invalid(token.content), "[tokenizer] {}.content: invalid UTF-8", at);
      auto flag = [&](const char* key, bool fallback) {
        const auto it = a.find(key);
        if (it == a.end() || it->is_null()) return fallback;
        DSEEK_CHECK(it->is_boolean(), "[tokenizer] {}.{}: must be true or false", at, key);
        return it->get<bool>();
      };
      token.special = flag("special", false);
      token.single_word = flag("single_word", false);
      token.lstrip = flag("lstrip", false);
      token.rstrip = flag("rstrip", false);
      token.normalized = flag("normalized", !token.special);
      limit = std::max<int64_t>(limit, int64_t(token.id) + 1);
      state->added_tokens.push_back(std::move(token));
    }
  }
  std::vector<AddedToken> raw, normalized;
  for (const auto& t : state->added_tokens) (t.normalized ? normalized : raw).push_back(t);
  state->raw_matcher = AddedTokenMatcher(std::move(raw));
  state->normalized_matcher = AddedTokenMatcher(std::move(normalized));

  // Per-id tables: token strings, decoded bytes, specialness.
  state->tokens.assign(size_t(limit), "");
  state->bytes.assign(size_t(limit), "");
  state->known.assign(size_t(limit), 0);
  state->special.assign(size_t(limit), 0);
  for (int64_t id = 0; id < state->model.id_limit(); ++id) {
    if (const std::string* token = state->model.id_to_token(int32_t(id))) {
      state->tokens[size_t(id)] = *token;
      state->known[size_t(id)] = 1;
    }
  }
  for (const auto& t : state->added_tokens) {
    state->tokens[size_t(t.id)] = t.content;  // tokenizers looks added tokens up first
    state->known[size_t(t.id)] = 1;
    state->special[size_t(t.id)] = t.special;
  }
  for (size_t id = 0; id < state->tokens.size(); ++id) {
    // ByteLevel decoder: a token whose every character stands for a byte gives those bytes;
    // any other token (e.g. "<｜end▁of▁sentence｜>") gives its own UTF-8.
    const std::string& token = state->tokens[id];
    std::string bytes;
    size_t pos = 0;
    bool all_mapped = true;
    while (pos < token.size()) {
      const auto b = utf8::char_to_byte(utf8::next(token, pos));
      if (!b) {
        all_mapped = false;
        break;
      }
      bytes += char(*b);
    }
    state->bytes[id] = all_mapped ? bytes : token;
  }

  // BOS / EOS: tokenizer_config.json names them; otherwise DeepSeek's sentence tokens.
  const auto find_id = [&](const std::string& token) -> std::optional<int32_t> {
    for (const auto& t : state->added_tokens) {
      if (t.content == token) return t.id;
    }
    return state->model.token_to_id(token);
  };
  const auto bos = token_string(config, "bos_token", config_source);
  const auto eos = token_string(config, "eos_token", config_source);
  state->bos_token = bos.value_or(std::string(kBosToken));
  state->eos_token = eos.value_or(std::string(kEosToken));
  state->bos = find_id(state->bos_token);
  state->eos = find_id(state->eos_token);
  DSEEK_CHECK(!bos || state->bos, "[tokenizer] {}: bos_token {:?} is not a token of {}",
              config_source, *bos, source);
  DSEEK_CHECK(!eos || state->eos, "[tokenizer] {}: eos_token {:?} is not a token of {}",
              config_source, *eos, source);
  if (chat_template.empty()) chat_template = config_chat_template(config, config_source);
  state->chat_template = std::move(chat_template);
  if (!state->chat_template.empty()) {
    state->chat_format = recognise_chat_template(state->chat_template, config_source);
  }
  return state;
}

}  // namespace

Tokenizer Tokenizer::from_json_text(std::string_view tokenizer_json, std::string_view config_json,
                                    const std::string& source) {
  const nlohmann::json doc = parse_json(tokenizer_json, source);
  const nlohmann::json config = config_json.empty()
                                    ? nlohmann::json::object()
                                    : parse_json(config_json, source + " (tokenizer_config)");
  return Tokenizer(build(doc, config, source, source + " (tokenizer_config)", ""));
}

Tokenizer Tokenizer::load(const std::string& file_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(file_or_dir, ec)) {
    const std::string text = read_file(file_or_dir);
    return Tokenizer(build(parse_json(text, file_or_dir), nlohmann::json::object(), file_or_dir,
                           file_or_dir, ""));
  }
  const fs::path dir(file_or_dir);
  const std::string path = (dir / "tokenizer.json").string();
  DSEEK_CHECK(fs::exists(path, ec), "[tokenizer] {}: no tokenizer.json in this directory",
              file_or_dir);
  const nlohmann::json doc = parse_json(read_file(path), path);
  const std::string config_path = (dir / "tokenizer_config.json").string();
  nlohmann::json config = nlohmann::json::object();
  if (fs::exists(config_path, ec)) config = parse_json(read_file(config_path), config_path);
  DSEEK_CHECK(config.is_object(), "[tokenizer] {}: not a JSON object", config_path);
  std::string chat_template;
  const std::string jinja_path = (dir / "chat_template.jinja").string();
  if (!config.contains("chat_template") && fs::exists(jinja_path, ec)) {
    chat_template = read_file(jinja_path);  // transformers 5 saves the template beside
  }
  return Tokenizer(build(doc, config, path, config_path, std::move(chat_template)));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  const TokenizerState& s = *state_;
  if (const auto bad = utf8::first_invalid(text)) {
    fail("[tokenizer] input is not valid UTF-8 at byte {}", *bad);
  }
  std::vector<int32_t> ids;
  if (add_bos) ids.push_back(bos_id());
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  for (const Segment& outer : s.raw_matcher.split(text)) {
    if (outer.id >= 0) {
      ids.push_back(outer.id);
      continue;
    }
    const std::string_view part = text.substr(outer.begin, outer.end - outer.begin);
    for (const Segment& inner : s.normalized_matcher.split(part)) {
      if (inner.id >= 0) {
        ids.push_back(inner.id);
        continue;
      }
      pieces.clear();
      s.pre_tokenizer.split(part.substr(inner.begin, inner.end - inner.begin), arena, pieces);
      for (const auto piece : pieces) {
        s.model.encode_piece(piece, s.pre_tokenizer.byte_level(), ids);
      }
    }
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    const std::string& b = token_bytes(id);
    if (skip_special && state_->special[size_t(id)]) continue;
    bytes += b;
  }
  return utf8::lossy(bytes);
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  DSEEK_CHECK(id >= 0 && size_t(id) < state_->known.size() && state_->known[size_t(id)],
              "[tokenizer] {}: token id {} is out of range (vocab size {})", state_->source, id,
              state_->known.size());
  return state_->bytes[size_t(id)];
}

int32_t Tokenizer::bos_id() const {
  DSEEK_CHECK(state_->bos.has_value(), "[tokenizer] {}: the tokenizer has no BOS token {:?}",
              state_->source, state_->bos_token);
  return *state_->bos;
}

int32_t Tokenizer::eos_id() const {
  DSEEK_CHECK(state_->eos.has_value(), "[tokenizer] {}: the tokenizer has no EOS token {:?}",
              state_->source, state_->eos_token);
  return *state_->eos;
}

int64_t Tokenizer::vocab_size() const {
  return int64_t(state_->tokens.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& t : state_->added_tokens) {
    if (t.content == token) return t.id;
  }
  return state_->model.token_to_id(token);
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  token_bytes(id);  // range check
  return state_->tokens[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  token_bytes(id);  // range check
  return state_->special[size_t(id)] != 0;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  DSEEK_CHECK(state_->chat_format != ChatFormat::kNone,
              "[tokenizer] {}: no chat_template (name a format explicitly: {})",
              state_->config_source, fmt::join(chat_format_names(), ", "));
  return render_chat(state_->chat_format, messages, add_generation_prompt, state_->bos_token,
                     state_->eos_token);
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt,
                                           const std::string& format) const {
  return render_chat(chat_format_from_name(format), messages, add_generation_prompt,
                     state_->bos_token, state_->eos_token);
}

std::string Tokenizer::chat_template_name() const {
  return chat_format_name(state_->chat_format);
}

std::vector<std::string> Tokenizer::chat_template_names() {
  return chat_format_names();
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string& bytes = tokenizer_.token_bytes(id);
  if (skip_special_ && tokenizer_.is_special(id)) return "";
  pending_ += bytes;
  std::string out;
  const size_t used = utf8::decode_lossy(pending_, out, false);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dseek
