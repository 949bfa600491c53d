// Paths of the shared store (ARCHITECTURE.md "The shared store"):
//
//   <root>/datasets/<name>/manifest.json, shard-00000.h5 ...
//   <root>/jobs/<id>/job.yaml       the submitted job file (worker -> ranks)
//   <root>/jobs/<id>/spec.yaml      the job as the ranks ran it (defaults filled in)
//   <root>/jobs/<id>/events.jsonl   Event records (common/records.h)
//   <root>/jobs/<id>/metrics.csv    MetricsRow records (common/metrics_csv.h)
//   <root>/jobs/<id>/eval.json      an EvalReport (evaluate jobs)
//   <root>/jobs/<id>/evals/step-N.json   an EvalReport per finetune.eval_at step
//   <root>/jobs/<id>/study.json, study.csv   a study's aggregate (common/study.h)
//   <root>/jobs/<id>/logs/attempt-<k>/rank-<r>.log
//   <root>/jobs/<id>/checkpoints/step-NNNNNNNN/{model.pt, optimizer.pt, state.json, MANIFEST}, LATEST
//
// Pure path arithmetic: nothing is created or read. Names that could escape
// the store (empty, ".", "..", containing '/', or control characters) are
// rejected by ValidateName.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace retina {

// `path` relative to `store` when it lies inside it ("jobs/job-000001/checkpoints/step-00000010"),
// else absolute (both taken canonically, as far as they exist).
std::string StoreRelative(const std::filesystem::path& path, const std::filesystem::path& store);

class StoreLayout {
 public:
  explicit StoreLayout(std::filesystem::path root) : root_(std::move(root)) {}

  // OK when `name` is a safe dataset or job name: 1-128 characters of
  // [A-Za-z0-9._-], not starting with '.'. `what` names the field in the error.
  static absl::Status ValidateName(absl::string_view name, absl::string_view what);

  // File names inside a checkpoint directory (common/checkpoint_store.h).
  static constexpr const char* kCheckpointState = "state.json";  // a CheckpointState

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path DatasetDir(absl::string_view dataset) const;
  std::filesystem::path JobDir(absl::string_view job_id) const;
  std::filesystem::path SubmittedConfigPath(absl::string_view job_id) const;
  std::filesystem::path SpecPath(absl::string_view job_id) const;
  std::filesystem::path EvalReportPath(absl::string_view job_id) const;
  // A fine-tune's score of its checkpoint at `step` (finetune.eval_at).
  std::filesystem::path StepEvalPath(absl::string_view job_id, int64_t step) const;
  // A study's aggregate: the JSON record and its CSV table.
  std::filesystem::path StudyReportPath(absl::string_view job_id) const;
  std::filesystem::path StudyCsvPath(absl::string_view job_id) const;
  // An infer job's default output directory, and its report of what it wrote.
  std::filesystem::path PredictionsDir(absl::string_view job_id) const;
  std::filesystem::path PredictionsReportPath(absl::string_view job_id) const;
  std::filesystem::path EventsPath(absl::string_view job_id) const;
  std::filesystem::path MetricsCsvPath(absl::string_view job_id) const;
  std::filesystem::path LogDir(absl::string_view job_id, int attempt) const;
  std::filesystem::path RankLogPath(absl::string_view job_id, int attempt, int rank) const;
  std::filesystem::path CheckpointsDir(absl::string_view job_id) const;

 private:
  std::filesystem::path root_;
};

}  // namespace retina
