#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

namespace dseek {

std::string human_count(double value) {
  const char* suffixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (std::fabs(value) >= 1000.0 && i < 4) {
    value /= 1000.0;
    ++i;
  }
  return i == 0 ? fmt::format("{:.0f}", value) : fmt::format("{:.3g}{}", value, suffixes[i]);
}

std::string human_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = int64_t(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  tty_ = isatty(STDERR_FILENO) == 1;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  // A terminal redraws ten times a second; a log gets a line every five seconds.
  if (since >= (tty_ ? 0.1 : 5.0)) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? double(done_) / elapsed : 0.0;
  std::string line = label_ + " ";
  if (total_ > 0) {
    double fraction = std::min(1.0, double(done_) / double(total_));
    if (tty_) {
      const int width = 24;
      int filled = int(fraction * width);
      line += "[" + std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.') + "] ";
    }
    line += fmt::format("{:3.0f}% {}/{} {}", fraction * 100, human_count(double(done_)),
                        human_count(double(total_)), unit_);
    double eta = rate > 0 ? double(total_ - done_) / rate : NAN;
    line += fmt::format(" | {}/s | ", human_count(rate), unit_);
    line += final_line ? "took " + human_duration(elapsed) : "ETA " + human_duration(eta);
  } else {
    line += fmt::format("{} {} | {}/s | {}", human_count(double(done_)), unit_, human_count(rate),
                        human_duration(elapsed));
  }
  if (!suffix_.empty()) line += " | " + suffix_;
  if (tty_) {
    std::fprintf(stderr, "\r\033[2K%s%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace dseek
