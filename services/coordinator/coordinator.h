// The coordinator's core: jobs, workers, the scheduler. No gRPC types; the
// gRPC adapters (coordinator_service.h) translate requests and statuses.
//
// Job state machine (every transition is committed to the JobStore before the
// call that caused it returns, and published to watchers after):
//
//   QUEUED --schedule--> SCHEDULED --all parts running--> RUNNING
//   RUNNING/SCHEDULED --all parts exited 0--> SUCCEEDED
//   any non-terminal --cancel--> CANCELLED (QUEUED at once; otherwise once
//       every placed rank has exited: SIGTERM, grace period, SIGKILL)
//   SCHEDULED/RUNNING --a rank failed or its worker was lost--> the attempt
//       ends once every part has exited or been lost; then QUEUED again
//       (attempt + 1, the ranks resume from LATEST) while attempt <= max_restarts,
//       else FAILED.
//   STUDY jobs: RUNNING from submission, never placed; they create FINETUNE
//       children and end when every child has (coordinator_studies.cc).
//
// An attempt is a gang: all ranks are placed at once or the job waits. Jobs
// are ordered by priority (higher first) then submission; a job that does not
// fit blocks those behind it (no backfill, so large jobs never starve). Among
// placements the fewest workers win, and on the last worker the best fit
// (fewest free slots that suffice). Each attempt gets a fresh rendezvous
// port; MASTER_ADDR is the host of the worker that holds rank 0.
//
// Workers register their slots, heartbeat, and lose their lease after
// `lease` without a heartbeat: their ranks count as failed. Assignments and
// stop requests ride on heartbeat responses until the worker's running list
// confirms them, so a lost response is harmless. After a restart the
// coordinator waits two leases for workers to re-register their running tasks;
// an attempt whose ranks are all re-attached goes on, any other is ended and
// requeued.
//
// Thread-safety: all public methods may be called concurrently; one mutex
// guards the state (SQLite calls included: they take tens of microseconds).
// Watch sinks are called with that mutex held and must not block or call back.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "retina/v1/job_service.pb.h"
#include "retina/v1/worker_service.pb.h"
#include "common/study.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/job_store.h"
#include "services/coordinator/placement.h"
#include "services/coordinator/slurm_executor.h"

namespace retina::coordinator {

struct CoordinatorOptions {
  std::filesystem::path database = "retina.db";  // SQLite job store
  std::string sqlite_synchronous = "full";       // full | normal (see JobStore)
  std::filesystem::path store = ".";             // the shared store (metrics.csv, logs)
  absl::Duration heartbeat = absl::Seconds(1);   // asked of workers
  absl::Duration lease = absl::Seconds(10);      // a worker silent this long is lost
  absl::Duration tick = absl::Milliseconds(100); // scheduler / lease check period
  int port_min = 29500;                          // rendezvous ports (MASTER_PORT)
  int port_max = 29999;
  bool adopt_store = false;  // a new database may take over a store another database used
  // Besides the store, where service jobs may read datasets and weights
  // (common/path_policy.h).
  std::vector<std::filesystem::path> allowed_roots;
  // Where infer outputs may go besides the job's own directory (--output-root).
  std::vector<std::filesystem::path> output_roots;
  // Fair use (placement.h "Fair share"): slots one user's jobs may hold at
  // once, and queued jobs one user may have (a study counts its children);
  // 0 = no limit.
  int max_running_slots_per_user = 0;
  int max_queued_jobs_per_user = 0;
  // Where attempts run (docs/hpc.md, "The service on top of Slurm"): on this
  // coordinator's retina-worker agents, or as Slurm jobs (slurm_executor.h).
  enum class Executor { kWorkers, kSlurm };
  Executor executor = Executor::kWorkers;
  SlurmOptions slurm;
  // For tests: the clock every lease, deadline and timestamp reads (Unix ms;
  // null = the wall clock), and whether a background thread calls Tick()
  // every `tick` (false: the caller ticks).
  std::function<int64_t()> clock_ms;
  bool background_tick = true;
};

class Coordinator {
 public:
  // Opens the job store and recovers its jobs. `metrics` may be null and must
  // outlive the coordinator. Starts the background tick thread.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(CoordinatorOptions options, CoordinatorMetrics* metrics);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // JobService. `user` is who asked (from the bearer token).
  absl::StatusOr<retina::v1::Job> Submit(const retina::v1::SubmitJobRequest& request, const std::string& user);
  absl::StatusOr<retina::v1::Job> Get(const std::string& id);
  absl::StatusOr<retina::v1::ListJobsResponse> List(const retina::v1::ListJobsRequest& request);
  absl::StatusOr<retina::v1::Job> Cancel(const std::string& id);
  absl::StatusOr<retina::v1::JobMetrics> Metrics(const std::string& id);
  retina::v1::ListWorkersResponse Workers();

  // Watching: `sink` gets a SNAPSHOT at once, then every event of the job;
  // `last` is true on the event after which nothing more comes (a terminal
  // state). Returns a handle for Unwatch; NOT_FOUND for an unknown job.
  // Events are shared by every watcher of the job (built once per event).
  using WatchSink = std::function<void(std::shared_ptr<const retina::v1::JobEvent> event, bool last)>;
  absl::StatusOr<int64_t> Watch(const std::string& id, WatchSink sink);
  void Unwatch(int64_t handle);

  // The log file of (job, attempt (0 = current), rank) in the store, and
  // whether the job has ended.
  absl::StatusOr<std::pair<std::filesystem::path, bool>> LogFile(const std::string& id, int attempt, int rank);

  // WorkerService.
  absl::StatusOr<retina::v1::RegisterWorkerResponse> RegisterWorker(const retina::v1::RegisterWorkerRequest& request);
  absl::StatusOr<retina::v1::HeartbeatResponse> Heartbeat(const retina::v1::HeartbeatRequest& request);
  absl::Status ReportEvents(const retina::v1::ReportEventsRequest& request);
  absl::Status CompleteTask(const retina::v1::CompleteTaskRequest& request);

  // One round of lease checks and scheduling (the tick thread calls it).
  void Tick();
  // For tests: runs `fn` holding the state lock, as a slow commit or a long
  // pass would hold it.
  void WithStateLockForTest(const std::function<void()>& fn);

  // Called with true/false whenever the database starts/stops committing
  // (and once at once with the current state): the gRPC health status.
  // Called with the coordinator's lock held; must not call back.
  void SetHealthListener(std::function<void(bool)> listener);

 private:
  struct Part {  // the ranks of one attempt on one worker
    std::vector<int> ranks;
    std::vector<int> slot_ids;
    bool confirmed = false;  // the worker listed it as running
    bool done = false;
    bool failed = false;
  };
  struct JobEntry {
    int64_t seq = 0;
    retina::v1::Job job;
    int64_t queued_ms = 0;
    std::map<std::string, Part> parts;  // worker id -> part (current attempt)
    bool attempt_failed = false;
    std::string failure;                // first failure of the attempt
    bool recovering = false;            // placed before a restart, awaiting workers
    std::string attempt_reason = "first";  // why the next attempt runs (metric label)
    int committed_state = 0;            // the state last written to the store
  };
  struct WorkerEntry {
    retina::v1::WorkerInfo info;
    int64_t last_seen_ms = 0;
    std::vector<int> slot_ids;                     // e.g. GPU ids; 0..n-1 for CPU
    std::set<int> used;                            // slot ids in use
    std::map<std::pair<std::string, int>, std::vector<int>> tasks;  // (job, attempt) -> slots
    std::map<std::pair<std::string, int>, retina::v1::Assignment> pending;  // not yet confirmed
    std::map<std::pair<std::string, int>, retina::v1::TaskRef> stopping;
  };

  Coordinator(CoordinatorOptions options, CoordinatorMetrics* metrics, std::unique_ptr<JobStore> store);
  // Submit's commit: a new job (QUEUED; a study RUNNING) with a fresh id and
  // its directory reserved in the store.
  absl::StatusOr<JobEntry*> InsertJob(retina::v1::JobSpec spec, const std::string& user, const std::string& request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CancelEntry(JobEntry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The per-user limits of CoordinatorOptions for a new job of `user` that
  // adds `adding` jobs to the queue (a study: its children; parsed by the
  // caller before it takes the lock).
  absl::Status CheckUserLimits(const retina::v1::JobSpec& spec, const std::string& user, int adding)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Studies (coordinator_studies.cc; common/study.h). A study is RUNNING from
  // submission and never placed. Its children are FINETUNE jobs submitted
  // with request ids "study:<id>/<index>", so creating them again (after a
  // restart in the middle) finds the ones that exist. When a child ends its
  // scores are read from the store once; study.json and study.csv are
  // rewritten by the tick; the study ends (SUCCEEDED when a child did, else
  // FAILED; CANCELLED when cancelled) once every child has ended and the
  // final aggregate is written.
  struct StudyEntry {
    StudyPlan plan;
    std::map<int, std::string> children;          // StudyChild::index -> job id
    std::map<int, StudyChildResult> ended;        // children that have ended, with their scores
    bool dirty = true;                            // study.json is behind
    std::string broken;                           // why it cannot go on (it then fails)
  };
  void RecoverStudies() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Creates the children that do not exist yet.
  void StartStudy(JobEntry* study) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A child changed state: study.json is behind; an ended child's scores are read.
  void NoteStudyChild(JobEntry* child) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RereadMissingScores(StudyEntry* st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TickStudies(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TickStudy(JobEntry* study, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The Slurm executor (coordinator_slurm.cc). Each attempt of a job is one
  // Slurm job named retina-<id>-<attempt>; SlurmTick (the ticker thread,
  // after Tick) submits QUEUED jobs with sbatch, polls `scontrol show job -o`,
  // maps Slurm's states to ours, issues scancel for cancelled jobs and feeds
  // rank 0's events.jsonl from the store to watchers and metrics. Slurm's
  // commands run without mu_ held.
  struct SlurmRun {
    std::string slurm_id;         // empty: re-attach by name at the next poll
    int name_attempt = 0;         // the attempt in the Slurm job's name
    int restarts = -1;            // Slurm's restart count last seen (-1: not yet)
    int missing_polls = 0;        // polls that did not list it
    bool cancel_sent = false;
    int64_t events_offset = 0;    // bytes of events.jsonl already applied
  };
  void SlurmTick() ABSL_LOCKS_EXCLUDED(mu_);
  void ApplySlurmInfo(JobEntry* e, SlurmRun* run, const SlurmJobInfo& info, int64_t now_ms)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the current Slurm attempt: QUEUED again (attempt + 1 at the next
  // sbatch) while restarts are left, else FAILED; or SUCCEEDED / CANCELLED.
  void EndSlurmAttempt(JobEntry* e, retina::v1::JobState state, const std::string& message, int64_t now_ms)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::string, SlurmRun> slurm_runs_ ABSL_GUARDED_BY(mu_);  // by job id
  int64_t next_slurm_poll_ms_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration slurm_backoff_ ABSL_GUARDED_BY(mu_);  // the poll interval now (zero: options_.slurm.poll)
  std::vector<std::string> slurm_orphans_ ABSL_GUARDED_BY(mu_);      // Slurm jobs to scancel
  absl::Status Recover() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobEntry*> Find(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Persists `next` as the job's record, then applies it to `entry->job` and
  // publishes a STATE event. On failure nothing changes in memory (what
  // GetJob shows is always what a restart would recover) and the job is
  // retried by the tick.
  absl::Status Commit(JobEntry* entry, retina::v1::Job next,
                      retina::v1::JobEvent::Type type = retina::v1::JobEvent::STATE) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a commit's outcome; health follows whether the database commits.
  void NoteCommit(const absl::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkRunningIfConfirmed(JobEntry* entry, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(JobEntry* entry, retina::v1::JobEvent::Type type, const std::string& event_json)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Schedule(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies a plan of PlanPass (placement.h): assignments, slots, the
  // commit. False (nothing changed) when the commit fails.
  bool Place(JobEntry* entry, const GangPlan& plan, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int PickPort(const std::string& host) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailPart(JobEntry* entry, const std::string& worker, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopAttempt(JobEntry* entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeFinishAttempt(JobEntry* entry, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseTask(WorkerEntry* worker, const std::string& job, int attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoseWorker(WorkerEntry* worker, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int TotalSlots(retina::v1::SlotType type) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t NowMs() const;  // options_.clock_ms, else the wall clock

  // The state lock is taken through StateLock: a wait for it or a hold of it
  // longer than `tick` is time the coordinator was not serving (heartbeats
  // may have queued behind it, on the lock or the RPC threads), and leases
  // do not run during it (docs/service.md "Leases").
  class StateLock;
  void NoteNotServing(int64_t from_ms, int64_t to_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How long worker `w` has been silent while the coordinator was serving.
  int64_t ServingSilence(const WorkerEntry& w, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  CoordinatorMetrics* const metrics_;
  absl::Mutex mu_;
  std::unique_ptr<JobStore> store_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, JobEntry*> by_seq_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JobEntry*> by_request_ ABSL_GUARDED_BY(mu_);  // by RequestKey(user, request id)
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t recovery_deadline_ms_ ABSL_GUARDED_BY(mu_) = 0;
  int next_port_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, int> state_counts_ ABSL_GUARDED_BY(mu_);
  bool seen_workers_ ABSL_GUARDED_BY(mu_) = false;
  bool db_ok_ ABSL_GUARDED_BY(mu_) = true;             // the last commit succeeded
  std::function<void(bool)> health_ ABSL_GUARDED_BY(mu_);
  std::set<JobEntry*> retry_ ABSL_GUARDED_BY(mu_);     // a transition's commit failed
  std::map<std::string, StudyEntry> studies_ ABSL_GUARDED_BY(mu_);  // active studies by id
  int64_t last_probe_ms_ ABSL_GUARDED_BY(mu_) = 0;     // while !db_ok_: a test write per second
  // Intervals [from, to] the coordinator was not serving, ascending and
  // disjoint, the last hour's (at most kMaxNotServing of them).
  std::deque<std::pair<int64_t, int64_t>> not_serving_ ABSL_GUARDED_BY(mu_);
  struct Watcher {
    std::string job;
    WatchSink sink;
  };
  std::map<int64_t, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, int64_t> watchers_by_job_ ABSL_GUARDED_BY(mu_);
  int64_t next_watch_ ABSL_GUARDED_BY(mu_) = 1;

  // Lease renewals, apart from mu_: a heartbeat renews its worker's lease at
  // once even while mu_ is busy with streaming work or a slow commit.
  absl::Mutex lease_mu_;
  std::map<std::string, int64_t> lease_seen_ms_ ABSL_GUARDED_BY(lease_mu_);
  int64_t LastSeen(const WorkerEntry& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::atomic<bool> stop_{false};
  std::thread ticker_;
};

// "QUEUED", "RUNNING", ...
std::string JobStateName(retina::v1::JobState state);
bool IsTerminal(retina::v1::JobState state);

}  // namespace retina::coordinator
