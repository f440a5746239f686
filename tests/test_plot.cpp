// Charts: nice axes and tick labels, the bitmap font, PNG read back through libpng (size, white
// background, series colours where the layout put the points, gaps at NaN), SVG structure, and
// clear errors for charts with nothing to draw.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "plot/axis.h"
#include "plot/chart.h"
#include "plot/font5x7.h"
#include "plot/scene.h"
#include "test_plot_util.h"

using namespace dseek;
using namespace dseek::plot;
using namespace dseek::plot_testing;

namespace {

// Two series that never meet (so no point of one is painted over by the other), one with a NaN
// that splits it.
Chart two_series_chart() {
  Chart chart;
  chart.title = "Loss & <val>";
  chart.x_label = "step";
  chart.y_label = "loss";
  Series up{"train", {}, {}}, down{"validation", {}, {}};
  for (int i = 0; i <= 100; ++i) {
    up.x.push_back(i);
    up.y.push_back(i == 50 ? std::nan("") : 20.0 + 0.3 * i + std::sin(i * 0.3));
    down.x.push_back(i);
    down.y.push_back(-20.0 - 0.3 * i);
  }
  chart.series = {up, down};
  return chart;
}

// Checks that every tag is closed in order: <a ...> ... </a>, <b/>; skips <?xml ...?>.
bool tags_balanced(const std::string& xml, std::string* problem) {
  std::vector<std::string> open;
  for (size_t at = xml.find('<'); at != std::string::npos; at = xml.find('<', at + 1)) {
    const size_t end = xml.find('>', at);
    if (end == std::string::npos) return *problem = "unterminated tag", false;
    const std::string tag = xml.substr(at + 1, end - at - 1);
    if (tag.empty() || tag[0] == '?') continue;
    if (tag.back() == '/') continue;
    const std::string name =
        tag.substr(tag[0] == '/', tag.find_first_of(" \n/", 1) - (tag[0] == '/'));
    if (tag[0] == '/') {
      if (open.empty() || open.back() != name)
        return *problem = "unexpected </" + name + ">", false;
      open.pop_back();
    } else {
      open.push_back(name);
    }
  }
  if (!open.empty()) return *problem = "unclosed <" + open.back() + ">", false;
  return true;
}

}  // namespace

TEST(PlotAxis, NiceStepsAndLinearTicks) {
  EXPECT_DOUBLE_EQ(nice_step(0.13), 0.2);
  EXPECT_DOUBLE_EQ(nice_step(2.3), 2.5);
  EXPECT_DOUBLE_EQ(nice_step(7.0), 10.0);
  EXPECT_DOUBLE_EQ(nice_step(1.0), 1.0);
  EXPECT_DOUBLE_EQ(nice_step(0.0004), 0.0005);

  Axis a = linear_axis(0.3, 9.7, 5);
  EXPECT_DOUBLE_EQ(a.lo, 0.0);
  EXPECT_DOUBLE_EQ(a.hi, 10.0);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"0", "2", "4", "6", "8", "10"}));
  EXPECT_DOUBLE_EQ(a.fraction(5.0), 0.5);

  a = linear_axis(2.13, 3.87, 5);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"2.0", "2.5", "3.0", "3.5", "4.0"}));

  a = linear_axis(0.0, 3e-4, 6);  // a learning-rate axis
  EXPECT_EQ(a.labels,
            (std::vector<std::string>{"0", "5e-5", "1e-4", "1.5e-4", "2e-4", "2.5e-4", "3e-4"}));

  a = linear_axis(0, 250000, 5);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"0", "5e4", "1e5", "1.5e5", "2e5", "2.5e5"}));

  a = linear_axis(-0.7, 0.45, 5);
  EXPECT_EQ(a.labels.front(), "-0.75");
  EXPECT_EQ(a.labels.back(), "0.50");

  a = linear_axis(5, 5, 5);  // one value: a small range around it
  EXPECT_LT(a.lo, 5.0);
  EXPECT_GT(a.hi, 5.0);
  a = linear_axis(0, 0, 5);
  EXPECT_LT(a.lo, 0.0);
  EXPECT_GT(a.hi, 0.0);
}

TEST(PlotAxis, LogTicks) {
  Axis a = log_axis(0.011, 9.3);
  EXPECT_DOUBLE_EQ(a.lo, 0.01);
  EXPECT_DOUBLE_EQ(a.hi, 10.0);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1",
                                                "2", "5", "10"}));
  EXPECT_NEAR(a.fraction(1.0), 2.0 / 3.0, 1e-12);
  a = log_axis(1e-6, 1e3);  // nine decades: every other one
  EXPECT_EQ(a.labels, (std::vector<std::string>{"1e-6", "1e-4", "0.01", "1", "100", "10000"}));
  a = log_axis(2.1, 3.5);  // within a decade: every integer mantissa
  EXPECT_EQ(a.labels, (std::vector<std::string>{"2", "3", "4"}));
  a = log_axis(7, 7);  // one value: widened around it
  EXPECT_LT(a.lo, 7.0);
  EXPECT_GT(a.hi, 7.0);
  EXPECT_EQ(a.labels.front(), "3");
  EXPECT_EQ(a.labels.back(), "20");
}

TEST(PlotFont, GlyphsAreDistinctAndCellsCountCharacters) {
  std::set<std::vector<uint8_t>> seen;
  for (char c = 33; c < 127; ++c) {
    const uint8_t* rows = glyph_rows(c);
    std::vector<uint8_t> glyph(rows, rows + kGlyphHeight);
    EXPECT_TRUE(seen.insert(glyph).second) << "glyph of '" << c << "' duplicates another";
    bool any = false;
    for (uint8_t r : glyph) {
      EXPECT_EQ(r & ~0x1f, 0) << "glyph of '" << c << "' is wider than 5";
      any |= r != 0;
    }
    EXPECT_TRUE(any) << "glyph of '" << c << "' is blank";
  }
  EXPECT_EQ(glyph_rows('\x01'), glyph_rows('?'));
  EXPECT_EQ(text_cells("loss"), 4);
  EXPECT_EQ(text_cells("\xc3\xa9t\xc3\xa9"), 3);  // "été": one cell per character
}

TEST(PlotPng, DecodesWithSeriesColoursOnWhiteAndGapsAtNan) {
  TempDir dir;
  const Chart chart = two_series_chart();
  const fs::path path = dir.path / "loss.png";
  write_png(chart, path.string());
  const Image image = read_png(path);
  ASSERT_EQ(image.width, 900);
  ASSERT_EQ(image.height, 540);
  EXPECT_EQ(image.at(0, 0), 0xffffffu);
  EXPECT_EQ(image.at(899, 539), 0xffffffu);
  EXPECT_GT(image.count(0xffffff), size_t(900 * 540 / 2));
  EXPECT_GT(image.count(series_color(0)), 1000u);
  EXPECT_GT(image.count(series_color(1)), 1000u);
  EXPECT_EQ(image.count(series_color(2)), 0u);  // only two series
  EXPECT_GT(image.count(0x222222), 300u);       // text

  // Every vertex the layout placed is painted in its series' colour, except under the legend.
  const Scene scene = layout_chart(chart, 900, 540, path.string());
  std::vector<const PathItem*> paths;
  const RectItem* legend = nullptr;
  for (const SceneItem& item : scene.items) {
    if (auto* p = std::get_if<PathItem>(&item)) paths.push_back(p);
    if (auto* r = std::get_if<RectItem>(&item); r && r->stroke == 0xb0b0b0) legend = r;
  }
  ASSERT_EQ(paths.size(), 3u);  // the NaN splits "train" in two
  ASSERT_NE(legend, nullptr);
  size_t checked = 0;
  for (const PathItem* p : paths) {
    for (const auto& [x, y] : p->points) {
      if (x >= legend->x0 - 3 && x <= legend->x1 + 3 && y >= legend->y0 - 3 && y <= legend->y1 + 3)
        continue;
      ++checked;
      EXPECT_EQ(image.at(int(x), int(y)), series_color(p->series)) << x << "," << y;
    }
  }
  EXPECT_GT(checked, 150u);
  // Halfway across the gap there is no line.
  const auto& before = paths[0]->points.back();
  const auto& after = paths[1]->points.front();
  EXPECT_NE(
      image.at(int((before.first + after.first) / 2), int((before.second + after.second) / 2)),
      series_color(0));
  // The points lie inside the plot frame, which lies inside the image.
  EXPECT_GT(scene.plot_x0, 20);
  EXPECT_LT(scene.plot_x1, 900);
  EXPECT_GT(scene.plot_y0, 20);
  EXPECT_LT(scene.plot_y1, 540);
}

TEST(PlotPng, SinglePointSeriesIsADotAndSizesAreHonoured) {
  TempDir dir;
  Chart chart;
  chart.series = {{"one", {3.0}, {7.0}}};
  chart.log_y = true;
  const fs::path path = dir.path / "dot.png";
  write_png(chart, path.string(), 400, 300);
  const Image image = read_png(path);
  EXPECT_EQ(image.width, 400);
  EXPECT_EQ(image.height, 300);
  EXPECT_GT(image.count(series_color(0)), 5u);
}

TEST(PlotSvg, WellFormedWithPolylinesLabelsAndEscapedText) {
  TempDir dir;
  const fs::path path = dir.path / "loss.svg";
  write_svg(two_series_chart(), path.string());
  const std::string svg = slurp(path);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"540\""),
            std::string::npos);
  std::string problem;
  EXPECT_TRUE(tags_balanced(svg, &problem)) << problem;
  EXPECT_EQ(occurrences(svg, "<polyline"), 3u);
  EXPECT_EQ(occurrences(svg, "class=\"series-0\""), 2u);
  EXPECT_EQ(occurrences(svg, "class=\"series-1\""), 1u);
  EXPECT_NE(svg.find(fmt::format("stroke=\"#{:06x}\"", series_color(0))), std::string::npos);
  EXPECT_NE(svg.find(fmt::format("stroke=\"#{:06x}\"", series_color(1))), std::string::npos);
  EXPECT_NE(svg.find(">Loss &amp; &lt;val&gt;</text>"), std::string::npos);
  EXPECT_EQ(svg.find("<val>"), std::string::npos);
  EXPECT_NE(svg.find(">train</text>"), std::string::npos);
  EXPECT_NE(svg.find(">validation</text>"), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find("rotate(-90"), std::string::npos);   // the y label
  EXPECT_NE(svg.find(">100</text>"), std::string::npos);  // an x tick label
  // Polyline coordinates are plain numbers (no "nan", "inf").
  for (size_t at = svg.find("points=\""); at != std::string::npos;
       at = svg.find("points=\"", at + 1)) {
    const size_t begin = at + 8, end = svg.find('"', begin);
    const std::string points = svg.substr(begin, end - begin);
    EXPECT_EQ(points.find_first_not_of("0123456789., -"), std::string::npos) << points;
  }
  // No temporary left beside the output.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 1);
}

TEST(PlotErrors, NothingToDrawNamesTheFile) {
  TempDir dir;
  const std::string path = (dir.path / "empty.png").string();
  Chart chart;
  chart.title = "Empty";
  std::string err = error_of([&] { write_png(chart, path); });
  EXPECT_NE(err.find(path), std::string::npos) << err;
  EXPECT_NE(err.find("no data points"), std::string::npos) << err;
  EXPECT_NE(err.find("no series"), std::string::npos) << err;

  chart.series = {{"nan", {1, 2}, {std::nan(""), INFINITY}}};
  err = error_of([&] { write_svg(chart, path); });
  EXPECT_NE(err.find("NaN"), std::string::npos) << err;

  chart.series = {{"negative", {1, 2}, {-1, 0}}};
  chart.log_y = true;
  err = error_of([&] { write_png(chart, path); });
  EXPECT_NE(err.find("not positive"), std::string::npos) << err;

  chart.series = {{"ragged", {1, 2, 3}, {1, 2}}};
  err = error_of([&] { write_png(chart, path); });
  EXPECT_NE(err.find("'ragged' has 3 x values and 2 y values"), std::string::npos) << err;

  chart.series = {{"ok", {1, 2}, {1, 2}}};
  err = error_of([&] { write_png(chart, path, 10, 10); });
  EXPECT_NE(err.find("image size"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(path));
  err = error_of([&] { write_png(chart, (dir.path / "no" / "such" / "dir.png").string()); });
  EXPECT_NE(err.find("dir.png"), std::string::npos) << err;
}
