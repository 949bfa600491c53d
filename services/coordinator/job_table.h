// The coordinator's jobs: the table in memory over the job database
// (job_store.h), and the one place a job's record changes.
//
// Every change is committed to the database first and applied to memory
// after (Commit): what GetJob shows is always what a restart would recover.
// A change whose commit fails leaves memory as it was; the job joins the
// retry set and its executor tries again at the next tick. Health follows
// whether the database commits. Committed changes are published to the
// job's watchers (watch_hub.h).
//
// Ids: job-<seq>, seq counting up past every id the database or the store's
// job directories hold; TakeSeq hands a number out once, so a submission can
// reserve its directory without holding the state lock.
//
// Not thread-safe: every call is made with the coordinator's state lock held.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "retina/v1/job_service.pb.h"
#include "services/coordinator/attempt_rule.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/job_store.h"
#include "services/coordinator/watch_hub.h"

namespace retina::coordinator {

struct JobEntry {
  int64_t seq = 0;  // submission order
  retina::v1::Job job;
  int64_t queued_ms = 0;    // when it last became QUEUED (the queue-wait metric)
  int committed_state = 0;  // the state counted in the gauges
};

class JobTable {
 public:
  struct Options {
    std::filesystem::path database;
    std::string synchronous = "full";
    std::filesystem::path store;
    bool adopt_store = false;  // a new database may take over a store another database used
  };
  // Opens the database, checks that it and the store belong together
  // (common/job_identity.h) and loads every job. `hub` and `metrics` (may be
  // null) must outlive the table.
  static absl::StatusOr<std::unique_ptr<JobTable>> Open(const Options& options, WatchHub* hub,
                                                       CoordinatorMetrics* metrics, int64_t now_ms);

  // INVALID_ARGUMENT (too long) or NOT_FOUND, naming `id`.
  absl::StatusOr<JobEntry*> Find(const std::string& id);
  JobEntry* Get(const std::string& id);  // null when unknown
  JobEntry* ByRequest(const std::string& user, const std::string& request_id);
  const std::map<int64_t, JobEntry*>& by_seq() const { return by_seq_; }
  // QUEUED jobs of `user`.
  int QueuedOf(const std::string& user) const;
  // Counts every new job and every change of a job's state: a placement
  // pass that placed nothing need not run again until it moves.
  uint64_t state_changes() const { return state_changes_; }

  // The number of a new job's id ("job-%06d"); never handed out twice.
  int64_t TakeSeq() { return next_seq_++; }
  // Commits a new job (its id from TakeSeq) and adds it.
  absl::StatusOr<JobEntry*> Insert(int64_t seq, retina::v1::Job job);
  // Persists `next` as the job's record, then applies it to `e->job` and
  // publishes it (a STATE event, or `type`). On failure nothing changes in
  // memory and the job joins the retry set.
  absl::Status Commit(JobEntry* e, retina::v1::Job next,
                      retina::v1::JobEvent::Type type = retina::v1::JobEvent::STATE);
  // Ends the current attempt of `e` by the one rule (attempt_rule.h): QUEUED
  // again, or SUCCEEDED / FAILED / CANCELLED; logged and counted. False when
  // the commit failed (the job is then in the retry set).
  bool EndAttempt(JobEntry* e, AttemptOutcome outcome, const std::string& detail, int64_t now_ms);
  void Publish(JobEntry* e, retina::v1::JobEvent::Type type, const std::string& event_json);

  // A transaction over several commits (a scheduling pass's placements, the
  // RUNNING confirmations of a tick): one fsync. Commits in between reach
  // memory at once; if CommitBatch fails, the caller restores the records it
  // changed (Restore) before the state lock is released.
  bool BeginBatch();
  absl::Status CommitBatch();
  void Restore(JobEntry* e, retina::v1::Job before);

  // Jobs whose last transition did not commit, for their executor to retry.
  std::set<JobEntry*> TakeRetries();

  // The job database, for the model registry's records (model_registry.h),
  // which commit through the same connection under the same lock.
  JobStore* db() { return db_.get(); }
  // Whether the last commit succeeded; the listener hears every change (and
  // the current state at once). While the database does not commit, a probe
  // write once a second (ProbeIfDown) finds when it does again.
  bool db_ok() const { return db_ok_; }
  void SetHealthListener(std::function<void(bool)> listener);
  void ProbeIfDown(int64_t now_ms);

 private:
  JobTable(std::unique_ptr<JobStore> db, std::string db_name, WatchHub* hub, CoordinatorMetrics* metrics)
      : db_(std::move(db)), db_name_(std::move(db_name)), hub_(hub), metrics_(metrics) {}
  void NoteCommit(const absl::Status& s);
  void Count(JobEntry* e);  // e->job.state() is now the counted one
  void UpdateGauges();

  std::unique_ptr<JobStore> db_;
  const std::string db_name_;
  WatchHub* const hub_;
  CoordinatorMetrics* const metrics_;
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_;
  std::map<int64_t, JobEntry*> by_seq_;
  std::map<std::string, JobEntry*> by_request_;  // by RequestKey(user, request id)
  std::map<int, int> state_counts_;
  std::set<JobEntry*> retry_;
  int64_t next_seq_ = 1;
  uint64_t state_changes_ = 0;
  bool db_ok_ = true;
  int64_t last_probe_ms_ = 0;
  std::function<void(bool)> health_;
};

std::string JobStateName(retina::v1::JobState state);  // "QUEUED", "RUNNING", ...
// SCHEDULED or RUNNING: an attempt is out with an executor.
inline bool IsPlaced(const retina::v1::Job& job) {
  return job.state() == retina::v1::SCHEDULED || job.state() == retina::v1::RUNNING;
}
// The ranks of the job's current (or last) attempt: spec.world_size unless
// an elastic job was placed smaller (records before elastic jobs have 0).
inline int AttemptWorldSize(const retina::v1::Job& job) {
  return job.attempt_world_size() > 0 ? job.attempt_world_size() : job.spec().world_size();
}

}  // namespace retina::coordinator
