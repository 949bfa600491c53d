#include "services/cli/study_report.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "services/cli/svg_plot.h"

namespace retina::cli {
namespace {

constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
const char* Color(int arm) { return kColors[arm % 8]; }

const char* MetricTitle(const std::string& m) {
  if (m == "iou") return "IoU";
  if (m == "f1") return "F1";
  if (m == "precision") return "precision";
  if (m == "recall") return "recall";
  if (m == "mfd") return "MFD";
  return "?";
}

// A table rendered both as Markdown and as HTML.
struct Cell {
  std::string text;
  bool bold = false;
};
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<Cell>> rows;
};

// A Markdown table cell or list item: | and line breaks would end it.
std::string MdText(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out;
}

std::string MarkdownTable(const Table& t) {
  std::string out = "| " + absl::StrJoin(t.header, " | ") + " |\n|";
  for (size_t i = 0; i < t.header.size(); ++i) out += "---|";
  out += "\n";
  for (const auto& row : t.rows) {
    out += "|";
    for (const Cell& c : row) {
      const std::string text = MdText(c.text);
      out += " " + (c.bold && !text.empty() ? "**" + text + "**" : text) + " |";
    }
    out += "\n";
  }
  return out + "\n";
}

std::string HtmlTable(const Table& t) {
  std::string out = "<table>\n<tr>";
  for (const std::string& h : t.header) out += "<th>" + XmlEscape(h) + "</th>";
  out += "</tr>\n";
  for (const auto& row : t.rows) {
    out += "<tr>";
    for (const Cell& c : row) out += "<td>" + (c.bold ? "<b>" + XmlEscape(c.text) + "</b>" : XmlEscape(c.text)) + "</td>";
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

const StudyValues* Values(const StudyCell* cell, const std::string& metric, const std::string& cls) {
  if (cell == nullptr) return nullptr;
  auto m = cell->metrics.find(metric);
  if (m == cell->metrics.end()) return nullptr;
  auto c = m->second.find(cls);
  return c == m->second.end() ? nullptr : &c->second;
}

// "0.612 ± 0.021" with "(n=4/6)" when runs are missing; "-" for none.
std::string MeanStd(const StudyValues* v, int expected, int digits) {
  if (v == nullptr || v->summary.n == 0) return absl::StrCat("- (n=0/", expected, ")");
  std::string s = v->summary.n == 1 ? absl::StrFormat("%.*f", digits, v->summary.mean)
                                    : absl::StrFormat("%.*f ± %.*f", digits, v->summary.mean, digits, v->summary.std);
  if (v->summary.n < expected) absl::StrAppend(&s, " (n=", v->summary.n, "/", expected, ")");
  return s;
}

// The table of the paper's form for `classes` x `metrics` at `step`: one row
// per arm, the best mean per column in bold.
Table ScoreTable(const StudyReport& r, const std::string& dataset, int64_t step,
                 const std::vector<std::pair<std::string, std::string>>& columns) {
  Table t;
  t.header.push_back(r.axis == "iteration" ? "init" : "strategy");
  for (const auto& [metric, cls] : columns) {
    t.header.push_back(cls == "mean" ? MetricTitle(metric) : absl::StrCat(MetricTitle(metric), " class ", cls));
  }
  // The best mean per column (every arm that has it, when tied).
  std::vector<std::optional<double>> best(columns.size());
  for (size_t c = 0; c < columns.size(); ++c) {
    for (size_t a = 0; a < r.arms.size(); ++a) {
      const StudyValues* v = Values(FindStudyCell(r, dataset, static_cast<int>(a), step), columns[c].first, columns[c].second);
      if (v == nullptr || v->summary.n == 0) continue;
      const bool lower = StudyMetricLowerIsBetter(columns[c].first);
      if (!best[c] || (lower ? v->summary.mean < *best[c] : v->summary.mean > *best[c])) best[c] = v->summary.mean;
    }
  }
  for (size_t a = 0; a < r.arms.size(); ++a) {
    const StudyCell* cell = FindStudyCell(r, dataset, static_cast<int>(a), step);
    std::vector<Cell> row = {{r.arms[a].name}};
    for (size_t c = 0; c < columns.size(); ++c) {
      const bool mfd = columns[c].first == "mfd";
      const StudyValues* v = Values(cell, columns[c].first, columns[c].second);
      row.push_back({MeanStd(v, cell ? cell->expected : 0, mfd ? 2 : 3),
                     r.arms.size() > 1 && v != nullptr && v->summary.n > 0 && best[c] && v->summary.mean == *best[c]});
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

std::string Fmt(double x) { return absl::StrFormat("%.4g", x); }

// y axis range of [lo, hi] padded, clipped to [0, 1] for scores.
void Range(double lo, double hi, double* ymin, double* ymax) {
  if (hi <= lo) {
    lo -= 0.05;
    hi += 0.05;
  }
  const double pad = (hi - lo) * 0.08;
  *ymin = std::max(0.0, lo - pad);
  *ymax = std::min(1.0, hi + pad);
  if (*ymax <= *ymin) *ymax = *ymin + 0.1;
}

std::string SvgHeader(double w, double h, const std::string& title) {
  return absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<title>%s</title>\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
      w, h, w, h, XmlEscape(title), w / 2, XmlEscape(title));
}

// Frame, y ticks (5) and the y label of a plot area.
std::string Axes(double left, double top, double pw, double ph, double ymin, double ymax, const std::string& ylabel) {
  std::string s = absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n",
                                  left, top, pw, ph);
  for (int i = 0; i <= 4; ++i) {
    const double v = ymin + (ymax - ymin) * i / 4, y = top + ph - ph * i / 4;
    absl::StrAppendFormat(&s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", left, y, left + pw, y);
    absl::StrAppendFormat(&s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", left - 6, y + 4, Fmt(v));
  }
  absl::StrAppendFormat(&s, "<text transform=\"translate(16 %.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
                        top + ph / 2, XmlEscape(ylabel));
  return s;
}

std::string CurvesSvg(const StudyReport& r, const std::string& dataset) {
  constexpr double kW = 720, kH = 420, kLeft = 70, kRight = 170, kTop = 40, kBottom = 50;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  double lo = 1, hi = 0;
  for (size_t a = 0; a < r.arms.size(); ++a) {
    for (int64_t step : r.eval_at) {
      const StudyValues* v = Values(FindStudyCell(r, dataset, static_cast<int>(a), step), "iou", "mean");
      if (v == nullptr || v->summary.n == 0) continue;
      lo = std::min(lo, v->summary.mean - v->summary.std);
      hi = std::max(hi, v->summary.mean + v->summary.std);
    }
  }
  if (hi < lo) lo = 0, hi = 1;
  double ymin, ymax;
  Range(lo, hi, &ymin, &ymax);
  const double xmin = 0, xmax = static_cast<double>(r.eval_at.back());
  auto px = [&](double x) { return kLeft + (x - xmin) / (xmax - xmin) * pw; };
  auto py = [&](double y) { return kTop + ph - (std::clamp(y, ymin, ymax) - ymin) / (ymax - ymin) * ph; };
  const std::string axis = r.axis == "iteration" ? "fine-tuning iterations" : r.axis;
  std::string svg = SvgHeader(kW, kH, absl::StrCat("IoU against ", axis, dataset.empty() ? "" : " — " + dataset));
  svg += Axes(kLeft, kTop, pw, ph, ymin, ymax, "test IoU (mean ± 1 std over seeds)");
  for (int64_t step : r.eval_at) {
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", px(step),
                          kTop + ph + 16, step);
  }
  absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", kLeft + pw / 2,
                        kTop + ph + 36, r.axis);
  for (size_t a = 0; a < r.arms.size(); ++a) {
    std::vector<std::pair<double, const StudyValues*>> pts;
    for (int64_t step : r.eval_at) {
      const StudyValues* v = Values(FindStudyCell(r, dataset, static_cast<int>(a), step), "iou", "mean");
      if (v != nullptr && v->summary.n > 0) pts.push_back({static_cast<double>(step), v});
    }
    if (pts.empty()) continue;
    std::string upper, lower, line;
    for (const auto& [x, v] : pts) {
      absl::StrAppendFormat(&upper, "%.1f,%.1f ", px(x), py(v->summary.mean + v->summary.std));
      absl::StrAppendFormat(&line, "%.1f,%.1f ", px(x), py(v->summary.mean));
    }
    for (auto it = pts.rbegin(); it != pts.rend(); ++it) {
      absl::StrAppendFormat(&lower, "%.1f,%.1f ", px(it->first), py(it->second->summary.mean - it->second->summary.std));
    }
    absl::StrAppendFormat(&svg, "<polygon class=\"band\" points=\"%s%s\" fill=\"%s\" fill-opacity=\"0.18\" stroke=\"none\"/>\n",
                          upper, lower, Color(a));
    absl::StrAppendFormat(&svg, "<polyline class=\"mean\" points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                          line, Color(a));
    for (const auto& [x, v] : pts) {
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s at %.0f: %s ± %s (n=%d)</title></circle>\n",
                            px(x), py(v->summary.mean), Color(a), XmlEscape(r.arms[a].name), x, Fmt(v->summary.mean),
                            Fmt(v->summary.std), v->summary.n);
    }
    const double ly = kTop + 14 + 20 * a;
    absl::StrAppendFormat(&svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"10\" fill=\"%s\"/>\n", kLeft + pw + 14,
                          ly - 9, Color(a));
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", kLeft + pw + 34, ly, XmlEscape(r.arms[a].name));
  }
  return svg + "</svg>\n";
}

// Quantile q of sorted `v` by linear interpolation (numpy's default).
double Quantile(const std::vector<double>& v, double q) {
  const double pos = q * (v.size() - 1);
  const size_t i = static_cast<size_t>(pos);
  return i + 1 < v.size() ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[i];
}

std::string BoxplotSvg(const StudyReport& r, const std::string& dataset) {
  const int64_t step = r.eval_at.back();
  const double kW = std::max(360.0, 140.0 + 130.0 * r.arms.size());
  std::vector<const StudyTest*> marked;
  for (const StudyTest& t : r.tests) {
    if (t.dataset == dataset && t.metric == "iou" && t.cls == "mean" && t.result.p < 0.05) marked.push_back(&t);
  }
  const double kTop = 40 + 22.0 * marked.size(), kH = kTop + 330, kLeft = 70, kBottom = 50;
  const double pw = kW - kLeft - 20, ph = kH - kTop - kBottom;
  std::vector<std::vector<double>> values(r.arms.size());
  double lo = 1, hi = 0;
  for (size_t a = 0; a < r.arms.size(); ++a) {
    const StudyValues* v = Values(FindStudyCell(r, dataset, static_cast<int>(a), step), "iou", "mean");
    if (v == nullptr) continue;
    for (const auto& x : v->per_seed) {
      if (x) values[a].push_back(*x);
    }
    std::sort(values[a].begin(), values[a].end());
    if (!values[a].empty()) lo = std::min(lo, values[a].front()), hi = std::max(hi, values[a].back());
  }
  if (hi < lo) lo = 0, hi = 1;
  double ymin, ymax;
  Range(lo, hi, &ymin, &ymax);
  auto px = [&](size_t a) { return kLeft + pw * (a + 0.5) / r.arms.size(); };
  auto py = [&](double y) { return kTop + ph - (y - ymin) / (ymax - ymin) * ph; };
  std::string svg = SvgHeader(kW, kH, absl::StrCat("IoU per seed at ", r.axis == "iteration" ? "iteration " : "",
                                                   step, r.axis == "iteration" ? "" : " " + r.axis,
                                                   dataset.empty() ? "" : " — " + dataset));
  svg += Axes(kLeft, kTop, pw, ph, ymin, ymax, "test IoU");
  const double half = std::min(40.0, pw / r.arms.size() / 3);
  for (size_t a = 0; a < r.arms.size(); ++a) {
    const double x = px(a);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s (n=%d)</text>\n", x, kTop + ph + 18,
                          XmlEscape(r.arms[a].name), values[a].size());
    const std::vector<double>& v = values[a];
    if (v.empty()) continue;
    const double q1 = Quantile(v, 0.25), med = Quantile(v, 0.5), q3 = Quantile(v, 0.75);
    absl::StrAppendFormat(&svg, "<line class=\"whisker\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n",
                          x, py(v.front()), x, py(v.back()));
    for (double w : {v.front(), v.back()}) {
      absl::StrAppendFormat(&svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", x - half / 2,
                            py(w), x + half / 2, py(w));
    }
    absl::StrAppendFormat(&svg,
                          "<rect class=\"box\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" "
                          "fill-opacity=\"0.35\" stroke=\"%s\"/>\n",
                          x - half, py(q3), 2 * half, std::max(1.0, py(q1) - py(q3)), Color(a), Color(a));
    absl::StrAppendFormat(&svg, "<line class=\"median\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\" stroke-width=\"2\"/>\n",
                          x - half, py(med), x + half, py(med));
    for (size_t i = 0; i < v.size(); ++i) {  // the seeds themselves, spread sideways
      const double dx = v.size() > 1 ? (static_cast<double>(i) / (v.size() - 1) - 0.5) * half : 0;
      absl::StrAppendFormat(&svg, "<circle class=\"seed\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" stroke=\"white\"/>\n",
                            x + dx, py(v[i]), Color(a));
    }
  }
  for (size_t k = 0; k < marked.size(); ++k) {  // significance brackets above the plot
    const StudyTest& t = *marked[k];
    const double y = kTop - 12 - 22.0 * k, x1 = px(t.a), x2 = px(t.b);
    absl::StrAppendFormat(&svg,
                          "<path class=\"bracket\" d=\"M%.1f %.1f V%.1f H%.1f V%.1f\" fill=\"none\" stroke=\"black\"/>\n",
                          x1, y + 8, y, x2, y + 8);
    absl::StrAppendFormat(&svg, "<text class=\"mark\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s p=%s</text>\n",
                          (x1 + x2) / 2, y - 3, SignificanceMark(t.result.p), Fmt(t.result.p));
  }
  return svg + "</svg>\n";
}

// curves.svg for a study of one dataset, else curves-<k>.svg by its position
// (a dataset may be given as a path).
std::string SvgName(const std::string& kind, const StudyReport& r, const std::string& dataset) {
  if (r.datasets.size() <= 1) return kind + ".svg";
  const size_t k = std::find(r.datasets.begin(), r.datasets.end(), dataset) - r.datasets.begin();
  return absl::StrCat(kind, "-", k + 1, ".svg");
}

// "iteration 200" / "12 blocks labelled": a point of the study's axis.
std::string At(const StudyReport& r, int64_t step) {
  return r.axis == "iteration" ? absl::StrCat("iteration ", step) : absl::StrCat(step, " ", r.axis);
}

// The Mann-Whitney tests of dataset `d` (mean over classes) at `step`, a row
// each; `metric` "" = every metric, and then the step is not a column.
Table TestsTable(const StudyReport& r, const std::string& d, int64_t step, const std::string& metric = "") {
  Table tests;
  tests.header = {"metric", "pair", "n", "U", "p (two-sided)", "method", "rank-biserial r", "P(a > b)", ""};
  if (!metric.empty()) tests.header[0] = r.axis;
  for (const StudyTest& t : r.tests) {
    if (t.dataset != d || t.cls != "mean") continue;
    if (metric.empty() ? t.step != step : t.metric != metric) continue;
    const MannWhitney& m = t.result;
    if (m.method == "none") {  // an arm without runs: nothing was tested
      tests.rows.push_back({{metric.empty() ? MetricTitle(t.metric) : std::to_string(t.step)},
                            {r.arms[t.a].name + " vs " + r.arms[t.b].name},
                            {absl::StrCat(m.n1, " vs ", m.n2)}, {"-"}, {"-"}, {"not tested (no runs)"}, {"-"}, {"-"},
                            {""}});
      continue;
    }
    tests.rows.push_back({{metric.empty() ? MetricTitle(t.metric) : std::to_string(t.step)},
                          {r.arms[t.a].name + " vs " + r.arms[t.b].name},
                          {absl::StrCat(m.n1, " vs ", m.n2)},
                          {absl::StrFormat("%g", m.u1)},
                          {absl::StrFormat("%.4g", m.p)},
                          {m.method + (m.ties ? " (ties)" : "")},
                          {absl::StrFormat("%+.2f", m.rank_biserial)},
                          {absl::StrFormat("%.2f", m.common_language)},
                          {SignificanceMark(m.p)}});
  }
  return tests;
}

// A loop study's question: how many blocks each strategy needed to reach the
// random arm's final mean IoU (T). Per seed, the first budget whose IoU is at
// least T; a seed that never reaches it counts as "more than the last
// budget" (censored: shown as n reaching, and ranked above every budget in
// the test against random).
Table BlocksToTargetTable(const StudyReport& r, const std::string& d, std::string* note) {
  Table t;
  t.header = {"strategy", "seeds reaching T (of those scored at every budget)", "blocks to reach T (mean ± sd of those)",
              "per seed",
              "vs random: U", "p (two-sided)", ""};
  int reference = -1;
  for (size_t a = 0; a < r.arms.size(); ++a) {
    if (r.arms[a].strategy == "random" || r.arms[a].name == "random") reference = static_cast<int>(a);
  }
  if (reference < 0 || r.eval_at.empty()) return t;
  const StudyValues* ref = Values(FindStudyCell(r, d, reference, r.eval_at.back()), "iou", "mean");
  if (ref == nullptr || ref->summary.n == 0) return t;
  const double target = ref->summary.mean;
  const double censored = static_cast<double>(r.eval_at.back()) + 1;
  *note = absl::StrFormat("T = %.4f, the random arm's mean IoU at %lld blocks. A seed that never reaches T "
                          "counts as more than %lld blocks (\">\" below).",
                          target, static_cast<long long>(r.eval_at.back()), static_cast<long long>(r.eval_at.back()));
  auto blocks = [&](int arm) {
    std::vector<double> out;  // the seeds scored at every budget (a missing score is missing, not "never")
    for (size_t k = 0; k < r.seeds.size(); ++k) {
      double first = censored;
      bool complete = true;
      for (int64_t step : r.eval_at) {
        const StudyValues* v = Values(FindStudyCell(r, d, arm, step), "iou", "mean");
        if (v == nullptr || k >= v->per_seed.size() || !v->per_seed[k]) {
          complete = false;
          break;
        }
        if (first == censored && *v->per_seed[k] >= target) first = static_cast<double>(step);
      }
      if (complete) out.push_back(first);
    }
    return out;
  };
  const std::vector<double> random_blocks = blocks(reference);
  for (size_t a = 0; a < r.arms.size(); ++a) {
    const std::vector<double> b = blocks(static_cast<int>(a));
    std::vector<double> reached;
    std::vector<std::string> each;
    for (double x : b) {
      if (x < censored) reached.push_back(x);
      each.push_back(x < censored ? absl::StrCat(static_cast<int64_t>(x)) : absl::StrCat(">", r.eval_at.back()));
    }
    const Summary sm = Summarise(reached);
    std::vector<Cell> row = {{r.arms[a].name},
                             {absl::StrCat(reached.size(), "/", b.size())},
                             {reached.empty() ? "-" : absl::StrFormat("%.1f ± %.1f", sm.mean, sm.std)},
                             {absl::StrJoin(each, ", ")}};
    if (static_cast<int>(a) == reference || b.empty() || random_blocks.empty()) {
      row.insert(row.end(), {{"-"}, {"-"}, {""}});
    } else {
      const MannWhitney m = MannWhitneyU(b, random_blocks);
      row.insert(row.end(), {{absl::StrFormat("%g", m.u1)}, {absl::StrFormat("%.4g", m.p)}, {SignificanceMark(m.p)}});
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

// Mean IoU of each init at each scored iteration on dataset `d` (Fig 3a).
Table CurveTable(const StudyReport& r, const std::string& d) {
  Table curve;
  curve.header = {r.axis == "iteration" ? "init" : "strategy"};
  for (int64_t step : r.eval_at) curve.header.push_back(At(r, step));
  for (size_t a = 0; a < r.arms.size(); ++a) {
    std::vector<Cell> row = {{r.arms[a].name}};
    for (int64_t step : r.eval_at) {
      const StudyCell* cell = FindStudyCell(r, d, static_cast<int>(a), step);
      row.push_back({MeanStd(Values(cell, "iou", "mean"), cell ? cell->expected : 0, 3)});
    }
    curve.rows.push_back(std::move(row));
  }
  return curve;
}

}  // namespace

StudyReportFiles RenderStudyReport(const StudyReport& r) {
  StudyReportFiles f;
  std::string md, html;
  const std::string title = absl::StrCat("Study ", r.study);
  const bool running = r.state.empty() ? !r.complete : r.state == "RUNNING" || r.state == "CANCELLING";
  const std::string status =
      absl::StrCat(r.children_ended, " of ", r.children_total, " children ended, ", r.children_succeeded, " succeeded",
                   running ? " (partial: the study is still running)." : ".",
                   r.state.empty() ? "" : " Study " + r.state + ".");
  md += "# " + title + "\n\n" + status + "\n\n";
  html += "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + XmlEscape(title) +
          "</title>\n<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}</style></head><body>\n<h1>" +
          XmlEscape(title) + "</h1>\n<p>" + XmlEscape(status) + "</p>\n";
  std::vector<std::string> arms;
  for (const StudyArm& a : r.arms) arms.push_back(a.name == a.init ? a.name : a.name + " (`" + a.init + "`)");
  const bool loop = r.axis != "iteration";
  if (loop) {
    arms.clear();
    for (const StudyArm& a : r.arms) arms.push_back(a.name);
  }
  const std::string setup = absl::StrCat(loop ? "Annotation loop; selection strategies: " : "Inits: ",
                                         absl::StrJoin(arms, ", "),
                                         loop && !r.arms.empty() ? " (init `" + r.arms[0].init + "`)" : "",
                                         ". Seeds: ", absl::StrJoin(r.seeds, ", "),
                                         loop ? ". Scored after every round, at blocks labelled "
                                              : ". Scored at iterations ",
                                         absl::StrJoin(r.eval_at, ", "),
                                         " on the held-out test split. Cells show the mean ± sample std of the runs; "
                                         "n is shown where runs are missing; the best mean per column is bold.");
  md += setup + "\n\n";
  std::string plain = setup;  // the Markdown code marks are not for the page
  plain.erase(std::remove(plain.begin(), plain.end(), '`'), plain.end());
  html += "<p>" + XmlEscape(plain) + "</p>\n";
  const int64_t last = r.eval_at.back();
  for (const std::string& d : r.datasets) {
    const std::string heading = d.empty() ? "Results" : "Dataset " + d;
    md += "## " + heading + "\n\n";
    html += "<h2>" + XmlEscape(heading) + "</h2>\n";

    std::vector<std::pair<std::string, std::string>> summary_columns;
    for (const char* m : kStudyMetrics) summary_columns.push_back({m, "mean"});
    const std::string t1 = absl::StrCat("At ", At(r, last), " (mean over the scored classes)");
    md += "### " + t1 + "\n\n" + MarkdownTable(ScoreTable(r, d, last, summary_columns));
    html += "<h3>" + XmlEscape(t1) + "</h3>\n" + HtmlTable(ScoreTable(r, d, last, summary_columns));
    if (r.classes.size() > 2) {  // "mean" and more than one class
      std::vector<std::pair<std::string, std::string>> class_columns;
      for (size_t c = 1; c < r.classes.size(); ++c) class_columns.push_back({"iou", r.classes[c]});
      const std::string t2 = absl::StrCat("IoU per class at ", At(r, last));
      md += "### " + t2 + "\n\n" + MarkdownTable(ScoreTable(r, d, last, class_columns));
      html += "<h3>" + XmlEscape(t2) + "</h3>\n" + HtmlTable(ScoreTable(r, d, last, class_columns));
    }

    const Table tests = TestsTable(r, d, last);
    const std::string t3 = absl::StrCat("Mann-Whitney U tests at ", At(r, last));
    const std::string note3 = "Two-sided; exact p over every split of the runs (ties included) up to 60 runs, "
                              "the normal approximation above. * p < 0.05, ** p < 0.01, each test on its own (no "
                              "correction for the number of tests). r > 0: the first init's values are larger "
                              "(better, except for MFD, where lower is better).";
    md += "### " + t3 + "\n\n" + note3 + "\n\n" + MarkdownTable(tests);
    html += "<h3>" + XmlEscape(t3) + "</h3>\n<p>" + XmlEscape(note3) + "</p>\n" + HtmlTable(tests);
    if (loop) {  // the claim of a loop study: IoU at equal label budgets, and blocks to a target
      const Table budgets = TestsTable(r, d, 0, "iou");
      const std::string t4 = "Mann-Whitney U tests of IoU at each budget";
      md += "### " + t4 + "\n\n" + MarkdownTable(budgets);
      html += "<h3>" + XmlEscape(t4) + "</h3>\n" + HtmlTable(budgets);
      std::string note5;
      const Table to_target = BlocksToTargetTable(r, d, &note5);
      if (!to_target.rows.empty()) {
        const std::string t5 = "Blocks labelled to reach the random arm's final IoU";
        md += "### " + t5 + "\n\n" + note5 + "\n\n" + MarkdownTable(to_target);
        html += "<h3>" + XmlEscape(t5) + "</h3>\n<p>" + XmlEscape(note5) + "</p>\n" + HtmlTable(to_target);
      }
    }

    const Table curve = CurveTable(r, d);
    const std::string curves = SvgName("curves", r, d), box = SvgName("boxplot", r, d);
    f.svgs[curves] = CurvesSvg(r, d);
    f.svgs[box] = BoxplotSvg(r, d);
    const std::string against = loop ? "IoU against blocks labelled" : "IoU against iterations (Fig 3a)";
    md += "### " + against + "\n\n" + MarkdownTable(curve) + "![" +
          (loop ? "IoU against blocks labelled" : "IoU against iterations") + "](" + curves +
          ")\n\n### IoU per seed (Fig 3b)\n\n![IoU per seed](" + box + ")\n\n";
    html += "<h3>" + XmlEscape(against) + "</h3>\n" + HtmlTable(curve) + f.svgs[curves] +
            "<h3>IoU per seed (Fig 3b)</h3>\n" + f.svgs[box];

    std::vector<std::string> missing;
    for (const StudyCell& c : r.cells) {
      if (c.dataset != d || c.step != last) continue;
      for (const std::string& m : c.missing) missing.push_back(r.arms[c.arm].name + ", " + m);
    }
    if (!missing.empty()) {
      md += "### Missing runs\n\n";
      html += "<h3>Missing runs</h3>\n<ul>\n";
      for (const std::string& m : missing) {
        md += "- " + MdText(m) + "\n";
        html += "<li>" + XmlEscape(m) + "</li>\n";
      }
      md += "\n";
      html += "</ul>\n";
    }
  }
  html += "</body></html>\n";
  f.markdown = std::move(md);
  f.html = std::move(html);
  return f;
}

absl::Status WriteStudyReport(const StudyReport& report, const std::string& study_json, const std::filesystem::path& dir) {
  RETURN_IF_ERROR(CreateDirectories(dir));
  const StudyReportFiles f = RenderStudyReport(report);
  RETURN_IF_ERROR(WriteFileAtomic(dir / "report.md", f.markdown));
  RETURN_IF_ERROR(WriteFileAtomic(dir / "report.html", f.html));
  for (const auto& [name, svg] : f.svgs) RETURN_IF_ERROR(WriteFileAtomic(dir / name, svg));
  RETURN_IF_ERROR(WriteFileAtomic(dir / "study.json", study_json));
  return WriteFileAtomic(dir / "study.csv", StudyCsv(report));
}

}  // namespace retina::cli
