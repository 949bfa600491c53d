#include "common/store_layout.h"

#include "absl/strings/str_cat.h"

namespace retina {
namespace fs = std::filesystem;

absl::Status StoreLayout::ValidateName(absl::string_view name, absl::string_view what) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": must be 1-128 characters, got ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", name, "' must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": '", name, "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

fs::path StoreLayout::DatasetDir(absl::string_view dataset) const {
  return root_ / "datasets" / std::string(dataset);
}
fs::path StoreLayout::JobDir(absl::string_view job_id) const {
  return root_ / "jobs" / std::string(job_id);
}
fs::path StoreLayout::SubmittedConfigPath(absl::string_view job_id) const { return JobDir(job_id) / "job.yaml"; }
fs::path StoreLayout::SpecPath(absl::string_view job_id) const { return JobDir(job_id) / "spec.yaml"; }
fs::path StoreLayout::EvalReportPath(absl::string_view job_id) const { return JobDir(job_id) / "eval.json"; }
fs::path StoreLayout::StepEvalPath(absl::string_view job_id, int64_t step) const {
  return JobDir(job_id) / "evals" / ("step-" + std::to_string(step) + ".json");
}
fs::path StoreLayout::StudyReportPath(absl::string_view job_id) const { return JobDir(job_id) / "study.json"; }
fs::path StoreLayout::StudyCsvPath(absl::string_view job_id) const { return JobDir(job_id) / "study.csv"; }
fs::path StoreLayout::PredictionsDir(absl::string_view job_id) const { return JobDir(job_id) / "predictions"; }
fs::path StoreLayout::PredictionsReportPath(absl::string_view job_id) const {
  return JobDir(job_id) / "predictions.json";
}
fs::path StoreLayout::EventsPath(absl::string_view job_id) const {
  return JobDir(job_id) / "events.jsonl";
}
fs::path StoreLayout::MetricsCsvPath(absl::string_view job_id) const {
  return JobDir(job_id) / "metrics.csv";
}
fs::path StoreLayout::LogDir(absl::string_view job_id, int attempt) const {
  return JobDir(job_id) / "logs" / absl::StrCat("attempt-", attempt);
}
fs::path StoreLayout::RankLogPath(absl::string_view job_id, int attempt, int rank) const {
  return LogDir(job_id, attempt) / absl::StrCat("rank-", rank, ".log");
}
fs::path StoreLayout::CheckpointsDir(absl::string_view job_id) const {
  return JobDir(job_id) / "checkpoints";
}

std::string StoreRelative(const std::filesystem::path& path, const std::filesystem::path& store) {
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::weakly_canonical(std::filesystem::absolute(path), ec);
  const std::filesystem::path s = std::filesystem::weakly_canonical(std::filesystem::absolute(store), ec);
  const std::filesystem::path rel = p.lexically_relative(s);
  if (rel.empty() || *rel.begin() == "..") return p.string();
  return rel.string();
}

}  // namespace retina
