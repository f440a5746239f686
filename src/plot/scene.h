// A chart laid out in pixels: the display list both renderers draw (svg.cpp writes each item as an
// element, png.cpp rasterises it), so the two outputs agree. Coordinates are pixels from the top
// left, y down; colours are 0xRRGGBB. Text uses the 5×7 font's metrics (plot/font5x7.h): a
// character is 6·scale pixels wide and its glyph 7·scale tall; the SVG uses a monospace font of
// size 10·scale, whose advance is the same 6·scale.
#pragma once

#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "plot/chart.h"

namespace dseek::plot {

constexpr unsigned kNoFill = 0xffffffffu;  // a RectItem's fill: outline only

struct RectItem {
  double x0, y0, x1, y1;
  unsigned fill;    // or kNoFill
  unsigned stroke;  // used when stroke_width > 0
  double stroke_width = 0;
};

struct LineItem {  // a straight line (grid lines, axis ticks, legend swatches)
  double x0, y0, x1, y1;
  unsigned color;
  double width;
};

struct PathItem {  // one unbroken run of a series: a polyline, or a dot (radius 2·width) when it
                   // has one point
  std::vector<std::pair<double, double>> points;
  unsigned color;
  double width;
  size_t series;  // index into Chart::series
};

enum class Anchor { Start, Middle, End };

struct TextItem {
  std::string text;
  double x, y;  // the anchor point, vertically centred on the glyphs
  int scale;
  Anchor anchor;
  bool vertical;  // rotated a quarter turn anticlockwise (reads bottom to top)
  unsigned color;
};

using SceneItem = std::variant<RectItem, LineItem, PathItem, TextItem>;

struct Scene {
  int width = 0, height = 0;
  double plot_x0 = 0, plot_y0 = 0, plot_x1 = 0, plot_y1 = 0;  // the data area
  std::vector<SceneItem> items;                               // in drawing order
};

// Lays out `chart` in a width × height image. `path` names the output in errors: a chart with no
// drawable point, series whose x and y differ in length, an image too small.
Scene layout_chart(const Chart& chart, int width, int height, const std::string& path);

}  // namespace dseek::plot
