// Stop strings on streamed text. Text arrives in pieces (one per token, possibly empty while a
// UTF-8 character is incomplete); a stop string may span pieces. The matcher releases text only
// when no stop string can still begin in it, and on a match cuts the text before the stop string.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dseek {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);  // empty strings are refused

  // Appends a piece; returns the text that is now safe to emit. After a match, stopped() is true
  // and the returned text ends just before the stop string.
  std::string push(std::string_view piece);
  // End of generation: releases the held-back tail (nothing after a match).
  std::string finish();

  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // all accepted text (cut at the match)

 private:
  std::vector<std::string> stops_;
  size_t max_stop_ = 0;
  std::string text_;
  size_t emitted_ = 0;
  bool stopped_ = false;
};

}  // namespace dseek
