#include "train/schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dseek::train {

namespace {

// m + (P − m)·(1 + cos(π·u))/2 with u clamped to [0, 1].
double cosine_between(double peak, double min, double u) {
  u = std::clamp(u, 0.0, 1.0);
  return min + (peak - min) * 0.5 * (1.0 + std::cos(std::numbers::pi * u));
}

int64_t wsd_decay_step(const LrSchedule& s) {
  return std::llround(s.decay_start * double(s.total_steps));
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

}  // namespace

void LrSchedule::validate() const {
  DSEEK_CHECK(kind == "constant" || kind == "cosine" || kind == "wsd" || kind == "multistep",
              "[schedule] lr schedule: unknown kind '{}' (constant, cosine, wsd, multistep)", kind);
  DSEEK_CHECK(std::isfinite(peak_lr) && peak_lr > 0.0,
              "[schedule] lr schedule: peak_lr {} must be > 0", peak_lr);
  if (kind == "cosine" || kind == "wsd")
    DSEEK_CHECK(std::isfinite(min_lr) && min_lr >= 0.0 && min_lr <= peak_lr,
                "[schedule] lr schedule: min_lr {} must be in [0, peak_lr = {}]", min_lr, peak_lr);
  DSEEK_CHECK(total_steps >= 1, "[schedule] lr schedule: total_steps {} must be >= 1", total_steps);
  DSEEK_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps,
              "[schedule] lr schedule: warmup_steps {} must be in [0, total_steps = {}]",
              warmup_steps, total_steps);
  if (kind == "wsd") {
    DSEEK_CHECK(decay_start > 0.0 && decay_start <= 1.0,
                "[schedule] lr schedule: decay_start {} must be in (0, 1]", decay_start);
    DSEEK_CHECK(wsd_decay_step(*this) >= warmup_steps,
                "[schedule] lr schedule: wsd decay starts at step {} (decay_start {} of {} steps), "
                "inside the {} warm-up steps",
                wsd_decay_step(*this), decay_start, total_steps, warmup_steps);
  }
}

double LrSchedule::at(int64_t step) const {
  validate();
  DSEEK_CHECK(step >= 0, "[schedule] lr schedule: step {} is negative", step);
  const int64_t s = std::min(step, total_steps - 1);
  if (s < warmup_steps) return peak_lr * double(s + 1) / double(warmup_steps);
  const int64_t last = total_steps - 1;
  if (kind == "constant") return peak_lr;
  if (kind == "cosine") {
    const int64_t span = last - warmup_steps;
    return cosine_between(peak_lr, min_lr,
                          span > 0 ? double(s - warmup_steps) / double(span) : 1.0);
  }
  if (kind == "wsd") {
    const int64_t start = wsd_decay_step(*this);
    if (s < start) return peak_lr;
    const int64_t span = last - start;
    return cosine_between(peak_lr, min_lr, span > 0 ? double(s - start) / double(span) : 1.0);
  }
  // multistep; integer comparisons so the boundaries are exact: s ≥ 0.9·N ⇔ 10·s ≥ 9·N.
  if (10 * s >= 9 * total_steps) return 0.1 * peak_lr;
  if (10 * s >= 8 * total_steps) return 0.316 * peak_lr;
  return peak_lr;
}

StepSchedule StepSchedule::parse(const std::string& text) {
  StepSchedule out;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    const std::string piece =
        trim(text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
    const size_t at_sign = piece.find('@');
    const std::string value_text = trim(piece.substr(0, at_sign));
    double value = 0.0;
    const auto [vend, verr] =
        std::from_chars(value_text.data(), value_text.data() + value_text.size(), value);
    DSEEK_CHECK(!value_text.empty() && verr == std::errc() &&
                    vend == value_text.data() + value_text.size() && std::isfinite(value),
                "[schedule] '{}': piece '{}' does not start with a number", text, piece);
    int64_t from = 0;
    if (at_sign != std::string::npos) {
      const std::string step_text = trim(piece.substr(at_sign + 1));
      const auto [send, serr] =
          std::from_chars(step_text.data(), step_text.data() + step_text.size(), from);
      DSEEK_CHECK(!step_text.empty() && serr == std::errc() &&
                      send == step_text.data() + step_text.size() && from >= 0,
                  "[schedule] '{}': piece '{}' has no valid step after '@'", text, piece);
    }
    if (out.pieces_.empty()) {
      DSEEK_CHECK(from == 0, "[schedule] '{}': the first value must apply from step 0, not {}",
                  text, from);
    } else {
      DSEEK_CHECK(at_sign != std::string::npos,
                  "[schedule] '{}': piece '{}' needs '@<step>' (only the first value starts at 0)",
                  text, piece);
      DSEEK_CHECK(from > out.pieces_.back().first,
                  "[schedule] '{}': step {} of piece '{}' must be after step {}", text, from, piece,
                  out.pieces_.back().first);
    }
    out.pieces_.emplace_back(from, value);
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

double StepSchedule::at(int64_t step) const {
  double value = 0.0;
  for (const auto& [from, v] : pieces_) {
    if (step < from) break;
    value = v;
  }
  return value;
}

std::string StepSchedule::str() const {
  std::string out;
  for (const auto& [from, v] : pieces_) {
    if (!out.empty()) out += ',';
    out += from == 0 ? fmt::format("{}", v) : fmt::format("{}@{}", v, from);
  }
  return out;
}

}  // namespace dseek::train
