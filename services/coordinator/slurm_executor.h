// The Slurm executor (docs/hpc.md, "The service on top of Slurm"; executor.h
// for the protocol every executor follows): each attempt of a job is one
// Slurm job, named retina-<id>-<attempt>, that runs
// deploy/slurm/retina-slurm.sh.
//
// Poll, without the state lock: issues scancel for cancelled jobs, lists
// Slurm's jobs (backing off while Slurm does not answer), feeds rank 0's
// events.jsonl from the store to ReportEvents, maps each followed Slurm job's
// state to ours (a requeue by Slurm is a new attempt of the same Slurm job,
// resumed from LATEST), and submits QUEUED jobs with sbatch. A Slurm job
// found by name is re-attached: after a coordinator restart, or an sbatch
// whose commit a crash cut off. A job Slurm no longer lists for three polls
// has ended unseen (purged: MinJobAge) and fails. Slurm's calls
// (slurm_commands.h SlurmClient) are made without the lock; what they found
// is applied under it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "services/coordinator/executor.h"
#include "services/coordinator/slurm_commands.h"

namespace retina::coordinator {

class SlurmExecutor : public Executor {
 public:
  struct Paths {
    std::filesystem::path store;
    std::vector<std::filesystem::path> allowed_roots, output_roots;  // passed to the ranks
  };
  SlurmExecutor(SlurmOptions options, Paths paths, ExecutorContext context, std::unique_ptr<SlurmClient> slurm);

  void Recover(JobEntry* e, int64_t now_ms) override;
  // A serve job is a long-lived server on a worker agent, not a batch job.
  absl::Status CheckFits(const retina::v1::JobSpec& spec) override {
    if (spec.kind() == retina::v1::SERVE) {
      return absl::FailedPreconditionError(
          "spec.kind: SERVE jobs run on retina-worker agents; this coordinator runs jobs through Slurm "
          "(run retina-serve on a node instead: docs/serving.md)");
    }
    return absl::OkStatus();
  }
  void Tick(int64_t) override {}
  void Retry(JobEntry*, int64_t) override {}  // the next poll commits again
  void Cancel(JobEntry* e, int64_t now_ms) override;
  void Poll() override;

 private:
  struct Run {
    std::string slurm_id;       // empty: re-attach by name at the next poll
    int name_attempt = 0;       // the attempt in the Slurm job's name
    int restarts = -1;          // Slurm's restart count last seen (-1: not yet)
    int missing_polls = 0;      // polls that did not list it
    bool cancel_sent = false;
    int64_t events_offset = 0;  // bytes of events.jsonl already applied
  };
  struct Submission {
    std::string id;
    SlurmAttempt attempt;
    std::string config_yaml;
  };
  // What the poll asks of Slurm, taken under the lock; false: nothing to do.
  struct Work {
    std::vector<std::string> cancels, orphans;
    std::vector<std::tuple<std::string, int, int64_t>> event_files;  // job, attempt, offset
  };
  bool TakeWork(Work* work);
  void FeedEvents(Work* work, std::map<std::string, int64_t>* offsets);
  // Under the lock: the listing applied to the followed jobs; the QUEUED
  // jobs to submit.
  std::vector<Submission> Apply(const std::vector<std::pair<std::string, absl::Status>>& cancelled,
                                const std::map<std::string, int64_t>& offsets,
                                const absl::StatusOr<std::vector<SlurmJobInfo>>& listed);
  void Follow(const std::map<std::string, const SlurmJobInfo*>& by_id,
              const std::map<std::string, const SlurmJobInfo*>& by_name, int64_t now_ms);
  std::vector<Submission> Start(const std::map<std::string, const SlurmJobInfo*>& by_name, bool listed, int64_t now_ms);
  void Submitted(const std::vector<std::tuple<std::string, int, absl::StatusOr<std::string>>>& submitted);
  void ApplyInfo(JobEntry* e, Run* run, const SlurmJobInfo& info, int64_t now_ms);
  void End(JobEntry* e, AttemptOutcome outcome, const std::string& message, int64_t now_ms);

  const SlurmOptions options_;
  const Paths paths_;
  const ExecutorContext ctx_;
  JobTable& jobs_;
  const std::unique_ptr<SlurmClient> slurm_;
  // Under the state lock:
  std::map<std::string, Run> runs_;  // by job id
  int64_t next_poll_ms_ = 0;
  absl::Duration backoff_;                // the poll interval now (zero: options_.poll)
  std::vector<std::string> orphans_;      // Slurm jobs to scancel
};

}  // namespace retina::coordinator
