// Regexes of tokenizer.json pre-tokenizers, through PCRE2 (UTF + Unicode properties, JIT when
// available). Hugging Face `tokenizers` runs them with Oniguruma (Ruby syntax); the differences
// that matter are bridged here: `$`/`^` are line anchors in Ruby (PCRE2_MULTILINE), and Ruby's
// `\s` is exactly Unicode White_Space while PCRE2's also takes U+180E, so `\s`/`\S` are rewritten
// into explicit classes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dseek {

class Regex {
 public:
  // `where` names the file and field for error messages. `literal` matches the text as given.
  Regex(const std::string& pattern, bool literal, const std::string& where);

  // Non-overlapping matches (byte offsets) from left to right, with the iteration rules of the
  // Rust onig crate's find_iter (an empty match right after the previous one is skipped).
  // `subject` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

  // True if the pattern matches at the start of `subject`.
  bool matches_at_start(std::string_view subject) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::string pattern_;
  std::shared_ptr<Code> code_;
};

// Rewrites Oniguruma-flavoured `\s` and `\S` into PCRE2 classes with the same meaning.
std::string onig_to_pcre2(const std::string& pattern, const std::string& where);

}  // namespace dseek
