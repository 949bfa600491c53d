#include "common/metrics_csv.h"

#include <map>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/records.h"
#include "common/status_macros.h"

namespace retina {

std::string FormatMetricsRow(const MetricsRow& r) {
  return absl::StrFormat("%d,%d,%.6g,%.6g,%.4g,%.4g,%.4g,%s,%s\n", r.step, r.epoch, r.loss, r.lr, r.images_per_s,
                         r.data_wait_s, r.allreduce_exposed_s, r.val_iou ? absl::StrFormat("%.6f", *r.val_iou) : "",
                         r.time ? absl::StrFormat("%.3f", *r.time) : "");
}

std::vector<MetricsRow> ParseMetricsCsv(const std::string& text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty()) return {};
  std::map<std::string, size_t> column;
  {
    std::vector<std::string> names = absl::StrSplit(lines[0], ',');
    for (size_t i = 0; i < names.size(); ++i) column[names[i]] = i;
  }
  auto field = [&](const std::vector<absl::string_view>& f, const char* name) -> std::optional<absl::string_view> {
    auto it = column.find(name);
    if (it == column.end() || it->second >= f.size() || f[it->second].empty()) return std::nullopt;
    return f[it->second];
  };
  std::map<int64_t, MetricsRow> by_step;
  for (size_t l = 1; l < lines.size(); ++l) {
    const std::vector<absl::string_view> f = absl::StrSplit(lines[l], ',');
    MetricsRow r;
    const auto step = field(f, "step");
    if (!step || !absl::SimpleAtoi(*step, &r.step)) continue;
    auto get = [&](const char* name, double* out) {
      if (auto v = field(f, name)) (void)absl::SimpleAtod(*v, out);
    };
    if (auto v = field(f, "epoch")) (void)absl::SimpleAtoi(*v, &r.epoch);
    get("loss", &r.loss);
    get("lr", &r.lr);
    get("images_per_s", &r.images_per_s);
    get("data_wait_s", &r.data_wait_s);
    get("allreduce_exposed_s", &r.allreduce_exposed_s);
    double d;
    if (auto v = field(f, "val_iou"); v && absl::SimpleAtod(*v, &d)) r.val_iou = d;
    if (auto v = field(f, "time"); v && absl::SimpleAtod(*v, &d)) r.time = d;
    by_step[r.step] = r;
  }
  std::vector<MetricsRow> out;
  out.reserve(by_step.size());
  for (auto& [step, r] : by_step) out.push_back(r);
  return out;
}

absl::Status TruncateMetricsCsv(const std::filesystem::path& path, int64_t max_step) {
  if (!std::filesystem::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string out = std::string(kMetricsCsvHeader) + "\n";
  for (const MetricsRow& r : ParseMetricsCsv(text)) {
    if (r.step <= max_step) out += FormatMetricsRow(r);
  }
  return WriteFileAtomic(path, out);
}

absl::Status TruncateEventLog(const std::filesystem::path& path, int64_t max_step) {
  if (!std::filesystem::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    // Steps and validations past the checkpoint are the killed attempt's;
    // anything else (and lines this build cannot read) is kept.
    const absl::StatusOr<Event> e = DecodeEvent(line);
    if (e.ok() && (std::holds_alternative<StepEvent>(*e) || std::holds_alternative<EvalEvent>(*e)) &&
        EventStep(*e).value_or(0) > max_step) {
      continue;
    }
    out.append(line.data(), line.size());
    out += '\n';
  }
  return WriteFileAtomic(path, out);
}

}  // namespace retina
