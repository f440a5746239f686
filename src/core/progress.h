// Progress display for long work. On a terminal: one self-rewriting line with a bar, count, rate
// and ETA. When stderr is not a terminal (piped, CI, logs): a plain line every few seconds, so logs
// stay readable. Thread-compatible, not thread-safe: update from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dseek {

class Progress {
 public:
  // total 0 means unknown (no bar or ETA, just count and rate). `unit` names what is counted.
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();

  void add(int64_t n) { update(done_ + n); }
  void update(int64_t done);
  void set_total(int64_t total) { total_ = total; }
  void set_suffix(std::string suffix) { suffix_ = std::move(suffix); }  // e.g. "loss 3.21"
  void finish();

 private:
  void draw(bool final_line);

  std::string label_, unit_, suffix_;
  int64_t total_ = 0, done_ = 0;
  bool tty_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "12.3K", "4.56M": compact human counts for progress lines and tables.
std::string human_count(double value);
// "1h02m", "3m05s", "42s".
std::string human_duration(double seconds);

}  // namespace dseek
