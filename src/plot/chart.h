// Line charts written as SVG or PNG with no dependency beyond libpng: training curves (loss,
// learning rate, MaxVio) and expert loads. One layout (plot/layout.h) feeds both renderers, so the
// two files show the same axes, ticks, legend and title.
//
// Points whose x or y is not finite (NaN, inf), or whose y is not positive on a log axis, are
// left out and break the line there (a gap rather than an invented segment); a point with no
// neighbour on either side is drawn as a dot. Axes get "nice" ticks (1, 2, 2.5, 5 × 10^k, or
// decades on a log axis); series take distinct colours in order. A chart with no drawable point
// is an error naming the output file and the chart.
#pragma once

#include <string>
#include <vector>

namespace dseek::plot {

struct Series {
  std::string label;
  std::vector<double> x, y;  // same length
};

struct Chart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool log_y = false;
};

// Both write atomically (a temporary file in the same directory, fsync, rename).
void write_svg(const Chart& chart, const std::string& path, int width = 900, int height = 540);
void write_png(const Chart& chart, const std::string& path, int width = 900, int height = 540);

// The colour of series i as 0xRRGGBB (a 10-colour palette, repeating).
unsigned series_color(size_t index);

}  // namespace dseek::plot
