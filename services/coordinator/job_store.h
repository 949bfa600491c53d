// Durable job records in SQLite (WAL journal). One row per job: indexed
// columns for lookups plus the serialized retina.v1.Job. A call returns only
// after its transaction committed, so a caller may acknowledge what it wrote.
//
// Durability: WAL with synchronous=FULL (default) survives process and OS
// crashes; synchronous=NORMAL survives process crashes (SIGKILL) only and
// commits faster. Not thread-safe: the owner serialises calls.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "retina/v1/job_service.pb.h"
#include "retina/v1/model_service.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace retina::coordinator {

struct StoredJob {
  int64_t seq = 0;  // submission order, 1-based
  retina::v1::Job job;
};

// The key under which a client's request id is unique: request ids are per
// user, so the same id from two users makes two jobs and a retry finds only
// its own user's job. Unambiguous because request ids are printable ASCII
// without spaces (the coordinator refuses others) and so hold no 0x1f.
std::string RequestKey(const std::string& user, const std::string& request_id);

class JobStore {
 public:
  // Opens or creates the database at `path`; `synchronous` is "full" or
  // "normal". Runs PRAGMA quick_check first: a damaged database is refused
  // (DATA_LOSS) with the repair steps, before anything is read or written.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::filesystem::path& path,
                                                       const std::string& synchronous = "full");
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Every stored job, in submission order.
  absl::StatusOr<std::vector<StoredJob>> LoadAll();
  // Inserts a new job; ALREADY_EXISTS when its id, or its user's non-empty
  // request_id (RequestKey), is taken.
  absl::Status Insert(const StoredJob& job);
  // Replaces the record of an existing job (NOT_FOUND otherwise).
  absl::Status Update(const retina::v1::Job& job);
  // A transaction around several writes: one fsync for all of them (a
  // scheduling pass's placements). Writes in between are durable only once
  // CommitBatch succeeds; after a failed CommitBatch they are rolled back.
  absl::Status BeginBatch();
  absl::Status CommitBatch();
  void RollbackBatch();  // drops the writes since BeginBatch

  // The model registry's records (model_registry.h), one row per version,
  // keyed by its id (NAME:vN); same durability as the jobs.
  absl::StatusOr<std::vector<retina::v1::ModelVersion>> LoadModels();
  absl::Status PutModel(const retina::v1::ModelVersion& model);  // insert or replace
  absl::Status DeleteModel(const std::string& id);                // NOT_FOUND when absent

  // Small key/value facts about the database (e.g. the store it belongs to);
  // "" for a key never set.
  absl::StatusOr<std::string> GetMeta(const std::string& key);
  absl::Status SetMeta(const std::string& key, const std::string& value);
  // A small write that does not wait for a lock held elsewhere (busy timeout
  // 0): whether the database commits right now.
  absl::Status Probe();
  // How long Open's integrity check (PRAGMA quick_check) took.
  absl::Duration check_time() const { return check_time_; }

 private:
  JobStore(sqlite3* db, std::filesystem::path path);
  absl::Status Exec(const char* sql);
  absl::Status QuickCheck();
  absl::Status StepAndReset(sqlite3_stmt* stmt, const char* what);
  absl::Status Error(const char* what) const;

  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  sqlite3_stmt* update_ = nullptr;
  std::filesystem::path path_;
  absl::Duration check_time_;
};

}  // namespace retina::coordinator
