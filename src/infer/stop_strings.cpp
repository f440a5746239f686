#include "infer/stop_strings.h"

#include <algorithm>

#include "core/error.h"

namespace dseek {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& s : stops_) {
    DSEEK_CHECK(!s.empty(), "[generate] stop: empty stop string");
    max_stop_ = std::max(max_stop_, s.size());
  }
}

std::string StopStringMatcher::push(std::string_view piece) {
  if (stopped_) return "";
  const size_t old_size = text_.size();
  text_.append(piece);
  if (stops_.empty()) {
    std::string out = text_.substr(emitted_);
    emitted_ = text_.size();
    return out;
  }
  // A new match must end inside the new piece, so it starts at most max_stop_ - 1 bytes earlier.
  const size_t from = old_size >= max_stop_ - 1 ? old_size - (max_stop_ - 1) : 0;
  size_t match = std::string::npos;
  for (const std::string& s : stops_) match = std::min(match, text_.find(s, from));
  if (match != std::string::npos) {
    text_.resize(match);
    stopped_ = true;
    std::string out = text_.substr(std::min(emitted_, text_.size()));
    emitted_ = text_.size();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k) {
      if (std::string_view(text_).substr(text_.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  const size_t ready = std::max(emitted_, text_.size() - hold);
  std::string out = text_.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return out;
}

std::string StopStringMatcher::finish() {
  if (stopped_) return "";
  std::string out = text_.substr(emitted_);
  emitted_ = text_.size();
  return out;
}

}  // namespace dseek
