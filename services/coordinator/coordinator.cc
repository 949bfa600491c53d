#include "services/coordinator/coordinator.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/job_config.h"
#include "common/job_identity.h"
#include "common/logging.h"
#include "common/metrics_csv.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "services/coordinator/agent_executor.h"
#include "services/coordinator/job_query.h"
#include "services/coordinator/job_spec.h"
#include "services/coordinator/job_table.h"
#include "services/coordinator/limits.h"
#include "services/coordinator/slurm_executor.h"
#include "services/coordinator/worker_registry.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

class ABSL_SCOPED_LOCKABLE Coordinator::StateLock {
 public:
  explicit StateLock(Coordinator* c) ABSL_EXCLUSIVE_LOCK_FUNCTION(c->mu_) : c_(c) {
    c_->mu_.Lock();
    got_ = c_->NowMs();
  }
  ~StateLock() ABSL_UNLOCK_FUNCTION() {
    c_->NoteNotServing(got_, c_->NowMs());
    c_->mu_.Unlock();
  }
  StateLock(const StateLock&) = delete;
  StateLock& operator=(const StateLock&) = delete;

 private:
  Coordinator* const c_;
  int64_t got_ = 0;
};

namespace {

absl::Status CheckRequestId(const std::string& request_id, Origin origin) {
  if (request_id.size() > limits::kRequestIdChars) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: at most ", limits::kRequestIdChars, " characters"));
  }
  for (size_t i = 0; i < request_id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request_id[i]);
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request_id: printable ASCII without spaces (byte 0x%02x at position %d)", c, static_cast<int>(i)));
    }
  }
  if ((origin == Origin::kStudy) != absl::StartsWithIgnoreCase(request_id, "study:")) {
    return absl::InvalidArgumentError(origin == Origin::kStudy
                                          ? "request_id: a study's child is submitted as 'study:<study>/<index>'"
                                          : "request_id: ids starting with 'study:' are the coordinator's (a study's "
                                            "children)");
  }
  return absl::OkStatus();
}

// How many jobs a spec adds to its user's queue: a study, its children
// (datasets x inits x seeds).
int QueuedBy(const v1::JobSpec& spec) {
  if (spec.kind() != v1::STUDY) return 1;
  absl::StatusOr<JobConfig> c = ParseJobConfig(spec.config_yaml(), "spec.config_yaml");
  if (!c.ok()) return 1;
  const StudyConfig& st = c->study;
  return static_cast<int>(std::max<size_t>(1, st.datasets.size()) * st.inits.size() *
                          (st.seeds.empty() ? st.seed_count : st.seeds.size()));
}

}  // namespace

Coordinator::Coordinator(CoordinatorOptions options, CoordinatorMetrics* metrics)
    : options_(std::move(options)), metrics_(metrics), serving_(std::make_unique<NotServingLog>()) {}

Coordinator::~Coordinator() {
  stop_ = true;
  if (ticker_.joinable()) ticker_.join();
}

int64_t Coordinator::NowMs() const {
  return options_.clock_ms ? options_.clock_ms() : absl::ToUnixMillis(absl::Now());
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(CoordinatorOptions options,
                                                                 CoordinatorMetrics* metrics) {
  if (options.port_min < 1024 || options.port_max > 65535 || options.port_min > options.port_max) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous port range ", options.port_min, "-", options.port_max,
                                                   " is not within 1024-65535"));
  }
  std::unique_ptr<Coordinator> c(new Coordinator(std::move(options), metrics));
  const CoordinatorOptions& o = c->options_;
  ASSIGN_OR_RETURN(c->table_, JobTable::Open({o.database, o.sqlite_synchronous, o.store, o.adopt_store}, &c->hub_,
                                             metrics, c->NowMs()));
  ExecutorContext ctx;
  ctx.jobs = c->table_.get();
  ctx.metrics = metrics;
  Coordinator* p = c.get();
  ctx.now_ms = [p] { return p->NowMs(); };
  ctx.locked = [p](const std::function<void()>& fn) {
    StateLock lock(p);
    fn();
  };
  ctx.report_events = [p](const v1::ReportEventsRequest& r) { return p->ReportEvents(r); };
  if (o.executor == CoordinatorOptions::Executor::kSlurm) {
    c->executor_ = std::make_unique<SlurmExecutor>(
        o.slurm, SlurmExecutor::Paths{o.store, o.allowed_roots, o.output_roots}, std::move(ctx),
        o.slurm_client ? o.slurm_client() : NewCommandSlurmClient(o.slurm));
  } else {
    AgentOptions a{o.heartbeat, o.lease, o.port_min, o.port_max, o.allowed_roots, o.output_roots,
                   o.max_running_slots_per_user, o.preempt_min_run, o.grow_after};
    auto agents = std::make_unique<AgentExecutor>(std::move(a), std::move(ctx), c->serving_.get(), c->NowMs());
    c->agents_ = agents.get();
    c->executor_ = std::move(agents);
  }
  c->Recover();
  if (!o.background_tick) return c;
  c->ticker_ = std::thread([p] {
    int64_t last = p->NowMs();
    while (!p->stop_.load()) {
      absl::SleepFor(p->options_.tick);
      // A tick that comes late (the process stopped or starved) is time
      // nothing was served either.
      if (const int64_t now = p->NowMs(); now - last > 2 * absl::ToInt64Milliseconds(p->options_.tick)) {
        StateLock lock(p);
        p->NoteNotServing(last + absl::ToInt64Milliseconds(p->options_.tick), now);
      }
      p->Tick();  // the executor's slow work (Slurm's commands) in it is not a stall
      last = p->NowMs();
    }
  });
  return c;
}

void Coordinator::Recover() {
  StateLock lock(this);
  const int64_t now = NowMs();
  int placed = 0, total = 0;
  for (const auto& [seq, e] : table_->by_seq()) {
    ++total;
    if (!IsPlaced(e->job) || e->job.spec().kind() == v1::STUDY) continue;
    executor_->Recover(e, now);
    ++placed;
  }
  if (total > 0) {
    RETINA_LOG(Info) << "recovered " << total << " jobs from " << options_.database.string() << "; " << placed
                     << " placed before the restart"
                     << (agents_ ? absl::StrCat(" wait up to ", absl::FormatDuration(2 * options_.lease),
                                                " for their workers")
                                 : std::string(" are followed in Slurm's listing"));
  }
}

// A hold of the state lock, or a late tick, longer than a heartbeat interval
// is time nothing could be served: heartbeats queue behind it (on the lock,
// or on RPC threads that wait for it), so leases must not run during it.
// (Waits are not counted: under steady contention every wait would be one,
// and a dead worker would never be found; a long wait is someone's long
// hold, which is.)
void Coordinator::NoteNotServing(int64_t from, int64_t to) {
  if (serving_->Note(from, to, absl::ToInt64Milliseconds(options_.heartbeat))) {
    RETINA_LOG(Warning) << "the coordinator did not serve for " << (to - from) / 1000.0
                        << " s (state lock held or the process stalled); leases do not run meanwhile";
  }
}

void Coordinator::Tick() {
  {
    StateLock lock(this);
    const int64_t now = NowMs();
    table_->ProbeIfDown(now);
    if (table_->db_ok()) {
      for (JobEntry* e : table_->TakeRetries()) {
        if (IsPlaced(e->job) && e->job.spec().kind() != v1::STUDY) executor_->Retry(e, now);
      }
    }
    executor_->Tick(now);
  }
  executor_->Poll();
}

void Coordinator::SetHealthListener(std::function<void(bool)> listener) {
  StateLock lock(this);
  table_->SetHealthListener(std::move(listener));
}

// ---- JobService ----

absl::StatusOr<v1::Job> Coordinator::Submit(const v1::SubmitJobRequest& request, const std::string& user,
                                            Origin origin) {
  RETURN_IF_ERROR(CheckRequestId(request.request_id(), origin));
  {
    StateLock lock(this);
    if (JobEntry* e = table_->ByRequest(user, request.request_id())) return e->job;  // an idempotent retry
  }
  // Checked and parsed without the lock.
  v1::JobSpec spec = request.spec();
  RETURN_IF_ERROR(ValidateJobSpec(&spec, options_.store, options_.allowed_roots, options_.output_roots));
  if (spec.kind() == v1::STUDY) {  // every child is checked before the study is accepted
    RETURN_IF_ERROR(PinStudyInits(&spec, options_.store));
    RETURN_IF_ERROR(StudyChildSpecs(spec, "study", options_.store, options_.allowed_roots, options_.output_roots).status());
  }
  const int adding = QueuedBy(spec);
  int64_t seq = 0;
  {
    StateLock lock(this);
    if (JobEntry* e = table_->ByRequest(user, request.request_id())) return e->job;
    RETURN_IF_ERROR(Admit(spec, user, adding, origin));
    seq = table_->TakeSeq();
  }
  // The job's directory, reserved without the lock (a mkdir on the shared store).
  v1::Job job;
  job.set_uid(NewRandomId());
  ASSIGN_OR_RETURN(std::string id, ReserveDirectory(&seq, job.uid()));
  job.set_id(id);
  job.set_user(user);
  job.set_request_id(request.request_id());
  // A study is never placed: it runs from submission, through its children.
  job.set_state(spec.kind() == v1::STUDY ? v1::RUNNING : v1::QUEUED);
  *job.mutable_spec() = std::move(spec);

  StateLock lock(this);
  const StoreLayout layout(options_.store);
  if (JobEntry* e = table_->ByRequest(user, request.request_id())) {  // a concurrent retry won
    ReleaseJobDir(layout, id, job.uid());
    return e->job;
  }
  if (absl::Status s = Admit(job.spec(), user, adding, origin); !s.ok()) {  // checked again: others were admitted
    ReleaseJobDir(layout, id, job.uid());
    return s;
  }
  const int64_t now = NowMs();
  job.set_create_unix_ms(now);
  if (job.state() == v1::RUNNING) job.set_start_unix_ms(now);
  const std::string uid = job.uid();
  absl::StatusOr<JobEntry*> e = table_->Insert(seq, std::move(job));
  if (!e.ok()) {
    ReleaseJobDir(layout, id, uid);
    return e.status();
  }
  return (*e)->job;  // the next tick places it
}

absl::Status Coordinator::Admit(const v1::JobSpec& spec, const std::string& user, int adding, Origin origin) {
  if (origin == Origin::kStudy) return absl::OkStatus();  // checked and counted with its study
  if (spec.kind() != v1::STUDY) RETURN_IF_ERROR(executor_->CheckFits(spec));
  const int slots = spec.world_size() * spec.slots_per_rank();
  if (options_.max_running_slots_per_user > 0 && slots > options_.max_running_slots_per_user) {
    return absl::InvalidArgumentError(absl::StrCat("spec.world_size: ", spec.world_size(), " ranks x ",
                                                   spec.slots_per_rank(), " slots can never run: a user may hold ",
                                                   options_.max_running_slots_per_user, " slots at once"));
  }
  if (options_.max_queued_jobs_per_user <= 0) return absl::OkStatus();
  const int queued = table_->QueuedOf(user);
  if (queued + adding > options_.max_queued_jobs_per_user) {
    return absl::ResourceExhaustedError(absl::StrCat("user ", user, " has ", queued, " queued job(s); ",
                                                     adding > 1 ? absl::StrCat(adding, " more") : "one more",
                                                     " would pass the limit of ", options_.max_queued_jobs_per_user,
                                                     " (wait for some to start, or cancel some)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Coordinator::ReserveDirectory(int64_t* seq, const std::string& uid) {
  // The id must be new to the store too: its directory is reserved with an
  // exclusive mkdir; ids whose directory exists (another database's jobs,
  // standalone runs) are skipped.
  const StoreLayout layout(options_.store);
  for (int tries = 0;; ++tries) {
    const std::string id = absl::StrFormat("job-%06d", *seq);
    const absl::Status reserved = ReserveJobDir(layout, id, uid);
    if (reserved.ok()) return id;
    if (!absl::IsAlreadyExists(reserved) || tries == 1000) {
      return absl::UnavailableError(absl::StrCat("store: cannot create the job directory: ", reserved.message()));
    }
    StateLock lock(this);
    *seq = table_->TakeSeq();
  }
}

absl::StatusOr<v1::Job> Coordinator::Get(const std::string& id) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(id));
  return e->job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::List(const v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > limits::kPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be 0-", limits::kPageSize, ", got ", request.page_size()));
  }
  const int page_size = request.page_size() == 0 ? 100 : request.page_size();
  ASSIGN_OR_RETURN(JobFilter filter, ParseJobFilter(request.filter()));
  ASSIGN_OR_RETURN(int64_t before, ParsePageToken(request.page_token()));
  StateLock lock(this);
  v1::ListJobsResponse out;
  int64_t last_seq = 0;
  size_t bytes = 0;
  const auto& by_seq = table_->by_seq();
  for (auto it = std::make_reverse_iterator(by_seq.lower_bound(before)); it != by_seq.rend(); ++it) {
    if (!filter.Matches(it->second->job)) continue;
    // More match: the next page starts below the last returned. A page also
    // ends before its message would pass kListResponseBytes (one job at least).
    const size_t job_bytes = it->second->job.ByteSizeLong() + 8;
    if (out.jobs_size() == page_size || (out.jobs_size() > 0 && bytes + job_bytes > limits::kListResponseBytes)) {
      out.set_next_page_token(PageToken(last_seq));
      break;
    }
    *out.add_jobs() = it->second->job;
    bytes += job_bytes;
    last_seq = it->first;
  }
  return out;
}

absl::StatusOr<v1::Job> Coordinator::Cancel(const std::string& id) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(id));
  RETURN_IF_ERROR(CancelEntry(e));
  return e->job;
}

absl::Status Coordinator::CancelEntry(JobEntry* e) {
  const v1::Job& job = e->job;
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat("id: job ", job.id(), " is already ", JobStateName(job.state()),
                                                      "; only active jobs can be cancelled"));
  }
  if (job.cancel_requested()) return absl::OkStatus();
  v1::Job next = job;
  next.set_cancel_requested(true);
  if (job.state() == v1::QUEUED) {
    next.set_state(v1::CANCELLED);
    next.set_end_unix_ms(NowMs());
    next.set_message("cancelled while queued");
    RETURN_IF_ERROR(table_->Commit(e, std::move(next)));
    if (metrics_) metrics_->JobFinished("cancelled");
    return absl::OkStatus();
  }
  if (job.spec().kind() == v1::STUDY) {  // the study controller cancels its children, then ends it
    next.set_message("cancel requested; cancelling its children");
    return table_->Commit(e, std::move(next));
  }
  next.set_message("cancel requested; stopping ranks");
  RETURN_IF_ERROR(table_->Commit(e, std::move(next)));
  executor_->Cancel(e, NowMs());
  return absl::OkStatus();
}

absl::Status Coordinator::UpdateStudy(const std::string& id, const StudyUpdate& u) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(id));
  if (e->job.spec().kind() != v1::STUDY || e->job.state() != v1::RUNNING) {
    return absl::FailedPreconditionError(absl::StrCat("id: ", id, " is not a running study"));
  }
  v1::Job next = e->job;
  next.mutable_progress()->set_step(u.children_ended);
  next.mutable_progress()->set_total_steps(u.children_total);
  if (u.state == v1::RUNNING) {
    if (next.progress().step() == e->job.progress().step() &&
        next.progress().total_steps() == e->job.progress().total_steps()) {
      return absl::OkStatus();
    }
    return table_->Commit(e, std::move(next), v1::JobEvent::PROGRESS);
  }
  if (!IsTerminal(u.state)) return absl::InvalidArgumentError("state: RUNNING, or how the study ended");
  next.set_state(u.state);
  next.set_message(u.message);
  next.set_end_unix_ms(NowMs());
  RETURN_IF_ERROR(table_->Commit(e, std::move(next)));
  RETINA_LOG(Info) << id << " -> " << JobStateName(e->job.state()) << ": " << e->job.message();
  if (metrics_) {
    metrics_->JobFinished(u.state == v1::SUCCEEDED ? "succeeded" : u.state == v1::CANCELLED ? "cancelled" : "failed");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JobMetrics> Coordinator::Metrics(const std::string& id) {
  {
    StateLock lock(this);
    RETURN_IF_ERROR(table_->Find(id).status());
  }
  const StoreLayout layout(options_.store);
  v1::JobMetrics out;
  out.set_id(id);
  absl::StatusOr<std::string> csv = ReadFile(layout.MetricsCsvPath(id));
  for (const MetricsRow& r : ParseMetricsCsv(csv.ok() ? *csv : std::string())) {
    v1::MetricPoint* p = out.add_points();
    p->set_step(r.step);
    p->set_epoch(r.epoch);
    p->set_loss(r.loss);
    p->set_lr(r.lr);
    p->set_images_per_s(r.images_per_s);
    p->set_data_wait_s(r.data_wait_s);
    p->set_allreduce_s(r.allreduce_exposed_s);
    p->set_time_unix_s(r.time.value_or(0));
    if (r.val_iou) {
      p->set_has_val_iou(true);
      p->set_val_iou(*r.val_iou);
    }
  }
  if (absl::StatusOr<std::string> eval = ReadFile(layout.EvalReportPath(id)); eval.ok()) out.set_eval_json(*eval);
  if (absl::StatusOr<std::string> study = ReadFile(layout.StudyReportPath(id)); study.ok()) out.set_study_json(*study);
  return out;
}

absl::StatusOr<int64_t> Coordinator::Watch(const std::string& id, WatchHub::Sink sink) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(id));
  return hub_.Add(e->job, std::move(sink));
}

void Coordinator::Unwatch(int64_t handle) {
  StateLock lock(this);
  hub_.Remove(handle);
}

absl::StatusOr<std::pair<std::filesystem::path, bool>> Coordinator::LogFile(const std::string& id, int attempt,
                                                                           int rank) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(id));
  if (attempt == 0) attempt = e->job.attempt();
  if (attempt < 1 || attempt > e->job.attempt()) {
    return absl::InvalidArgumentError(
        absl::StrCat("attempt: job ", id, " has attempts 1-", e->job.attempt(), ", asked for ", attempt));
  }
  const int world = std::max(1, e->job.spec().world_size());
  if (rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("rank: job ", id, " has ranks 0-", world - 1));
  }
  const bool ended = IsTerminal(e->job.state()) || attempt < e->job.attempt();
  return std::make_pair(StoreLayout(options_.store).RankLogPath(id, attempt, rank), ended);
}

// ---- WorkerService ----

namespace {

absl::Status NoAgents() {
  return absl::FailedPreconditionError(
      "this coordinator runs attempts as Slurm jobs (--executor slurm); retina-worker agents are not used");
}

}  // namespace

v1::ListWorkersResponse Coordinator::Workers() {
  StateLock lock(this);
  return agents_ ? agents_->Workers() : v1::ListWorkersResponse();
}

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(const v1::RegisterWorkerRequest& r) {
  RETURN_IF_ERROR(ValidateRegistration(r));
  if (agents_ == nullptr) return NoAgents();
  StateLock lock(this);
  return agents_->Register(r, NowMs());
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& r) {
  if (r.worker_id().size() > limits::kIdChars) return absl::InvalidArgumentError("worker_id: 1-128 characters");
  if (r.running_size() > limits::kWorkerSlots) {
    return absl::InvalidArgumentError(absl::StrCat("running: at most ", limits::kWorkerSlots, " tasks"));
  }
  for (const v1::TaskRef& t : r.running()) RETURN_IF_ERROR(ValidateTaskRef(t, limits::kWorkerSlots, "running"));
  if (agents_ == nullptr) return NoAgents();
  agents_->Renew(r.worker_id(), NowMs());
  // The rest (confirmations, assignments, stops) needs the state lock. When
  // it stays busy past half a heartbeat, answer now with nothing: the lease
  // is renewed above, and assignments and stops ride on every heartbeat
  // until confirmed.
  const absl::Time give_up = absl::Now() + options_.heartbeat / 2;
  while (!mu_.TryLock()) {
    if (absl::Now() >= give_up) {
      if (metrics_) metrics_->HeartbeatDeferred();
      return v1::HeartbeatResponse();
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  v1::HeartbeatResponse out = agents_->Heartbeat(r, NowMs());
  mu_.Unlock();
  return out;
}

absl::Status Coordinator::CompleteTask(const v1::CompleteTaskRequest& r) {
  if (r.worker_id().size() > limits::kIdChars || r.job_id().size() > limits::kIdChars) {
    return absl::InvalidArgumentError("worker_id/job_id: at most 128 characters");
  }
  if (r.exits_size() > limits::kWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat("exits: at most ", limits::kWorldSize));
  }
  if (agents_ == nullptr) return NoAgents();
  StateLock lock(this);
  agents_->Complete(r, NowMs());
  return absl::OkStatus();
}

absl::Status Coordinator::ReportEvents(const v1::ReportEventsRequest& r) {
  // Parsed and checked before the lock: a malformed batch changes nothing.
  if (r.events_json_size() > limits::kEventsPerReport) {
    return absl::InvalidArgumentError(
        absl::StrCat("events_json: ", r.events_json_size(), " lines; the limit is ", limits::kEventsPerReport));
  }
  // The rank's Event records (common/records.h); a newer or unknown kind of
  // event is passed on to watchers without changing the job.
  std::vector<std::optional<Event>> events;
  for (int i = 0; i < r.events_json_size(); ++i) {
    const std::string& line = r.events_json(i);
    if (line.size() > limits::kEventBytes) {
      return absl::InvalidArgumentError(absl::StrCat("events_json[", i, "]: ", line.size(), " bytes; the limit is ",
                                                     limits::kEventBytes));
    }
    absl::StatusOr<Event> ev = DecodeEvent(line, absl::StrCat("events_json[", i, "]"));
    if (absl::IsUnimplemented(ev.status())) {
      events.emplace_back(std::nullopt);
      continue;
    }
    if (!ev.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(ev.status().message(), ": '", limits::Echo(line), "'"));
    }
    events.emplace_back(std::move(*ev));
  }
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, table_->Find(r.job_id()));
  if (e->job.attempt() != r.attempt() || IsTerminal(e->job.state())) return absl::OkStatus();
  v1::Progress* p = e->job.mutable_progress();
  for (size_t i = 0; i < events.size(); ++i) {
    const std::string& line = r.events_json(static_cast<int>(i));
    if (!events[i]) {
      table_->Publish(e, v1::JobEvent::PROGRESS, line);
      continue;
    }
    const Event& ev = *events[i];
    if (const auto* start = std::get_if<StartEvent>(&ev)) {
      p->set_total_steps(start->total_steps);
      p->set_step(start->step);
      table_->Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (const auto* step = std::get_if<StepEvent>(&ev)) {
      p->set_step(step->step);
      p->set_loss(step->loss);
      p->set_lr(step->lr);
      p->set_images_per_s(step->images_per_s);
      p->set_data_wait_s(step->data_wait_s);
      p->set_allreduce_s(step->allreduce_s);
      if (metrics_) {
        metrics_->TrainStep(e->job.id(), p->step(), p->loss(), p->images_per_s(), p->allreduce_s(), p->data_wait_s());
      }
      table_->Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (const auto* eval = std::get_if<EvalEvent>(&ev)) {
      p->set_last_iou(eval->iou);
      p->set_has_iou(true);
      if (metrics_) metrics_->EvalIou(e->job.id(), eval->iou_per_class);
      table_->Publish(e, v1::JobEvent::EVAL, line);
    } else if (const auto* predict = std::get_if<PredictEvent>(&ev)) {
      // An infer job's steps are chunk rows (retina watch shows voxels from the line).
      p->set_total_steps(predict->chunks_total);
      p->set_step(predict->chunks_done);
      table_->Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (const auto* serving = std::get_if<ServingEvent>(&ev)) {
      p->set_endpoint(serving->address);
      p->clear_models();
      for (const std::string& m : serving->models) p->add_models(m);
      table_->Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (std::holds_alternative<ResizedEvent>(ev)) {
      table_->Publish(e, v1::JobEvent::RESIZED, line);
    } else if (std::holds_alternative<PreemptedEvent>(ev)) {
      table_->Publish(e, v1::JobEvent::PREEMPTED, line);
    } else if (const auto* checkpoint = std::get_if<CheckpointEvent>(&ev)) {
      p->set_last_checkpoint_step(checkpoint->step);
      p->set_last_checkpoint_unix_ms(NowMs());
      if (metrics_) metrics_->CheckpointWritten(e->job.id(), NowMs() / 1000.0);
      table_->Publish(e, v1::JobEvent::CHECKPOINT, line);
    }
  }
  return absl::OkStatus();
}

}  // namespace retina::coordinator
