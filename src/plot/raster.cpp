#include "plot/raster.h"

#include <algorithm>
#include <cmath>

#include "plot/font5x7.h"

namespace dseek::plot {

namespace {

// Distance from (px, py) to the segment (x0, y0)-(x1, y1).
double segment_distance(double px, double py, double x0, double y0, double x1, double y1) {
  const double dx = x1 - x0, dy = y1 - y0;
  const double length2 = dx * dx + dy * dy;
  double t = length2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / length2 : 0.0;
  t = std::clamp(t, 0.0, 1.0);
  return std::hypot(px - (x0 + t * dx), py - (y0 + t * dy));
}

// Overlap of [a, b) with the pixel [i, i + 1).
double overlap(double a, double b, int i) {
  return std::max(0.0, std::min(b, double(i + 1)) - std::max(a, double(i)));
}

}  // namespace

Canvas::Canvas(int width, int height, unsigned background)
    : width_(width),
      height_(height),
      rgb_(size_t(width) * size_t(height) * 3),
      mask_(size_t(width) * size_t(height), 0.0f),
      dirty_x0_(width),
      dirty_y0_(height),
      dirty_x1_(0),
      dirty_y1_(0) {
  for (size_t i = 0; i < size_t(width) * size_t(height); ++i) {
    rgb_[3 * i] = uint8_t(background >> 16);
    rgb_[3 * i + 1] = uint8_t(background >> 8);
    rgb_[3 * i + 2] = uint8_t(background);
  }
}

unsigned Canvas::pixel(int x, int y) const {
  const uint8_t* p = &rgb_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
  return (unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2];
}

void Canvas::blend(int x, int y, unsigned color, float alpha) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_ || alpha <= 0.0f) return;
  alpha = std::min(alpha, 1.0f);
  uint8_t* p = &rgb_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
  for (int c = 0; c < 3; ++c) {
    const float target = float((color >> (16 - 8 * c)) & 0xff);
    p[c] = uint8_t(std::lround(p[c] + (target - p[c]) * alpha));
  }
}

void Canvas::fill_rect(double x0, double y0, double x1, double y1, unsigned color) {
  if (x1 < x0) std::swap(x0, x1);
  if (y1 < y0) std::swap(y0, y1);
  const int i0 = std::max(0, int(std::floor(x0))), i1 = std::min(width_, int(std::ceil(x1)));
  const int j0 = std::max(0, int(std::floor(y0))), j1 = std::min(height_, int(std::ceil(y1)));
  for (int j = j0; j < j1; ++j) {
    const double cy = overlap(y0, y1, j);
    for (int i = i0; i < i1; ++i) blend(i, j, color, float(cy * overlap(x0, x1, i)));
  }
}

void Canvas::cover_capsule(double x0, double y0, double x1, double y1, double radius) {
  const double reach = radius + 1.0;
  const int i0 = std::max(0, int(std::floor(std::min(x0, x1) - reach)));
  const int i1 = std::min(width_, int(std::ceil(std::max(x0, x1) + reach)));
  const int j0 = std::max(0, int(std::floor(std::min(y0, y1) - reach)));
  const int j1 = std::min(height_, int(std::ceil(std::max(y0, y1) + reach)));
  for (int j = j0; j < j1; ++j) {
    for (int i = i0; i < i1; ++i) {
      // Coverage ramps from 1 to 0 across the pixel that straddles the edge.
      const double d = segment_distance(i + 0.5, j + 0.5, x0, y0, x1, y1);
      const float coverage = float(std::clamp(radius + 0.5 - d, 0.0, 1.0));
      float& m = mask_[size_t(j) * size_t(width_) + size_t(i)];
      m = std::max(m, coverage);
    }
  }
  dirty_x0_ = std::min(dirty_x0_, i0), dirty_x1_ = std::max(dirty_x1_, i1);
  dirty_y0_ = std::min(dirty_y0_, j0), dirty_y1_ = std::max(dirty_y1_, j1);
}

void Canvas::flush_mask(unsigned color) {
  for (int j = dirty_y0_; j < dirty_y1_; ++j) {
    for (int i = dirty_x0_; i < dirty_x1_; ++i) {
      float& m = mask_[size_t(j) * size_t(width_) + size_t(i)];
      blend(i, j, color, m);
      m = 0.0f;
    }
  }
  dirty_x0_ = width_, dirty_y0_ = height_, dirty_x1_ = 0, dirty_y1_ = 0;
}

void Canvas::stroke_line(double x0, double y0, double x1, double y1, double width, unsigned color) {
  // Axis-parallel lines are rectangles: exact coverage keeps 1-pixel grid lines crisp.
  if (x0 == x1 || y0 == y1) {
    const double h = width / 2;
    if (y0 == y1)
      fill_rect(std::min(x0, x1), y0 - h, std::max(x0, x1), y0 + h, color);
    else
      fill_rect(x0 - h, std::min(y0, y1), x0 + h, std::max(y0, y1), color);
    return;
  }
  cover_capsule(x0, y0, x1, y1, width / 2);
  flush_mask(color);
}

void Canvas::stroke_polyline(const std::vector<std::pair<double, double>>& points, double width,
                             unsigned color) {
  for (size_t k = 1; k < points.size(); ++k) {
    cover_capsule(points[k - 1].first, points[k - 1].second, points[k].first, points[k].second,
                  width / 2);
  }
  flush_mask(color);
}

void Canvas::fill_circle(double cx, double cy, double radius, unsigned color) {
  cover_capsule(cx, cy, cx, cy, radius);
  flush_mask(color);
}

void Canvas::draw_text(std::string_view text, int x, int y, int scale, bool vertical,
                       unsigned color) {
  int cell = 0;
  for (char c : text) {
    if ((static_cast<unsigned char>(c) & 0xc0) == 0x80) continue;  // UTF-8 continuation
    const uint8_t* rows = glyph_rows(c);
    const int drop = glyph_drop(c);
    for (int r = 0; r < kGlyphHeight; ++r) {
      for (int col = 0; col < kGlyphWidth; ++col) {
        if (!(rows[r] & (0x10 >> col))) continue;
        const int u = (cell * kCellWidth + col) * scale,
                  v = (r + drop) * scale;  // along, across the text
        for (int a = 0; a < scale; ++a) {
          for (int b = 0; b < scale; ++b) {
            if (vertical)
              blend(x + v + b, y - 1 - (u + a), color, 1.0f);
            else
              blend(x + u + a, y + v + b, color, 1.0f);
          }
        }
      }
    }
    ++cell;
  }
}

}  // namespace dseek::plot
