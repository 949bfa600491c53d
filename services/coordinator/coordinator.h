// The coordinator's core behind one facade: what the gRPC adapters
// (coordinator_service.h) and the study controller (services/study/) call.
// No gRPC types here.
//
// The parts, each with one job:
//   - the job table (job_table.h): jobs in memory over the job database, the
//     one place a record changes, committed before it is shown;
//   - the executor (executor.h): where attempts run: the worker agents
//     (agent_executor.h, with the worker registry and its leases,
//     worker_registry.h, and the pure placement, placement.h) or Slurm
//     (slurm_executor.h);
//   - the watch hub (watch_hub.h): each job's events to its watchers;
//   - studies are driven from outside, by the study controller, through
//     Submit / Get / List / Cancel and UpdateStudy.
//
// Job state machine (every transition is committed to the database before the
// call that caused it returns, and published to watchers after):
//
//   QUEUED --the executor starts an attempt--> SCHEDULED --ranks started--> RUNNING
//   RUNNING/SCHEDULED --the attempt succeeded--> SUCCEEDED
//   any non-terminal --cancel--> CANCELLED (QUEUED at once; otherwise once
//       the attempt has stopped: SIGTERM, grace period, SIGKILL)
//   SCHEDULED/RUNNING --the attempt failed (a rank, a lost worker)--> QUEUED
//       again (attempt + 1, the ranks resume from LATEST) while attempt <=
//       max_restarts, else FAILED (attempt_rule.h, for every executor).
//   STUDY jobs: RUNNING from submission, never placed; the study controller
//       submits their FINETUNE children and ends them (UpdateStudy).
//
// Thread-safety: all public methods may be called concurrently. One state
// lock guards the parts; nothing slow runs under it (directory reservation,
// YAML parsing, placement planning, Slurm's commands and study reports are
// done outside, then checked and committed under it). SQLite commits do run
// under it (tens of microseconds; the tick batches its commits into one
// transaction). Watch sinks are called with the lock held and must not block
// or call back.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "retina/v1/job_service.pb.h"
#include "retina/v1/model_service.pb.h"
#include "retina/v1/worker_service.pb.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/slurm_commands.h"
#include "services/coordinator/watch_hub.h"

namespace retina::coordinator {

class AgentExecutor;
class Executor;
class JobTable;
struct JobEntry;
class ModelRegistry;
class NotServingLog;

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
  // Priority preemption (agent executor): a running job is preempted for a
  // higher-priority one only after running this long (docs/service.md).
  absl::Duration preempt_min_run = absl::Minutes(10);
  absl::Duration grow_after = absl::Minutes(5);  // an elastic job below its size grows back after this
  int max_queued_jobs_per_user = 0;
  // Where attempts run (docs/hpc.md, "The service on top of Slurm"): on this
  // coordinator's retina-worker agents, or as Slurm jobs (slurm_executor.h).
  enum class Executor { kWorkers, kSlurm };
  Executor executor = Executor::kWorkers;
  SlurmOptions slurm;
  // For tests: Slurm itself (null: its commands, slurm_commands.h).
  std::function<std::unique_ptr<SlurmClient>()> slurm_client;
  // For tests: the clock every lease, deadline and timestamp reads (Unix ms;
  // null = the wall clock), and whether a background thread calls Tick()
  // every `tick` (false: the caller ticks).
  std::function<int64_t()> clock_ms;
  bool background_tick = true;
};

// Who submits: a client (the API), or the study controller for a study's
// children (request ids "study:<study>/<index>", which clients may not use;
// not counted again against the queue limit, the study was).
enum class Origin { kClient, kStudy };

// A study's progress, or its end, from the study controller.
struct StudyUpdate {
  int64_t children_ended = 0, children_total = 0;
  retina::v1::JobState state = retina::v1::RUNNING;  // or its end: SUCCEEDED, FAILED, CANCELLED
  std::string message;                               // with the end
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
  absl::StatusOr<retina::v1::Job> Submit(const retina::v1::SubmitJobRequest& request, const std::string& user,
                                         Origin origin = Origin::kClient);
  absl::StatusOr<retina::v1::Job> Get(const std::string& id);
  absl::StatusOr<retina::v1::ListJobsResponse> List(const retina::v1::ListJobsRequest& request);
  absl::StatusOr<retina::v1::Job> Cancel(const std::string& id);
  absl::StatusOr<retina::v1::JobMetrics> Metrics(const std::string& id);
  retina::v1::ListWorkersResponse Workers();

  // Watching (watch_hub.h): `sink` gets a SNAPSHOT at once, then every event
  // of the job. Returns a handle for Unwatch (0: the job had ended);
  // NOT_FOUND for an unknown job.
  absl::StatusOr<int64_t> Watch(const std::string& id, WatchHub::Sink sink);
  void Unwatch(int64_t handle);

  // The log file of (job, attempt (0 = current), rank) in the store, and
  // whether the job has ended.
  absl::StatusOr<std::pair<std::filesystem::path, bool>> LogFile(const std::string& id, int attempt, int rank);

  // WorkerService (FAILED_PRECONDITION when attempts run on Slurm).
  absl::StatusOr<retina::v1::RegisterWorkerResponse> RegisterWorker(const retina::v1::RegisterWorkerRequest& request);
  absl::StatusOr<retina::v1::HeartbeatResponse> Heartbeat(const retina::v1::HeartbeatRequest& request);
  absl::Status ReportEvents(const retina::v1::ReportEventsRequest& request);
  absl::Status CompleteTask(const retina::v1::CompleteTaskRequest& request);

  // ModelService (model_registry.h, docs/models.md). `user` asked; `admin`
  // acts on every user's jobs and models. Every client lists and reads
  // models; a lineage's job files are shown to the model's owner and admins;
  // registering takes the job's owner (or an admin) and a name that is new or
  // the caller's; tagging and deleting take the model's owner or an admin.
  // Delete refuses (FAILED_PRECONDITION) a version another model's lineage
  // passes through or an unfinished job names.
  absl::StatusOr<retina::v1::ModelVersion> RegisterModel(const retina::v1::RegisterModelRequest& request,
                                                         const std::string& user, bool admin);
  retina::v1::ListModelVersionsResponse ListModels(const retina::v1::ListModelVersionsRequest& request);
  absl::StatusOr<retina::v1::ModelVersion> GetModel(const std::string& ref, const std::string& user, bool admin);
  absl::StatusOr<retina::v1::ModelVersion> TagModel(const retina::v1::TagModelRequest& request,
                                                    const std::string& user, bool admin);
  absl::StatusOr<retina::v1::ModelVersion> DeleteModel(const std::string& ref, const std::string& user, bool admin);

  // The study controller's report on a RUNNING study: its progress, or its
  // end (FAILED_PRECONDITION for a job that is not a running study).
  absl::Status UpdateStudy(const std::string& id, const StudyUpdate& update);

  // One round: leases, retries, then the executor's poll (placement, Slurm)
  // without the state lock. The tick thread calls it every `tick`.
  void Tick();

  // Called with true/false whenever the database starts/stops committing
  // (and once at once with the current state): the gRPC health status.
  // Called with the coordinator's lock held; must not call back.
  void SetHealthListener(std::function<void(bool)> listener);

 private:
  friend class CoordinatorTestPeer;  // tests: holds the state lock as a slow pass would
  // The state lock, timed: a hold longer than a heartbeat is time the
  // coordinator was not serving (heartbeats queue behind it), and leases do
  // not run during it (worker_registry.h).
  class StateLock;

  Coordinator(CoordinatorOptions options, CoordinatorMetrics* metrics);
  void Recover();
  // What a new job must pass under the lock (the executor's capacity, the
  // per-user limits; `adding` jobs join the queue).
  absl::Status Admit(const retina::v1::JobSpec& spec, const std::string& user, int adding, Origin origin);
  // Reserves job-<seq>'s directory in the store (skipping numbers whose
  // directory exists): the job's id. Without the lock.
  absl::StatusOr<std::string> ReserveDirectory(int64_t* seq, const std::string& uid);
  absl::Status CancelEntry(JobEntry* e);
  absl::StatusOr<retina::v1::ModelVersion> Register(const retina::v1::RegisterModelRequest& request,
                                                    const std::string& user, bool admin, const std::string& origin);
  // finetune.register: registers each newly SUCCEEDED fine-tune that names a
  // model. In Tick, without the lock.
  void AutoRegister();
  void NoteNotServing(int64_t from_ms, int64_t to_ms);
  int64_t NowMs() const;  // options_.clock_ms, else the wall clock

  const CoordinatorOptions options_;
  CoordinatorMetrics* const metrics_;
  absl::Mutex mu_;
  // Guarded by mu_ (the parts are not thread-safe themselves):
  WatchHub hub_;
  std::unique_ptr<NotServingLog> serving_;
  std::unique_ptr<JobTable> table_;
  std::unique_ptr<ModelRegistry> models_;
  uint64_t auto_register_seen_changes_ = ~uint64_t{0};  // table_->state_changes() at the last scan
  std::set<std::string> auto_register_done_;            // jobs AutoRegister has looked at
  std::unique_ptr<Executor> executor_;
  AgentExecutor* agents_ = nullptr;  // executor_ when attempts run on worker agents

  std::atomic<bool> stop_{false};
  std::thread ticker_;
};

}  // namespace retina::coordinator
