// An RGB image in memory and the few drawing operations charts need, anti-aliased by coverage:
// each pixel (i, j) covers [i, i+1) × [j, j+1), and a shape tints it in proportion to the part of
// that square it covers (estimated from the distance of the pixel centre to the shape's edge).
// Strokes first accumulate coverage in a mask (the maximum over their segments, so the joints of a
// polyline are not painted twice), then tint the image once.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace dseek::plot {

class Canvas {
 public:
  Canvas(int width, int height, unsigned background);

  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& rgb() const { return rgb_; }  // row-major, 3 bytes a pixel
  unsigned pixel(int x, int y) const;                       // 0xRRGGBB

  // Area-weighted fill of an axis-aligned rectangle (exact coverage at fractional edges).
  void fill_rect(double x0, double y0, double x1, double y1, unsigned color);
  // A line of `width` pixels with round caps (a capsule around the segment).
  void stroke_line(double x0, double y0, double x1, double y1, double width, unsigned color);
  // A polyline with round joins.
  void stroke_polyline(const std::vector<std::pair<double, double>>& points, double width,
                       unsigned color);
  void fill_circle(double cx, double cy, double radius, unsigned color);
  // Text in the 5×7 font, each font pixel a scale×scale block; (x, y) is the top left of the first
  // glyph. vertical: rotated a quarter turn anticlockwise, (x, y) then the bottom left.
  void draw_text(std::string_view text, int x, int y, int scale, bool vertical, unsigned color);

 private:
  void blend(int x, int y, unsigned color, float alpha);
  // Adds a capsule's coverage into mask_ and grows the dirty box.
  void cover_capsule(double x0, double y0, double x1, double y1, double radius);
  void flush_mask(unsigned color);

  int width_, height_;
  std::vector<uint8_t> rgb_;
  std::vector<float> mask_;                        // stroke coverage, all zero between strokes
  int dirty_x0_, dirty_y0_, dirty_x1_, dirty_y1_;  // the mask's touched box (exclusive ends)
};

}  // namespace dseek::plot
