// The worker-agent executor: attempts run on the coordinator's own
// retina-worker agents (executor.h for the protocol every executor follows).
//
// An attempt is a gang: all ranks are placed at once or the job waits. Jobs
// are ordered by priority (higher first) then submission; a job that does not
// fit blocks those behind it (no backfill, so large jobs never starve). Among
// placements the fewest workers win, and on the last worker the best fit
// (placement.h). The plan is made without the state lock (Poll) and applied
// under it, each placement checked against the workers and the job as they
// are then. Each attempt gets a fresh rendezvous port; MASTER_ADDR is the
// host of the worker that holds rank 0.
//
// Assignments and stop requests ride on heartbeat responses until the
// worker's running list confirms them, so a lost response is harmless. A job
// whose parts are all confirmed is committed RUNNING by the next tick,
// together with the tick's other confirmations (one transaction). A worker
// that misses its lease (worker_registry.h) is lost: its ranks count as
// failed. After a coordinator restart the workers have two leases to
// re-register their running tasks; an attempt whose ranks all re-attach goes
// on, any other is ended and requeued.
//
// Not thread-safe: every method but Poll is called with the state lock held.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "retina/v1/worker_service.pb.h"
#include "services/coordinator/executor.h"
#include "services/coordinator/worker_registry.h"

namespace retina::coordinator {

struct AgentOptions {
  absl::Duration heartbeat = absl::Seconds(1);
  absl::Duration lease = absl::Seconds(10);
  int port_min = 29500, port_max = 29999;
  std::vector<std::filesystem::path> allowed_roots, output_roots;  // passed to the ranks
  int max_running_slots_per_user = 0;
  absl::Duration preempt_min_run = absl::Minutes(10);  // placement.h PlanPreemption
  absl::Duration grow_after = absl::Minutes(5);         // placement.h PlanGrowth: min_interval
};

class AgentExecutor : public Executor {
 public:
  // `serving` is the coordinator's record of the time it did not serve.
  AgentExecutor(AgentOptions options, ExecutorContext context, const NotServingLog* serving, int64_t now_ms);

  void Recover(JobEntry* e, int64_t now_ms) override;
  absl::Status CheckFits(const retina::v1::JobSpec& spec) override;
  void Tick(int64_t now_ms) override;
  void Retry(JobEntry* e, int64_t now_ms) override;
  void Cancel(JobEntry* e, int64_t now_ms) override;
  void Poll() override;

  // WorkerService, after validation (worker_registry.h), under the state lock.
  retina::v1::RegisterWorkerResponse Register(const retina::v1::RegisterWorkerRequest& r, int64_t now_ms);
  retina::v1::HeartbeatResponse Heartbeat(const retina::v1::HeartbeatRequest& r, int64_t now_ms);
  void Complete(const retina::v1::CompleteTaskRequest& r, int64_t now_ms);
  retina::v1::ListWorkersResponse Workers();
  // Lease renewal, without the state lock.
  void Renew(const std::string& worker, int64_t now_ms) { registry_.Renew(worker, now_ms); }

 private:
  struct Part {  // the ranks of one attempt on one worker
    std::vector<int> ranks;
    std::vector<int> slot_ids;
    bool confirmed = false;  // the worker listed it as running
    bool done = false;
    bool failed = false;
  };
  struct Attempt {  // a placed job's current attempt
    std::map<std::string, Part> parts;  // by worker id
    bool failed = false;
    std::string failure;          // first failure of the attempt
    bool recovering = false;      // placed before a restart, awaiting its workers
    std::string reason = "first";  // why the next attempt runs (metric label)
    std::string host;               // the rendezvous (MASTER_ADDR, MASTER_PORT) it holds
    int port = 0;
    std::string preempted_by;       // being stopped for this higher-priority job ("" if not)
    std::string growing;            // being stopped to grow ("2 -> 4 ranks"; "" if not)
  };
  // Job.stopping's prefixes, and its commit (before the stop is sent).
  static constexpr const char* kStoppingPreempted = "preempted: ";
  static constexpr const char* kStoppingGrow = "grow: ";
  void CommitStopping(JobEntry* e, const std::string& why);
  // Elastic growth: stops the job PlanGrowth picks. True when it did, or
  // when a candidate is only waiting out the interval (plan again).
  bool MaybeGrow(const std::vector<RunningJob>& running, const std::vector<FreeWorker>& free,
                 const std::vector<QueuedJob>& queue, int64_t now_ms);
  // Priority preemption: when `blocked` (the queue's head, which did not
  // fit) outranks running jobs, stops the ones PlanPreemption picks. True
  // when it did, or when a candidate may become eligible later (its minimum
  // run time), so the pass is not marked idle.
  bool MaybePreempt(const QueuedJob& blocked, const std::vector<FreeWorker>& free,
                    const std::vector<RunningJob>& running, int64_t now_ms);

  // Applies a plan made by Poll: false (nothing changed) when the job or its
  // workers are no longer as planned, or the commit fails.
  bool Place(JobEntry* e, int attempt_seen, const GangPlan& plan, int64_t now_ms);
  // An attempt's assignment to a worker (its ranks and slots added by Place).
  retina::v1::Assignment AssignmentOf(const retina::v1::Job& job, int world_size, int local_world_size) const;
  int PickPort(const std::string& host);
  void FreePort(Attempt* a);
  void FailPart(JobEntry* e, const std::string& worker, const std::string& why, const std::string& reason);
  void StopAttempt(JobEntry* e);
  void NoteConfirmed(JobEntry* e);
  void CommitConfirmed(int64_t now_ms);
  void MaybeFinishAttempt(JobEntry* e, int64_t now_ms);
  void LoseWorker(WorkerEntry* w, int64_t now_ms);
  void EndRecovery(int64_t now_ms);

  const AgentOptions options_;
  const ExecutorContext ctx_;
  JobTable& jobs_;
  WorkerRegistry registry_;
  std::map<std::string, Attempt> attempts_;  // by job id, while the job is active
  std::set<std::string> confirmed_;          // SCHEDULED, every part confirmed: RUNNING at the tick
  std::map<std::string, std::set<int>> ports_;  // rendezvous ports of placed attempts, by host
  // (table, registry) changes when the last pass placed nothing: until
  // either moves, another pass would place nothing too.
  std::pair<uint64_t, uint64_t> idle_at_{~uint64_t{0}, ~uint64_t{0}};
  int64_t recovery_deadline_ms_ = 0;
  int next_port_ = 0;
};

}  // namespace retina::coordinator
