#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dseek {
namespace {

// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

SplitBehavior parse_behavior(const nlohmann::json& json, const std::string& where) {
  DSEEK_CHECK(json.is_string(), "[tokenizer] {}: behavior must be a string", where);
  const std::string name = json.get<std::string>();
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("[tokenizer] {}: unknown split behavior '{}'", where, name);
}

bool get_bool(const nlohmann::json& json, const char* key, bool fallback,
              const std::string& where) {
  const auto it = json.find(key);
  if (it == json.end() || it->is_null()) return fallback;
  DSEEK_CHECK(it->is_boolean(), "[tokenizer] {}.{}: must be true or false", where, key);
  return it->get<bool>();
}

}  // namespace

void split_piece(const SplitStep& step, std::string_view piece,
                 std::vector<std::string_view>& out) {
  // (begin, end, is_match) over the whole piece, as tokenizers' Pattern::find_matches.
  struct Span {
    size_t begin, end;
    bool match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [begin, end] : step.regex.find_all(piece)) {
    if (prev != begin) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  }
  if (prev != piece.size()) spans.push_back({prev, piece.size(), false});
  if (step.invert) {
    for (auto& s : spans) s.match = !s.match;
  }
  // Behaviour: which spans are kept, and which are glued together.
  std::vector<Span> kept;
  switch (step.behavior) {
    case SplitBehavior::kIsolated: kept = spans; break;
    case SplitBehavior::kRemoved:
      for (const auto& s : spans) {
        if (!s.match) kept.push_back(s);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.match && !previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back(s);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (size_t i = 0; i < spans.size(); ++i) {
        if (i > 0 && spans[i].match == previous_match) {
          kept.back().end = spans[i].end;
        } else {
          kept.push_back(spans[i]);
        }
        previous_match = spans[i].match;
      }
      break;
    }
  }
  for (const auto& s : kept) {
    if (s.end > s.begin) out.push_back(piece.substr(s.begin, s.end - s.begin));
  }
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& json, const std::string& where) {
  PreTokenizer pre;
  if (json.is_null()) return pre;
  pre.add(json, "pre_tokenizer", where, true);
  return pre;
}

void PreTokenizer::add(const nlohmann::json& json, const std::string& field,
                       const std::string& where, bool last) {
  const std::string at = where + ": " + field;
  DSEEK_CHECK(json.is_object(), "[tokenizer] {}: must be an object", at);
  const auto type_it = json.find("type");
  DSEEK_CHECK(type_it != json.end() && type_it->is_string(), "[tokenizer] {}.type: missing", at);
  const std::string type = type_it->get<std::string>();
  DSEEK_CHECK(!byte_level_, "[tokenizer] {}: ByteLevel must be the last pre-tokenizer", at);
  if (type == "Sequence") {
    const auto list = json.find("pretokenizers");
    DSEEK_CHECK(list != json.end() && list->is_array(), "[tokenizer] {}.pretokenizers: missing",
                at);
    for (size_t i = 0; i < list->size(); ++i) {
      add((*list)[i], field + ".pretokenizers[" + std::to_string(i) + "]", where,
          last && i + 1 == list->size());
    }
  } else if (type == "Split") {
    const auto pattern = json.find("pattern");
    DSEEK_CHECK(pattern != json.end() && pattern->is_object() && pattern->size() == 1,
                "[tokenizer] {}.pattern: must be {{\"Regex\": ...}} or {{\"String\": ...}}", at);
    const std::string kind = pattern->begin().key();
    const nlohmann::json value = pattern->begin().value();  // a copy: GCC 13 flags a reference through the temporary iterator
    DSEEK_CHECK((kind == "Regex" || kind == "String") && value.is_string(),
                "[tokenizer] {}.pattern: must be {{\"Regex\": ...}} or {{\"String\": ...}}", at);
    const auto behavior = json.find("behavior");
    DSEEK_CHECK(behavior != json.end(), "[tokenizer] {}.behavior: missing", at);
    steps_.push_back({Regex(value.get<std::string>(), kind == "String", at + ".pattern"),
                      parse_behavior(*behavior, at + ".behavior"),
                      get_bool(json, "invert", false, at)});
  } else if (type == "Digits") {
    const bool individual = get_bool(json, "individual_digits", false, at);
    // tokenizers splits on char::is_numeric (\p{N}): runs of digits, or each digit alone.
    steps_.push_back(
        {Regex(individual ? "\\p{N}" : "\\p{N}+", false, at), SplitBehavior::kIsolated, false});
  } else if (type == "ByteLevel") {
    DSEEK_CHECK(last, "[tokenizer] {}: ByteLevel must be the last pre-tokenizer", at);
    byte_level_ = true;
    add_prefix_space_ = get_bool(json, "add_prefix_space", false, at);
    if (get_bool(json, "use_regex", true, at)) {
      byte_level_steps_.push_back(
          {Regex(kGpt2Pattern, false, at + " (GPT-2 regex)"), SplitBehavior::kIsolated, false});
    }
  } else {
    fail("[tokenizer] {}.type: unsupported pre-tokenizer '{}'", at, type);
  }
}

void PreTokenizer::split(std::string_view text, std::deque<std::string>& arena,
                         std::vector<std::string_view>& out) const {
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  for (const auto& step : steps_) {
    next.clear();
    for (const auto piece : pieces) split_piece(step, piece, next);
    pieces.swap(next);
  }
  if (byte_level_ && add_prefix_space_) {
    // Each piece gets a leading space unless it has one (a deque never moves its strings, so the
    // views stay valid).
    for (auto& piece : pieces) {
      if (!piece.empty() && piece.front() != ' ') {
        arena.push_back(" " + std::string(piece));
        piece = arena.back();
      }
    }
  }
  for (const auto& step : byte_level_steps_) {
    next.clear();
    for (const auto piece : pieces) split_piece(step, piece, next);
    pieces.swap(next);
  }
  out.insert(out.end(), pieces.begin(), pieces.end());
}

}  // namespace dseek
