// Layout of a line chart: margins sized from the text they hold (title, axis labels, the widest
// tick label), nice axes over the drawable points, and a legend placed in the corner of the data
// area that covers the fewest points.
#include "plot/scene.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "plot/axis.h"
#include "plot/font5x7.h"

namespace dseek::plot {

namespace {

// Tableau 10 (matplotlib's default cycle): distinguishable, and readable on white.
constexpr unsigned kPalette[10] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd,
                                   0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf};
constexpr unsigned kBackground = 0xffffff, kText = 0x222222, kAxis = 0x444444, kGrid = 0xe4e4e4,
                   kLegendStroke = 0xb0b0b0;

double text_width(std::string_view text, int scale) {
  const int cells = text_cells(text);
  return cells == 0 ? 0.0 : double(cells * kCellWidth - 1) * scale;  // no spacing after the last
}
double text_height(int scale) {
  return double(kGlyphHeight * scale);
}

struct Run {
  size_t series;
  std::vector<std::pair<double, double>> points;  // data units
};

struct Bounds {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
};

// Splits every series into runs of drawable points.
std::vector<Run> drawable_runs(const Chart& chart, const std::string& path, Bounds* bounds) {
  std::vector<Run> runs;
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const Series& s = chart.series[i];
    DSEEK_CHECK(s.x.size() == s.y.size(), "[plot] {}: series '{}' has {} x values and {} y values",
                path, s.label, s.x.size(), s.y.size());
    Run run{i, {}};
    for (size_t j = 0; j <= s.x.size(); ++j) {
      const bool ok = j < s.x.size() && std::isfinite(s.x[j]) && std::isfinite(s.y[j]) &&
                      (!chart.log_y || s.y[j] > 0);
      if (ok) {
        run.points.emplace_back(s.x[j], s.y[j]);
        bounds->x_lo = std::min(bounds->x_lo, s.x[j]);
        bounds->x_hi = std::max(bounds->x_hi, s.x[j]);
        bounds->y_lo = std::min(bounds->y_lo, s.y[j]);
        bounds->y_hi = std::max(bounds->y_hi, s.y[j]);
      } else if (!run.points.empty()) {
        runs.push_back(std::move(run));
        run = Run{i, {}};
      }
    }
  }
  return runs;
}

}  // namespace

unsigned series_color(size_t index) {
  return kPalette[index % std::size(kPalette)];
}

Scene layout_chart(const Chart& chart, int width, int height, const std::string& path) {
  DSEEK_CHECK(width >= 200 && height >= 150 && width <= 16384 && height <= 16384,
              "[plot] {}: image size {}x{} is out of range (200x150 to 16384x16384)", path, width,
              height);
  Bounds bounds;
  std::vector<Run> runs = drawable_runs(chart, path, &bounds);
  DSEEK_CHECK(
      !runs.empty(), "[plot] {}: chart '{}' has no data points to draw ({})", path, chart.title,
      chart.series.empty() ? "no series"
      : chart.log_y        ? "every value is missing, NaN, infinite or not positive on the log axis"
                           : "every value is missing, NaN or infinite");

  Scene scene;
  scene.width = width;
  scene.height = height;
  const int s = std::max(1, std::min(width / 450, height / 270));  // text and stroke scale
  const double pad = 6.0 * s, gap = 3.0 * s, tick_len = 3.0 * s, th = text_height(s);
  const int title_scale = text_width(chart.title, s + 1) <= width - 2 * pad ? s + 1 : s;

  // Vertical margins first: they fix the plot height, which sets the number of y ticks, whose
  // widest label then sets the left margin.
  const double top = pad + (chart.title.empty() ? th / 2 : text_height(title_scale) + pad + th / 2);
  const double bottom = pad + tick_len + gap + th + (chart.x_label.empty() ? 0 : 2 * gap + th);
  const double plot_h = height - top - bottom;
  const int y_target = std::clamp(int(plot_h / (30.0 * s)), 2, 8);
  const Axis y_axis = chart.log_y ? log_axis(bounds.y_lo, bounds.y_hi)
                                  : linear_axis(bounds.y_lo, bounds.y_hi, y_target);
  double y_label_w = 0;
  for (const std::string& label : y_axis.labels)
    y_label_w = std::max(y_label_w, text_width(label, s));
  const double left = pad + (chart.y_label.empty() ? 0 : th + 2 * gap) + y_label_w + gap + tick_len;

  // x ticks: as many as fit without their labels touching.
  Axis x_axis;
  double right = pad;
  for (int x_target = std::clamp(int((width - left - pad) / (50.0 * s)), 2, 10);; --x_target) {
    x_axis = linear_axis(bounds.x_lo, bounds.x_hi, x_target);
    double widest = 0;
    for (const std::string& label : x_axis.labels) widest = std::max(widest, text_width(label, s));
    right = std::max(pad, text_width(x_axis.labels.back(), s) / 2 + s);
    const double spacing =
        (width - left - right) / double(std::max<size_t>(x_axis.ticks.size() - 1, 1));
    if (spacing >= widest + 3 * gap || x_target <= 2) break;
  }

  const double x0 = std::round(left), x1 = std::round(width - right);
  const double y0 = std::round(top), y1 = std::round(height - bottom);
  scene.plot_x0 = x0, scene.plot_x1 = x1, scene.plot_y0 = y0, scene.plot_y1 = y1;
  auto px = [&](double x) { return x0 + x_axis.fraction(x) * (x1 - x0); };
  auto py = [&](double y) { return y1 - y_axis.fraction(y) * (y1 - y0); };
  auto& items = scene.items;

  items.push_back(RectItem{0, 0, double(width), double(height), kBackground, 0, 0});
  for (double t : y_axis.ticks)
    if (py(t) > y0 + 0.5 && py(t) < y1 - 0.5)
      items.push_back(LineItem{x0, py(t), x1, py(t), kGrid, 1});
  for (double t : x_axis.ticks)
    if (px(t) > x0 + 0.5 && px(t) < x1 - 0.5)
      items.push_back(LineItem{px(t), y0, px(t), y1, kGrid, 1});

  // The series, in pixels.
  std::vector<PathItem> paths;
  for (const Run& run : runs) {
    PathItem path_item{{}, series_color(run.series), 1.25 * s, run.series};
    path_item.points.reserve(run.points.size());
    for (const auto& [x, y] : run.points) path_item.points.emplace_back(px(x), py(y));
    paths.push_back(std::move(path_item));
  }
  // The frame goes under the series: data on the axis bounds stays visible.
  items.push_back(RectItem{x0, y0, x1, y1, kNoFill, kAxis, 1});
  for (const PathItem& p : paths) items.push_back(p);

  for (size_t i = 0; i < y_axis.ticks.size(); ++i) {
    const double y = py(y_axis.ticks[i]);
    items.push_back(LineItem{x0 - tick_len, y, x0, y, kAxis, 1});
    items.push_back(
        TextItem{y_axis.labels[i], x0 - tick_len - gap, y, s, Anchor::End, false, kText});
  }
  for (size_t i = 0; i < x_axis.ticks.size(); ++i) {
    const double x = px(x_axis.ticks[i]);
    items.push_back(LineItem{x, y1, x, y1 + tick_len, kAxis, 1});
    items.push_back(TextItem{x_axis.labels[i], x, y1 + tick_len + gap + th / 2, s, Anchor::Middle,
                             false, kText});
  }

  // Legend (two or more series): one row per series while they fit, then "+N more".
  if (chart.series.size() >= 2) {
    const double row_h = kCellHeight * s + 2.0 * s, swatch = 12.0 * s;
    const int fit = std::max(1, int((y1 - y0 - 4 * pad) / row_h));
    const size_t n = chart.series.size();
    const size_t shown = n <= size_t(fit) ? n : size_t(fit - 1);
    std::vector<std::string> labels;
    for (size_t i = 0; i < shown; ++i)
      labels.push_back(chart.series[i].label.empty() ? fmt::format("series {}", i)
                                                     : chart.series[i].label);
    if (shown < n) labels.push_back(fmt::format("+{} more", n - shown));
    double label_w = 0;
    for (const std::string& label : labels) label_w = std::max(label_w, text_width(label, s));
    const double box_w = 2 * pad + swatch + gap + label_w,
                 box_h = 2 * pad + labels.size() * row_h - 2.0 * s;
    // Corners in order of preference; pick the one over the fewest points and segment midpoints.
    const std::array<std::pair<double, double>, 4> corners = {
        std::pair{x1 - pad - box_w, y0 + pad}, std::pair{x0 + pad, y0 + pad},
        std::pair{x1 - pad - box_w, y1 - pad - box_h}, std::pair{x0 + pad, y1 - pad - box_h}};
    size_t best = 0, best_count = std::numeric_limits<size_t>::max();
    for (size_t c = 0; c < corners.size(); ++c) {
      const double bx = corners[c].first, by = corners[c].second;  // clang 14: no captured bindings
      auto inside = [&](double x, double y) {
        return x >= bx && x <= bx + box_w && y >= by && y <= by + box_h;
      };
      size_t count = 0;
      for (const PathItem& p : paths) {
        for (size_t k = 0; k < p.points.size(); ++k) {
          count += inside(p.points[k].first, p.points[k].second);
          if (k > 0) {
            count += inside((p.points[k].first + p.points[k - 1].first) / 2,
                            (p.points[k].second + p.points[k - 1].second) / 2);
          }
        }
      }
      if (count < best_count) best = c, best_count = count;
    }
    const auto [bx, by] = corners[best];
    items.push_back(RectItem{bx, by, bx + box_w, by + box_h, kBackground, kLegendStroke, 1});
    for (size_t i = 0; i < labels.size(); ++i) {
      const double cy = by + pad + i * row_h + th / 2;
      if (i < shown) {
        items.push_back(LineItem{bx + pad, cy, bx + pad + swatch, cy, series_color(i), 2.0 * s});
      }
      items.push_back(
          TextItem{labels[i], bx + pad + swatch + gap, cy, s, Anchor::Start, false, kText});
    }
  }

  if (!chart.title.empty()) {
    items.push_back(TextItem{chart.title, width / 2.0, pad + text_height(title_scale) / 2,
                             title_scale, Anchor::Middle, false, kText});
  }
  if (!chart.x_label.empty()) {
    items.push_back(TextItem{chart.x_label, (x0 + x1) / 2, height - pad - th / 2, s, Anchor::Middle,
                             false, kText});
  }
  if (!chart.y_label.empty()) {
    items.push_back(
        TextItem{chart.y_label, pad + th / 2, (y0 + y1) / 2, s, Anchor::Middle, true, kText});
  }
  return scene;
}

}  // namespace dseek::plot
