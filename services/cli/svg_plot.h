// A small self-contained SVG line chart (no plotting library): one panel per
// series, shared x axis, min/max tick labels. Used by `retina metrics --plot`.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace retina::cli {

struct Series {
  std::string name;                          // panel title, e.g. "loss"
  std::vector<std::pair<double, double>> xy; // (step, value)
  std::string color = "#1f77b4";
};

// `s` with <, >, &, " escaped for XML/HTML text and attributes.
std::string XmlEscape(const std::string& s);

// An SVG document with one panel per non-empty series stacked vertically.
std::string PlotSvg(const std::string& title, const std::vector<Series>& series, const std::string& x_label);

}  // namespace retina::cli
