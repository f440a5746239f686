// Axis ranges, tick positions and tick labels ("nice numbers", after Heckbert, "Nice numbers for
// graph labels", Graphics Gems, 1990).
//
// Linear axis: the tick step is 1, 2, 2.5 or 5 × 10^k, chosen so that about `target` ticks span
// the data, and the axis is widened to the multiples of the step around the data. Labels use
// fixed notation with the decimals the step needs ("0.25", "1500"), or a compact scientific one
// ("3e-4", "1.5e6") when the values are below 1e-3 or from 1e5 up.
//
// Log axis (base 10, positive data): ticks at m × 10^k with m from {1..9} when the data spans
// less than a decade, {1, 2, 5} up to three decades, whole decades (every d-th one, so at most
// about eight) beyond; the axis is widened to the ticks around the data.
#pragma once

#include <string>
#include <vector>

namespace dseek::plot {

struct Axis {
  double lo = 0, hi = 1;  // the visible range, in data units
  bool log = false;
  std::vector<double> ticks;        // in data units, ascending, all within [lo, hi]
  std::vector<std::string> labels;  // one per tick

  // Where `value` falls on the axis, 0 at lo and 1 at hi (log10 on a log axis).
  double fraction(double value) const;
};

// The nice step nearest above raw_step: 1, 2, 2.5 or 5 × 10^k.
double nice_step(double raw_step);

// Axis through data in [data_lo, data_hi] (finite, data_lo <= data_hi) with about `target` ticks.
Axis linear_axis(double data_lo, double data_hi, int target);
// As linear_axis for positive data on a log10 scale.
Axis log_axis(double data_lo, double data_hi);

// Label of a tick `value` on an axis whose ticks are `step` apart and reach magnitude
// `max_abs`.
std::string format_tick(double value, double step, double max_abs);

}  // namespace dseek::plot
