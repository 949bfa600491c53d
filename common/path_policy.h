// Which files a job run by the service may name (docs/store.md "What a
// service job may read"). A rank reads as the service's user whatever path
// a job's YAML names, so service jobs are confined: every dataset and weight
// path, after relative paths are taken from the store and symlinks and ".."
// are resolved, must lie under the store or under an operator-configured
// allowed root (retina-coordinator --allowed-root). Outputs go only inside
// the job's own directory (jobs/<id>/, not its checkpoints/) or under an
// operator-configured output root (--output-root); never into another job's
// directory, a dataset or the store's top level. Standalone `retina-train
// run` is not confined (the user runs it as themselves).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/job_config.h"

namespace retina {

class PathPolicy {
 public:
  PathPolicy(std::filesystem::path store, std::vector<std::filesystem::path> allowed_roots,
             std::vector<std::filesystem::path> output_roots = {});

  // The path a dataset name or path denotes: a plain name is
  // <store>/datasets/<name>; a relative path is taken from the store.
  std::filesystem::path DatasetPath(const std::string& value) const;
  // The path a weights value denotes: relative paths from the store; a
  // registered model's reference (model:...) unchanged, for the reader to
  // resolve against the store.
  std::filesystem::path WeightsPath(const std::string& value) const;

  // OK when `path` resolves under the store or an allowed root;
  // PERMISSION_DENIED naming `field` and the roots otherwise.
  absl::Status Check(const std::string& field, const std::filesystem::path& path) const;
  // OK when a service job may write `path` (after symlinks and ".."): under
  // an output root, or, where `job_id` is known (at the rank), inside
  // <store>/jobs/<job_id>/ but not its checkpoints/. Never inside another
  // job's directory, a dataset, or the store's top level, whatever the
  // output roots. PERMISSION_DENIED naming `field` otherwise.
  absl::Status CheckOutput(const std::string& field, const std::filesystem::path& path,
                           const std::string& job_id) const;
  // Every path field of a job: data.dataset, data.val_dataset, finetune.init
  // (unless random), evaluate.checkpoint, serve.models' weights, infer.weights, infer.inputs (a
  // glob by its directory) and infer.output (CheckOutput: at submit, when the
  // job has no id yet, only an output root; empty means the job's own
  // predictions/).
  absl::Status CheckConfig(const JobConfig& config, const std::string& job_id = "") const;

 private:
  std::filesystem::path store_;
  std::vector<std::filesystem::path> roots_;         // canonical, the store first
  std::vector<std::filesystem::path> output_roots_;  // canonical
};

}  // namespace retina
