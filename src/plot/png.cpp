// PNG output: the scene rasterised on a Canvas (plot/raster.h), then encoded by libpng as 8-bit
// RGB into memory and written atomically.
#include <png.h>

#include <cmath>
#include <csetjmp>
#include <cstring>

#include "core/error.h"
#include "plot/chart.h"
#include "plot/font5x7.h"
#include "plot/output_file.h"
#include "plot/raster.h"
#include "plot/scene.h"

namespace dseek::plot {

namespace {

// Snaps a line's centre so that a line of odd pixel width covers whole pixels (x.5 centres) and
// one of even width sits on a pixel boundary: grid lines and ticks stay crisp.
double snap(double centre, double width) {
  const long w = std::lround(width);
  return w % 2 ? std::floor(centre) + 0.5 : std::round(centre);
}

struct PngRenderer {
  Canvas& canvas;

  void operator()(const RectItem& r) {
    if (r.fill != kNoFill) canvas.fill_rect(r.x0, r.y0, r.x1, r.y1, r.fill);
    if (r.stroke_width > 0) {
      const double w = r.stroke_width;
      const double x0 = snap(r.x0, w), x1 = snap(r.x1, w), y0 = snap(r.y0, w), y1 = snap(r.y1, w);
      canvas.fill_rect(x0 - w / 2, y0 - w / 2, x1 + w / 2, y0 + w / 2, r.stroke);
      canvas.fill_rect(x0 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2, r.stroke);
      canvas.fill_rect(x0 - w / 2, y0 + w / 2, x0 + w / 2, y1 - w / 2, r.stroke);
      canvas.fill_rect(x1 - w / 2, y0 + w / 2, x1 + w / 2, y1 - w / 2, r.stroke);
    }
  }
  void operator()(const LineItem& l) {
    if (l.y0 == l.y1) {
      const double y = snap(l.y0, l.width);
      canvas.stroke_line(l.x0, y, l.x1, y, l.width, l.color);
    } else if (l.x0 == l.x1) {
      const double x = snap(l.x0, l.width);
      canvas.stroke_line(x, l.y0, x, l.y1, l.width, l.color);
    } else {
      canvas.stroke_line(l.x0, l.y0, l.x1, l.y1, l.width, l.color);
    }
  }
  void operator()(const PathItem& p) {
    if (p.points.size() == 1) {
      canvas.fill_circle(p.points[0].first, p.points[0].second, p.width * 2, p.color);
    } else {
      canvas.stroke_polyline(p.points, p.width, p.color);
    }
  }
  void operator()(const TextItem& t) {
    const int length = text_cells(t.text) * kCellWidth * t.scale - t.scale;
    const int shift = t.anchor == Anchor::Start ? 0 : t.anchor == Anchor::End ? length : length / 2;
    const int half = kGlyphHeight * t.scale / 2;
    if (t.vertical) {
      canvas.draw_text(t.text, int(std::lround(t.x)) - half, int(std::lround(t.y)) + shift, t.scale,
                       true, t.color);
    } else {
      canvas.draw_text(t.text, int(std::lround(t.x)) - shift, int(std::lround(t.y)) - half, t.scale,
                       false, t.color);
    }
  }
};

void append_to_string(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))
      ->append(reinterpret_cast<const char*>(data), length);
}

void flush_nothing(png_structp) {}

// Encodes with libpng's setjmp error handling; only trivially destructible locals live here, so
// the longjmp skips no destructor. Returns false (with `message` set) on failure.
bool encode(const Canvas& canvas, std::string* out, char (&message)[256]) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) {
    std::snprintf(message, sizeof message, "png_create_write_struct failed");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    std::snprintf(message, sizeof message, "libpng failed to encode the image");
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, out, append_to_string, flush_nothing);
  png_set_IHDR(png, info, png_uint_32(canvas.width()), png_uint_32(canvas.height()), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const png_byte* rows = canvas.rgb().data();
  for (int y = 0; y < canvas.height(); ++y)
    png_write_row(png, rows + size_t(y) * size_t(canvas.width()) * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const Chart& chart, const std::string& path, int width, int height) {
  const Scene scene = layout_chart(chart, width, height, path);
  Canvas canvas(width, height, 0xffffff);
  PngRenderer renderer{canvas};
  for (const SceneItem& item : scene.items) std::visit(renderer, item);
  std::string bytes;
  char message[256] = {};
  DSEEK_CHECK(encode(canvas, &bytes, message), "[plot] {}: {}", path, message);
  write_output_file(path, bytes);
}

}  // namespace dseek::plot
