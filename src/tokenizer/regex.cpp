#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace dseek {

namespace {
constexpr const char* kSpaceClassBody = "\\t-\\r\\x{85}\\p{Z}";  // Unicode White_Space
}

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

std::string onig_to_pcre2(const std::string& pattern, const std::string& where) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  size_t class_start = 0;  // position just after '[' (and '^'), where ']' is still a literal
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kSpaceClassBody) : "[" + std::string(kSpaceClassBody) + "]";
      } else if (e == 'S') {
        DSEEK_CHECK(!in_class,
                    "[tokenizer] {}: regex uses \\S inside a character class (unsupported)", where);
        out += "[^" + std::string(kSpaceClassBody) + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      class_start = i + 1;
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']' && i != class_start) in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, bool literal, const std::string& where)
    : pattern_(pattern), code_(std::make_shared<Code>()) {
  const std::string translated = literal ? pattern : onig_to_pcre2(pattern, where);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  const uint32_t options =
      literal ? PCRE2_LITERAL | PCRE2_UTF : PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              options, &error, &offset, context);
  pcre2_compile_context_free(context);
  if (code_->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    fail("[tokenizer] {}: regex {:?} does not compile at offset {}: {}", where, pattern,
         size_t(offset), reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if absent
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> matches;
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t search_from = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (search_from <= subject.size()) {
    const int rc = pcre2_match(code_->code, text, subject.size(), search_from, PCRE2_NO_UTF_CHECK,
                               data, nullptr);
    if (rc < 0) {
      // PCRE2_ERROR_NOMATCH ends the search; a resource limit on a pathological input does too,
      // leaving the rest as one unsplit piece (tokenizers would do the same on an onig error).
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t start = ovector[0], end = ovector[1];
    if (start == end && have_last && last_end == end) {
      if (search_from >= subject.size()) break;
      size_t step = 1;  // advance one character
      while (search_from + step < subject.size() &&
             (static_cast<uint8_t>(subject[search_from + step]) & 0xC0) == 0x80) {
        ++step;
      }
      search_from += step;
      continue;
    }
    matches.emplace_back(start, end);
    search_from = end;
    have_last = true;
    last_end = end;
  }
  pcre2_match_data_free(data);
  return matches;
}

bool Regex::matches_at_start(std::string_view subject) const {
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(subject.data()),
                             subject.size(), 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, data, nullptr);
  pcre2_match_data_free(data);
  return rc >= 0;
}

}  // namespace dseek
