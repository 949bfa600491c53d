// Where attempts run: the seam between the job table (job_table.h), which
// owns what a job is, and the system that runs its ranks. Two executors:
// the coordinator's own worker agents (agent_executor.h: leases, heartbeats,
// gang placement) and Slurm (slurm_executor.h: sbatch, scontrol, scancel).
//
// The protocol, the same for every executor:
//   - the table holds QUEUED jobs; an executor starts an attempt by
//     committing it SCHEDULED with attempt + 1 (and, when its ranks have
//     started, RUNNING);
//   - progress events of the attempt's rank 0 go through the coordinator's
//     ReportEvents, whoever reads them (a worker agent's report, Slurm's
//     events.jsonl in the store);
//   - an attempt ends through JobTable::EndAttempt with its outcome
//     (succeeded / failed / cancelled), and the one rule of attempt_rule.h
//     decides what that means: requeued (attempt + 1 later), SUCCEEDED,
//     FAILED or CANCELLED;
//   - a commit that fails is retried: the job is handed back to Retry at the
//     next tick.
// STUDY jobs are never given to an executor (the study controller drives
// them through the coordinator's client calls).
//
// Thread-safety: every method but Poll is called with the coordinator's
// state lock held and must not block on anything slow. Poll is called
// without it, after each tick, for the slow work (a placement plan, external
// commands); it takes the lock through ExecutorContext::locked to apply what
// it found, checking that the jobs are still as it saw them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "retina/v1/job_service.pb.h"
#include "retina/v1/worker_service.pb.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/job_table.h"

namespace retina::coordinator {

struct ExecutorContext {
  JobTable* jobs = nullptr;              // under the state lock
  CoordinatorMetrics* metrics = nullptr;  // may be null
  std::function<int64_t()> now_ms;        // the coordinator's clock (Unix ms)
  // Runs `fn` holding the state lock.
  std::function<void(const std::function<void()>& fn)> locked;
  // The coordinator's ReportEvents (takes the state lock itself).
  std::function<absl::Status(const retina::v1::ReportEventsRequest&)> report_events;
};

class Executor {
 public:
  virtual ~Executor() = default;
  // A job recovered SCHEDULED or RUNNING at start-up.
  virtual void Recover(JobEntry* e, int64_t now_ms) = 0;
  // OK when a job of `spec` can ever run here; INVALID_ARGUMENT naming the
  // field otherwise.
  virtual absl::Status CheckFits(const retina::v1::JobSpec& spec) = 0;
  // Each tick: leases, deadlines, pending commits.
  virtual void Tick(int64_t now_ms) = 0;
  // A transition of `e` whose commit failed, again.
  virtual void Retry(JobEntry* e, int64_t now_ms) = 0;
  // The cancel of a placed job was committed: stop its attempt; the job
  // ends CANCELLED once it has stopped.
  virtual void Cancel(JobEntry* e, int64_t now_ms) = 0;
  // Without the state lock, after each tick.
  virtual void Poll() = 0;
};

}  // namespace retina::coordinator
