#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

// tokenizers' single_word test: the neighbour is a word character (alphanumeric or '_').
bool is_word_char(char32_t cp) {
  static const Regex word("[\\p{L}\\p{N}_]", false, "single_word test");
  std::string s;
  utf8::append(s, cp);
  return word.matches_at_start(s);
}

char32_t last_char(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  return utf8::next(s, start);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;
    first_byte_[static_cast<uint8_t>(content[0])] = true;
    int32_t node = 0;
    for (const char c : content) {
      const auto byte = static_cast<uint8_t>(c);
      int32_t next = child(node, byte);
      if (next < 0) {
        next = int32_t(nodes_.size());
        auto& kids = nodes_[size_t(node)].children;
        kids.insert(std::lower_bound(kids.begin(), kids.end(), std::make_pair(byte, int32_t(0))),
                    {byte, next});
        nodes_.emplace_back();
      }
      node = next;
    }
    // Two added tokens with the same content: the first one wins, as in tokenizers' trie.
    if (nodes_[size_t(node)].token < 0) nodes_[size_t(node)].token = int32_t(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  const auto& kids = nodes_[size_t(node)].children;
  const auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(byte, int32_t(0)));
  return it != kids.end() && it->first == byte ? it->second : -1;
}

std::vector<Segment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<Segment> out;
  size_t emitted = 0;  // end of the last segment pushed
  size_t pos = 0;      // where the search for the next match resumes
  while (pos < text.size() && !tokens_.empty()) {
    // Leftmost-longest: the first start position with any match, and its longest match.
    size_t start = pos;
    int32_t token = -1;
    size_t stop = 0;
    for (; start < text.size(); ++start) {
      if (!first_byte_[static_cast<uint8_t>(text[start])]) continue;
      int32_t node = 0;
      for (size_t i = start; i < text.size(); ++i) {
        node = child(node, static_cast<uint8_t>(text[i]));
        if (node < 0) break;
        if (nodes_[size_t(node)].token >= 0) {
          token = nodes_[size_t(node)].token;
          stop = i + 1;
        }
      }
      if (token >= 0) break;
    }
    if (token < 0) break;
    pos = stop;  // the automaton resumes after this match whether or not it is kept
    const AddedToken& added = tokens_[size_t(token)];
    if (added.single_word) {
      const bool start_ok = start == 0 || !is_word_char(last_char(text.substr(0, start)));
      size_t after = stop;
      const bool stop_ok = stop == text.size() || !is_word_char(utf8::next(text, after));
      if (!start_ok || !stop_ok) continue;
    }
    if (added.lstrip) {
      size_t s = start;
      while (s > emitted) {
        size_t c = s - 1;
        while (c > 0 && (static_cast<uint8_t>(text[c]) & 0xC0) == 0x80) --c;
        size_t tmp = c;
        if (!utf8::is_white_space(utf8::next(text, tmp))) break;
        s = c;
      }
      start = s;
    }
    if (added.rstrip) {
      while (stop < text.size()) {
        size_t tmp = stop;
        if (!utf8::is_white_space(utf8::next(text, tmp))) break;
        stop = tmp;
      }
      pos = std::max(pos, stop);
    }
    start = std::max(start, emitted);
    if (emitted < start) out.push_back({emitted, start, -1});
    out.push_back({start, stop, added.id});
    emitted = stop;
  }
  if (emitted < text.size()) out.push_back({emitted, text.size(), -1});
  return out;
}

}  // namespace dseek
