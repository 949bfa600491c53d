#include "services/cli/svg_plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace retina::cli {
std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

std::string PlotSvg(const std::string& title, const std::vector<Series>& series, const std::string& x_label) {
  constexpr double kW = 720, kPanelH = 220, kLeft = 70, kRight = 20, kTop = 40, kGap = 50;
  std::vector<const Series*> panels;
  for (const Series& s : series) {
    if (!s.xy.empty()) panels.push_back(&s);
  }
  const double height = kTop + panels.size() * (kPanelH + kGap) + 10;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"24\" font-size=\"16\" text-anchor=\"middle\">%s</text>\n",
      kW, height, kW / 2, XmlEscape(title));
  double y0 = kTop;
  for (const Series* s : panels) {
    double xmin = s->xy.front().first, xmax = xmin, ymin = s->xy.front().second, ymax = ymin;
    for (const auto& [x, y] : s->xy) {
      xmin = std::min(xmin, x), xmax = std::max(xmax, x);
      ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    }
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) ymax = ymin + (ymin == 0 ? 1 : std::abs(ymin) * 0.1);
    const double pw = kW - kLeft - kRight, ph = kPanelH;
    auto px = [&](double x) { return kLeft + (x - xmin) / (xmax - xmin) * pw; };
    auto py = [&](double y) { return y0 + ph - (y - ymin) / (ymax - ymin) * ph; };
    absl::StrAppendFormat(&svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>\n",
                          kLeft, y0, pw, ph);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" font-weight=\"bold\">%s</text>\n", kLeft, y0 - 6,
                          XmlEscape(s->name));
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", kLeft - 6, y0 + 10, ymax);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", kLeft - 6, y0 + ph, ymin);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\">%.6g</text>\n", kLeft, y0 + ph + 16, xmin);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.6g %s</text>\n", kLeft + pw,
                          y0 + ph + 16, xmax, XmlEscape(x_label));
    std::string points;
    for (const auto& [x, y] : s->xy) absl::StrAppendFormat(&points, "%.1f,%.1f ", px(x), py(y));
    absl::StrAppendFormat(&svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n",
                          s->color, points);
    if (s->xy.size() <= 50) {
      for (const auto& [x, y] : s->xy) {
        absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", px(x), py(y), s->color);
      }
    }
    y0 += kPanelH + kGap;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace retina::cli
