// The model registry (docs/models.md): named, versioned fine-tuned models
// with their lineage. The records live in the job database (job_store.h,
// same durability as the jobs: a change is committed before it is shown);
// each version's files live in the store as hard links of the job's
// checkpoint (common/model_ref.h), so a job's checkpoint retention never
// removes them, and every weights field reads them as model:NAME[:vN|@TAG].
//
// The database is the truth: INDEX.json files are rewritten from it after
// every change and when the coordinator starts (a crash between the two
// leaves the previous index, which names only committed versions).
//
// Two halves, like the rest of the coordinator:
//   - without the state lock: reading a job's checkpoint and its lineage,
//     linking the files (RegistrationFiles);
//   - under the state lock: ModelRegistry, the records in memory over the
//     database (not thread-safe).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "retina/v1/model_service.pb.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/job_store.h"

namespace retina::coordinator {

// What registering a job's checkpoint needs from the files, gathered without
// the lock: the checkpoint verified, its lineage down to a pre-training (or
// a registered model, whose own chain the registry appends), and a copy of
// its files as hard links under models/.incoming/ (moved into place under
// the lock).
struct RegistrationFiles {
  std::filesystem::path checkpoint;  // the job's step directory
  std::vector<retina::v1::LineageStep> lineage;
  std::filesystem::path staged;      // models/.incoming/<unique>/
};
// `step` 0: the job's LATEST checkpoint. NOT_FOUND naming the job and step
// when there is no such checkpoint; DATA_LOSS when it fails its MANIFEST.
absl::StatusOr<RegistrationFiles> StageRegistration(const std::filesystem::path& store, const std::string& job_id,
                                                   int64_t step);

// A BioImage.IO package (format 0.5, rdf.yaml) registered as a version:
// the zip checked as far as the coordinator can without running it (the
// description's format, its weights' sha256), staged as
// models/.incoming/<unique>/package.zip (a hard link, else a copy). Its
// lineage: the package itself, then the chain its lineage.json attachment
// carries when it has one (a package we exported). The weights are checked
// against the package's test tensors wherever the version is used
// (trainer/model/weights/bioimageio.h). INVALID_ARGUMENT naming `package`.
absl::StatusOr<RegistrationFiles> StageImport(const std::filesystem::path& store, const std::filesystem::path& package);

// The chain of the checkpoint at `dir` (store-relative in the records):
// [0] the checkpoint, then what its run started from (state.json's init),
// and so on; a link that is a registered model (models/<name>/v<N>) ends
// the walk with its model_id set. Never fails: a link that cannot be read
// ends the chain with a note saying why.
std::vector<retina::v1::LineageStep> CollectLineage(const std::filesystem::path& store,
                                                   const std::filesystem::path& dir);

class ModelRegistry {
 public:
  // Loads the records and rewrites every name's INDEX.json from them.
  // `db` and `metrics` (may be null) must outlive the registry.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Open(JobStore* db, std::filesystem::path store,
                                                             CoordinatorMetrics* metrics);

  // The version `ref` (NAME, NAME:vN, NAME@TAG, with or without "model:")
  // names; INVALID_ARGUMENT for a malformed ref, NOT_FOUND otherwise.
  absl::StatusOr<const retina::v1::ModelVersion*> Resolve(const std::string& ref) const;
  // Every version (of `name` when not empty), by name then version.
  std::vector<const retina::v1::ModelVersion*> List(const std::string& name) const;
  // The user a name belongs to (who registered its oldest version); "" when new.
  std::string Owner(const std::string& name) const;
  int NextVersion(const std::string& name) const;
  // Whether some version's lineage starts at a checkpoint of `job_id`.
  bool HasVersionFrom(const std::string& job_id) const;
  // A registered version other than `id` whose lineage passes through `id`.
  const retina::v1::ModelVersion* UsedBy(const std::string& id) const;

  // Commits the records (new or changed) in one transaction, then applies
  // them in memory and rewrites their names' INDEX.json.
  absl::Status Put(const std::vector<retina::v1::ModelVersion>& models);
  // Deletes the record (committed), then rewrites the index. The files are
  // the caller's to remove.
  absl::Status Remove(const std::string& id);

 private:
  ModelRegistry(JobStore* db, std::filesystem::path store, CoordinatorMetrics* metrics)
      : db_(db), store_(std::move(store)), metrics_(metrics) {}
  absl::Status WriteIndex(const std::string& name) const;
  void Count() const;

  JobStore* const db_;
  const std::filesystem::path store_;
  CoordinatorMetrics* const metrics_;
  std::map<std::string, std::map<int, retina::v1::ModelVersion>> models_;  // name -> version -> record
};

}  // namespace retina::coordinator
