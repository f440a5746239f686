#include "plot/axis.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace dseek::plot {

namespace {

int decade_of(double value) {
  return int(std::floor(std::log10(std::fabs(value)) + 1e-9));
}

// Decimal digits a step needs after its leading digit (2.5 × 10^k needs one more than 2 × 10^k).
int extra_digit(double step) {
  const double mantissa = step / std::pow(10.0, decade_of(step));
  return std::fabs(mantissa - std::round(mantissa)) > 1e-6 ? 1 : 0;
}

// "3e-4", "1.5e6": mantissa with `digits` decimals, trailing zeros dropped.
std::string compact_scientific(double value, int digits) {
  digits = std::clamp(digits, 0, 6);
  int exponent = decade_of(value);
  double mantissa = value / std::pow(10.0, exponent);
  const double unit = std::pow(10.0, -digits);
  if (std::fabs(std::round(mantissa / unit) * unit) >= 10.0) {  // rounds into the next decade
    exponent += 1;
    mantissa /= 10.0;
  }
  std::string text = fmt::format("{:.{}f}", mantissa, digits);
  if (text.find('.') != std::string::npos) {
    while (text.back() == '0') text.pop_back();
    if (text.back() == '.') text.pop_back();
  }
  return fmt::format("{}e{}", text, exponent);
}

}  // namespace

double Axis::fraction(double value) const {
  if (log) return (std::log10(value) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
  return (value - lo) / (hi - lo);
}

double nice_step(double raw_step) {
  const double power = std::pow(10.0, std::floor(std::log10(raw_step)));
  const double f = raw_step / power;
  const double nice = f <= 1.0 + 1e-9   ? 1.0
                      : f <= 2.0 + 1e-9 ? 2.0
                      : f <= 2.5 + 1e-9 ? 2.5
                      : f <= 5.0 + 1e-9 ? 5.0
                                        : 10.0;
  return nice * power;
}

std::string format_tick(double value, double step, double max_abs) {
  if (std::fabs(value) < step * 1e-6) return "0";
  if (max_abs < 1e-3 || max_abs >= 1e5) {
    return compact_scientific(value, decade_of(value) - decade_of(step) + extra_digit(step));
  }
  const int decimals = std::max(0, -decade_of(step) + extra_digit(step));
  return fmt::format("{:.{}f}", value, decimals);
}

Axis linear_axis(double data_lo, double data_hi, int target) {
  if (data_hi - data_lo <= std::max(std::fabs(data_lo), std::fabs(data_hi)) * 1e-12) {
    // One value: show it in the middle of a small range around it.
    const double pad = data_lo == 0 ? 1.0 : std::fabs(data_lo) * 0.1;
    data_lo -= pad;
    data_hi += pad;
  }
  Axis axis;
  const double step = nice_step((data_hi - data_lo) / std::max(target, 1));
  const double first = std::floor(data_lo / step + 1e-9), last = std::ceil(data_hi / step - 1e-9);
  axis.lo = first * step;
  axis.hi = last * step;
  const double max_abs = std::max(std::fabs(axis.lo), std::fabs(axis.hi));
  for (double k = first; k <= last + 0.5; k += 1.0) {
    double tick = k * step;
    if (std::fabs(tick) < step * 1e-9) tick = 0.0;
    axis.ticks.push_back(tick);
    axis.labels.push_back(format_tick(tick, step, max_abs));
  }
  return axis;
}

Axis log_axis(double data_lo, double data_hi) {
  Axis axis;
  axis.log = true;
  if (data_hi <= data_lo * (1 + 1e-12)) {  // one value: a factor of two either side
    data_lo /= 2;
    data_hi *= 2;
  }
  const double span = std::log10(data_hi) - std::log10(data_lo);
  std::vector<double> mantissas;
  int decade_step = 1;
  if (span < 1.0) {
    mantissas = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  } else if (span <= 3.0) {
    mantissas = {1, 2, 5};
  } else {
    mantissas = {1};
    decade_step = int(std::ceil(span / 8.0));
  }
  // Candidates from one decade below the data to one above, then the range they bracket.
  std::vector<double> candidates;
  int first = int(std::floor(std::log10(data_lo))) - 1,
      last = int(std::ceil(std::log10(data_hi))) + 1;
  first -= ((first % decade_step) + decade_step) % decade_step;  // align to the decade step
  for (int k = first; k <= last + decade_step; k += decade_step) {
    for (double m : mantissas) candidates.push_back(m * std::pow(10.0, k));
  }
  const double tol = 1e-9;
  axis.lo = candidates.front();
  for (double c : candidates)
    if (c <= data_lo * (1 + tol)) axis.lo = c;
  axis.hi = candidates.back();
  for (auto it = candidates.rbegin(); it != candidates.rend(); ++it)
    if (*it >= data_hi * (1 - tol)) axis.hi = *it;
  if (axis.hi <= axis.lo) axis.hi = axis.lo * 10;
  for (double c : candidates) {
    if (c < axis.lo * (1 - tol) || c > axis.hi * (1 + tol)) continue;
    axis.ticks.push_back(c);
    const int exponent = decade_of(c);
    if (c >= 1e-3 && c < 1e5) {
      axis.labels.push_back(fmt::format("{:.{}f}", c, std::max(0, -exponent)));
    } else {
      axis.labels.push_back(compact_scientific(c, 0));
    }
  }
  return axis;
}

}  // namespace dseek::plot
