// Segments: the lengths of the sequences packed back to back in a training batch (layers.h).
#include "core/error.h"
#include "train/layers.h"

namespace dseek::train {

Segments equal_segments(int64_t tokens, int64_t seq_len) {
  DSEEK_CHECK(seq_len > 0 && tokens % seq_len == 0,
              "[train] {} tokens are not whole sequences of {}", tokens, seq_len);
  return Segments(size_t(tokens / seq_len), seq_len);
}

void check_segments(const Segments& segments, int64_t tokens, const std::string& where) {
  int64_t total = 0;
  for (int64_t n : segments) {
    DSEEK_CHECK(n >= 0, "[train] {}: negative segment length {}", where, n);
    total += n;
  }
  DSEEK_CHECK(total == tokens, "[train] {}: segment lengths sum to {}, the batch has {} tokens",
              where, total, tokens);
}

}  // namespace dseek::train
