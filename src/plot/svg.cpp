// SVG output: each scene item becomes one element (rect, line, polyline or circle, text). Text is
// monospace at 10·scale so its advance matches the bitmap font's 6·scale used by the layout.
#include <fmt/format.h>

#include "plot/chart.h"
#include "plot/output_file.h"
#include "plot/scene.h"

namespace dseek::plot {

namespace {

std::string escape_xml(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out += c;
    }
  }
  return out;
}

std::string color(unsigned rgb) {
  return fmt::format("#{:06x}", rgb & 0xffffff);
}

struct SvgWriter {
  std::string out;

  void operator()(const RectItem& r) {
    out += fmt::format(R"(<rect x="{:.2f}" y="{:.2f}" width="{:.2f}" height="{:.2f}" fill="{}")",
                       r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0,
                       r.fill == kNoFill ? std::string("none") : color(r.fill));
    if (r.stroke_width > 0)
      out += fmt::format(R"( stroke="{}" stroke-width="{}")", color(r.stroke), r.stroke_width);
    out += "/>\n";
  }
  void operator()(const LineItem& l) {
    out += fmt::format(
        R"(<line x1="{:.2f}" y1="{:.2f}" x2="{:.2f}" y2="{:.2f}" stroke="{}" stroke-width="{}"/>)"
        "\n",
        l.x0, l.y0, l.x1, l.y1, color(l.color), l.width);
  }
  void operator()(const PathItem& p) {
    if (p.points.size() == 1) {
      out +=
          fmt::format(R"(<circle cx="{:.2f}" cy="{:.2f}" r="{}" fill="{}" class="series-{}"/>)"
                      "\n",
                      p.points[0].first, p.points[0].second, p.width * 2, color(p.color), p.series);
      return;
    }
    out += fmt::format(R"(<polyline class="series-{}" fill="none" stroke="{}" stroke-width="{}" )"
                       R"(stroke-linejoin="round" stroke-linecap="round" points=")",
                       p.series, color(p.color), p.width);
    for (size_t i = 0; i < p.points.size(); ++i)
      out += fmt::format("{}{:.2f},{:.2f}", i ? " " : "", p.points[i].first, p.points[i].second);
    out += "\"/>\n";
  }
  void operator()(const TextItem& t) {
    const char* anchor = t.anchor == Anchor::Start ? "start"
                         : t.anchor == Anchor::End ? "end"
                                                   : "middle";
    out += fmt::format(R"(<text x="{:.2f}" y="{:.2f}" font-size="{}" text-anchor="{}" )"
                       R"(dominant-baseline="central" fill="{}")",
                       t.x, t.y, 10 * t.scale, anchor, color(t.color));
    if (t.vertical) out += fmt::format(R"svg( transform="rotate(-90 {:.2f} {:.2f})")svg", t.x, t.y);
    out += ">" + escape_xml(t.text) + "</text>\n";
  }
};

}  // namespace

void write_svg(const Chart& chart, const std::string& path, int width, int height) {
  const Scene scene = layout_chart(chart, width, height, path);
  SvgWriter writer;
  writer.out = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" )"
      R"(font-family="DejaVu Sans Mono, Menlo, Consolas, monospace">)"
      "\n<title>{2}</title>\n",
      width, height, escape_xml(chart.title));
  for (const SceneItem& item : scene.items) std::visit(writer, item);
  writer.out += "</svg>\n";
  write_output_file(path, writer.out);
}

}  // namespace dseek::plot
