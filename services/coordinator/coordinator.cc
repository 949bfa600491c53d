#include "services/coordinator/coordinator.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/job_config.h"
#include "common/job_identity.h"
#include "common/path_policy.h"
#include "common/logging.h"
#include "common/metrics_csv.h"
#include "common/status_macros.h"
#include "common/records.h"
#include "common/store_layout.h"
#include "nlohmann/json.hpp"
#include "services/coordinator/attempt_rule.h"
#include "services/coordinator/job_query.h"
#include "services/coordinator/job_spec.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

// The state lock, timed: see NoteNotServing.
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

using TaskKey = std::pair<std::string, int>;

v1::SlotType NormalType(v1::SlotType t) { return t == v1::SLOT_GPU ? v1::SLOT_GPU : v1::SLOT_CPU; }

// The database and the store must belong together (common/job_identity.h):
// a new (or emptied) database over a store another database used would hand
// out that database's job ids again.
absl::Status CheckStoreIdentity(const CoordinatorOptions& o, JobStore* db) {
  const StoreLayout store(o.store);
  ASSIGN_OR_RETURN(std::string in_db, db->GetMeta("store_id"));
  ASSIGN_OR_RETURN(std::string in_store, ReadStoreId(store));
  const std::string db_name = o.database.string(), store_name = o.store.string();
  if (in_db.empty() && in_store.empty()) {  // both new (or from before store ids): bind them
    const std::string id = NewRandomId();
    RETURN_IF_ERROR(WriteStoreId(store, id));
    RETURN_IF_ERROR(db->SetMeta("store_id", id));
    if (StoreHasJobs(store)) {
      RETINA_LOG(Warning) << store_name << " has job directories but no STORE_ID (standalone runs, or an older "
                          << "version): new job ids skip every directory that exists";
    }
    return absl::OkStatus();
  }
  if (in_db.empty()) {
    if (!o.adopt_store) {
      return absl::FailedPreconditionError(absl::StrCat(
          db_name, " is a new (or empty) job database, but the store ", store_name, " belongs to another one (STORE_ID ",
          in_store, "). Start with that store's database (--db), or a fresh --store; to take this store over with ",
          "the new database, pass --adopt-store (its jobs are then not listed; new ids skip them)."));
    }
    RETINA_LOG(Warning) << "--adopt-store: " << db_name << " takes over " << store_name << " (STORE_ID " << in_store
                        << "); its earlier jobs are not listed and new job ids skip them";
    return db->SetMeta("store_id", in_store);
  }
  if (in_store.empty()) {
    if (StoreHasJobs(store)) {
      return absl::FailedPreconditionError(absl::StrCat(
          db_name, " belongs to the store with STORE_ID ", in_db, ", but ", store_name,
          " has no STORE_ID and holds jobs of its own: is --store the right directory?"));
    }
    return WriteStoreId(store, in_db);  // the store is new (e.g. recreated): it joins this database
  }
  if (in_db != in_store) {
    return absl::FailedPreconditionError(absl::StrCat(db_name, " belongs to the store with STORE_ID ", in_db, ", but ",
                                                      store_name, " is STORE_ID ", in_store,
                                                      ": is --db or --store the wrong one?"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTaskRef(const v1::TaskRef& t, int max_slots, const char* field) {
  if (t.job_id().empty() || t.job_id().size() > limits::kIdChars || t.attempt() < 1 ||
      t.ranks_size() > limits::kWorldSize || t.slot_ids_size() > max_slots) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": a task needs a job_id of 1-", limits::kIdChars,
                                                   " characters, an attempt >= 1 and at most ", max_slots, " slots"));
  }
  for (int s : t.slot_ids()) {
    if (s < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".slot_ids: must be >= 0"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string JobStateName(v1::JobState state) { return v1::JobState_Name(state); }

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

Coordinator::Coordinator(CoordinatorOptions options, CoordinatorMetrics* metrics, std::unique_ptr<JobStore> store)
    : options_(std::move(options)), metrics_(metrics), store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(CoordinatorOptions options,
                                                                 CoordinatorMetrics* metrics) {
  if (options.port_min < 1024 || options.port_max > 65535 || options.port_min > options.port_max) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous port range ", options.port_min, "-", options.port_max,
                                                   " is not within 1024-65535"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, JobStore::Open(options.database, options.sqlite_synchronous));
  RETINA_LOG(Info) << options.database.string() << ": quick_check passed in "
                   << absl::FormatDuration(store->check_time());
  RETURN_IF_ERROR(CheckStoreIdentity(options, store.get()));
  std::unique_ptr<Coordinator> c(new Coordinator(std::move(options), metrics, std::move(store)));
  {
    StateLock lock(c.get());
    // Start the port rotation at a random place: a restarted coordinator (or a
    // second one on the host) does not hand out the port it just used.
    c->next_port_ = static_cast<int>(absl::ToUnixNanos(absl::Now()) % 100003);
    RETURN_IF_ERROR(c->Recover());
  }
  if (!c->options_.background_tick) return c;
  c->ticker_ = std::thread([p = c.get()] {
    int64_t last = p->NowMs();
    while (!p->stop_.load()) {
      absl::SleepFor(p->options_.tick);
      // A tick that comes late (the process stopped or starved) is time
      // nothing was served either.
      if (const int64_t now = p->NowMs(); now - last > 2 * absl::ToInt64Milliseconds(p->options_.tick)) {
        StateLock lock(p);
        p->NoteNotServing(last + absl::ToInt64Milliseconds(p->options_.tick), now);
      }
      p->Tick();
      if (p->options_.executor == CoordinatorOptions::Executor::kSlurm) p->SlurmTick();  // slow commands: not a stall
      last = p->NowMs();
    }
  });
  return c;
}

int64_t Coordinator::NowMs() const {
  return options_.clock_ms ? options_.clock_ms() : absl::ToUnixMillis(absl::Now());
}

// A hold of the state lock, or a late tick, longer than a heartbeat
// interval is time nothing could be served: heartbeats queue behind it (on
// the lock, or on RPC threads that wait for it), so leases must not run
// during it. (Waits are not counted: under steady contention every wait
// would be one, and a dead worker would never be found; a long wait is
// someone's long hold, which is.) A worker is lost only after a whole lease of *serving* time
// without a heartbeat (ServingSilence), so a stalled database or a long
// pass never fails a healthy worker's jobs, and a dead worker is still
// found, one lease plus the stalls later.
void Coordinator::NoteNotServing(int64_t from, int64_t to) {
  constexpr size_t kMaxNotServing = 4096;
  if (to - from <= absl::ToInt64Milliseconds(options_.heartbeat)) return;
  RETINA_LOG(Warning) << "the coordinator did not serve for " << (to - from) / 1000.0
                      << " s (state lock held or the process stalled); leases do not run meanwhile";
  if (!not_serving_.empty() && from <= not_serving_.back().second) {
    not_serving_.back().second = std::max(not_serving_.back().second, to);
  } else {
    not_serving_.emplace_back(from, to);
  }
  while (not_serving_.size() > kMaxNotServing || (!not_serving_.empty() && not_serving_.front().second < to - 3600 * 1000)) {
    not_serving_.pop_front();
  }
}

int64_t Coordinator::ServingSilence(const WorkerEntry& w, int64_t now) {
  const int64_t seen = LastSeen(w);
  int64_t silence = now - seen;
  for (const auto& [from, to] : not_serving_) silence -= std::max<int64_t>(0, std::min(to, now) - std::max(from, seen));
  return silence;
}

void Coordinator::WithStateLockForTest(const std::function<void()>& fn) {
  StateLock lock(this);
  fn();
}

Coordinator::~Coordinator() {
  stop_ = true;
  if (ticker_.joinable()) ticker_.join();
}

absl::Status Coordinator::Recover() {
  ASSIGN_OR_RETURN(std::vector<StoredJob> stored, store_->LoadAll());
  const int64_t now = NowMs();
  int recovering = 0;
  for (StoredJob& s : stored) {
    auto e = std::make_unique<JobEntry>();
    e->seq = s.seq;
    e->job = std::move(s.job);
    e->committed_state = e->job.state();
    e->queued_ms = now;
    if ((e->job.state() == v1::SCHEDULED || e->job.state() == v1::RUNNING) && e->job.spec().kind() != v1::STUDY) {
      if (options_.executor == CoordinatorOptions::Executor::kSlurm) {
        // Followed again from Slurm's listing (by id, or by the attempt's name).
        SlurmRun& run = slurm_runs_[e->job.id()];
        run.slurm_id = e->job.executor_job_id();
        run.name_attempt = e->job.attempt();
      } else {
        e->recovering = true;
        ++recovering;
      }
    }
    state_counts_[e->job.state()]++;
    next_seq_ = std::max(next_seq_, s.seq + 1);
    by_seq_[e->seq] = e.get();
    if (!e->job.request_id().empty()) by_request_[RequestKey(e->job.user(), e->job.request_id())] = e.get();
    jobs_[e->job.id()] = std::move(e);
  }
  // Ids continue past every job directory in the store (another database's,
  // standalone runs'): Submit's exclusive mkdir then rarely has to skip.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(options_.store / "jobs", ec)) {
    const std::string name = entry.path().filename().string();
    int64_t n = 0;
    if (absl::StartsWith(name, "job-") && absl::SimpleAtoi(name.substr(4), &n) && n < (int64_t{1} << 50)) {
      next_seq_ = std::max(next_seq_, n + 1);
    }
  }
  recovery_deadline_ms_ = now + 2 * absl::ToInt64Milliseconds(options_.lease);
  RecoverStudies();
  if (!stored.empty()) {
    RETINA_LOG(Info) << "recovered " << stored.size() << " jobs from " << options_.database.string() << "; "
                     << recovering << " placed before the restart wait up to "
                     << absl::FormatDuration(2 * options_.lease) << " for their workers";
  }
  UpdateGauges();
  return absl::OkStatus();
}

int64_t Coordinator::LastSeen(const WorkerEntry& w) {
  absl::MutexLock lease(&lease_mu_);
  auto it = lease_seen_ms_.find(w.info.id());
  return it == lease_seen_ms_.end() ? w.last_seen_ms : std::max(w.last_seen_ms, it->second);
}

absl::StatusOr<Coordinator::JobEntry*> Coordinator::Find(const std::string& id) {
  auto it = jobs_.find(id);
  if (id.size() > limits::kIdChars) {
    return absl::InvalidArgumentError(absl::StrCat("id: ", id.size(), " characters; job ids have at most ", limits::kIdChars));
  }
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("id: no job '", limits::Echo(id), "'"));
  return it->second.get();
}

absl::Status Coordinator::Commit(JobEntry* e, v1::Job next, v1::JobEvent::Type type) {
  const absl::Status s = store_->Update(next);
  NoteCommit(s);
  if (!s.ok()) return s;  // memory keeps the committed record
  retry_.erase(e);
  e->job = std::move(next);
  if (e->committed_state != e->job.state()) {
    state_counts_[e->committed_state]--;
    state_counts_[e->job.state()]++;
    e->committed_state = e->job.state();
  }
  UpdateGauges();
  Publish(e, type, "");
  NoteStudyChild(e);
  return absl::OkStatus();
}

void Coordinator::NoteCommit(const absl::Status& s) {
  if (s.ok()) {
    if (!db_ok_) {
      db_ok_ = true;
      RETINA_LOG(Info) << options_.database.string() << ": commits again; serving";
      if (health_) health_(true);
    }
    return;
  }
  if (metrics_) metrics_->CommitFailed();
  if (db_ok_) {
    db_ok_ = false;
    RETINA_LOG(Error) << "cannot commit to the job database: " << s
                      << "; health is NOT_SERVING until a commit succeeds (nothing uncommitted is shown)";
    if (health_) health_(false);
  }
}

void Coordinator::SetHealthListener(std::function<void(bool)> listener) {
  StateLock lock(this);
  health_ = std::move(listener);
  health_(db_ok_);
}

void Coordinator::Publish(JobEntry* e, v1::JobEvent::Type type, const std::string& event_json) {
  auto [begin, end] = watchers_by_job_.equal_range(e->job.id());
  if (begin == end) return;
  auto event = std::make_shared<v1::JobEvent>();
  event->set_type(type);
  *event->mutable_job() = e->job;
  event->set_event_json(event_json);
  const bool last = type == v1::JobEvent::STATE && IsTerminal(e->job.state());
  for (auto it = begin; it != end;) {
    auto w = watchers_.find(it->second);
    if (w != watchers_.end()) w->second.sink(event, last);
    if (last) {
      if (w != watchers_.end()) watchers_.erase(w);
      it = watchers_by_job_.erase(it);
    } else {
      ++it;
    }
  }
}

void Coordinator::UpdateGauges() {
  if (metrics_ == nullptr) return;
  std::map<std::string, int> counts;
  for (int s = v1::QUEUED; s <= v1::CANCELLED; ++s) counts[JobStateName(static_cast<v1::JobState>(s))] = state_counts_[s];
  metrics_->SetJobCounts(counts);
  int ready = 0, lost = 0, free = 0, used = 0;
  for (const auto& [id, w] : workers_) {
    if (w.info.state() == v1::WorkerInfo::READY) {
      ++ready;
      used += static_cast<int>(w.used.size());
      free += static_cast<int>(w.slot_ids.size() - w.used.size());
    } else {
      ++lost;
    }
  }
  metrics_->SetWorkers(ready, lost);
  metrics_->SetSlots(free, used);
}

int Coordinator::TotalSlots(v1::SlotType type) const {
  int total = 0;
  for (const auto& [id, w] : workers_) {
    if (w.info.state() == v1::WorkerInfo::READY && NormalType(w.info.slot_type()) == NormalType(type)) {
      total += static_cast<int>(w.slot_ids.size());
    }
  }
  return total;
}

absl::StatusOr<v1::Job> Coordinator::Submit(const v1::SubmitJobRequest& request, const std::string& user) {
  if (request.request_id().size() > limits::kRequestIdChars) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: at most ", limits::kRequestIdChars, " characters"));
  }
  for (size_t i = 0; i < request.request_id().size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request.request_id()[i]);
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request_id: printable ASCII without spaces (byte 0x%02x at position %d)", c, static_cast<int>(i)));
    }
  }
  if (absl::StartsWithIgnoreCase(request.request_id(), "study:")) {
    return absl::InvalidArgumentError("request_id: ids starting with 'study:' are the coordinator's (a study's children)");
  }
  // Request ids are per user: a retry finds only its own user's job.
  const std::string request_key = RequestKey(user, request.request_id());
  {
    StateLock lock(this);
    if (!request.request_id().empty()) {
      auto it = by_request_.find(request_key);
      if (it != by_request_.end()) return it->second->job;  // an idempotent retry
    }
  }
  v1::JobSpec spec = request.spec();
  RETURN_IF_ERROR(ValidateJobSpec(&spec, options_.store, options_.allowed_roots, options_.output_roots));
  if (spec.kind() == v1::STUDY) {  // every child is checked before the study is accepted
    RETURN_IF_ERROR(PinStudyInits(&spec, options_.store));
    RETURN_IF_ERROR(StudyChildSpecs(spec, "study", options_.store, options_.allowed_roots, options_.output_roots).status());
  }
  // How many jobs this adds to the user's queue (a study's children:
  // datasets x inits x seeds), parsed before the state lock is taken.
  int adding = 1;
  if (spec.kind() == v1::STUDY) {
    absl::StatusOr<JobConfig> c = ParseJobConfig(spec.config_yaml(), "spec.config_yaml");
    if (c.ok()) {
      const StudyConfig& st = c->study;
      adding = static_cast<int>(std::max<size_t>(1, st.datasets.size()) * st.inits.size() *
                                (st.seeds.empty() ? st.seed_count : st.seeds.size()));
    }
  }

  StateLock lock(this);
  if (!request.request_id().empty()) {  // checked again: a concurrent retry may have won
    auto it = by_request_.find(request_key);
    if (it != by_request_.end()) return it->second->job;
  }
  const int needed = spec.world_size() * spec.slots_per_rank();
  const int total = TotalSlots(spec.slot_type());
  if (seen_workers_ && needed > total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.world_size: ", spec.world_size(), " ranks x ", spec.slots_per_rank(), " slots need ", needed, " ",
        NormalType(spec.slot_type()) == v1::SLOT_GPU ? "GPU" : "CPU", " slots; the ready workers have ", total));
  }
  RETURN_IF_ERROR(CheckUserLimits(spec, user, adding));
  ASSIGN_OR_RETURN(JobEntry * raw, InsertJob(std::move(spec), user, request.request_id()));
  if (raw->job.spec().kind() == v1::STUDY) StartStudy(raw);
  Schedule(NowMs());
  return raw->job;
}

absl::Status Coordinator::CheckUserLimits(const v1::JobSpec& spec, const std::string& user, int adding) {
  const int slots = spec.world_size() * spec.slots_per_rank();
  if (options_.max_running_slots_per_user > 0 && slots > options_.max_running_slots_per_user) {
    return absl::InvalidArgumentError(absl::StrCat("spec.world_size: ", spec.world_size(), " ranks x ",
                                                   spec.slots_per_rank(), " slots can never run: a user may hold ",
                                                   options_.max_running_slots_per_user, " slots at once"));
  }
  if (options_.max_queued_jobs_per_user <= 0) return absl::OkStatus();
  int queued = 0;
  for (const auto& [id, e] : jobs_) queued += e->job.state() == v1::QUEUED && e->job.user() == user;
  if (queued + adding > options_.max_queued_jobs_per_user) {
    return absl::ResourceExhaustedError(absl::StrCat("user ", user, " has ", queued, " queued job(s); ",
                                                     adding > 1 ? absl::StrCat(adding, " more") : "one more",
                                                     " would pass the limit of ", options_.max_queued_jobs_per_user,
                                                     " (wait for some to start, or cancel some)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Coordinator::JobEntry*> Coordinator::InsertJob(v1::JobSpec spec, const std::string& user,
                                                             const std::string& request_id) {
  auto e = std::make_unique<JobEntry>();
  e->queued_ms = NowMs();
  v1::Job& job = e->job;
  // The id must be new to the store too: its directory is reserved with an
  // exclusive mkdir; ids whose directory exists (another database's jobs,
  // standalone runs) are skipped.
  const StoreLayout layout(options_.store);
  job.set_uid(NewRandomId());
  for (int tries = 0;; ++tries) {
    char id[32];
    std::snprintf(id, sizeof id, "job-%06lld", static_cast<long long>(next_seq_));
    absl::Status reserved = ReserveJobDir(layout, id, job.uid());
    if (reserved.ok()) {
      job.set_id(id);
      break;
    }
    if (!absl::IsAlreadyExists(reserved) || tries == 1000) {
      return absl::UnavailableError(absl::StrCat("store: cannot create the job directory: ", reserved.message()));
    }
    ++next_seq_;
  }
  e->seq = next_seq_;
  // A study is never placed: it runs from submission, through its children.
  const v1::JobState initial = spec.kind() == v1::STUDY ? v1::RUNNING : v1::QUEUED;
  if (initial == v1::RUNNING) job.set_start_unix_ms(e->queued_ms);
  *job.mutable_spec() = std::move(spec);
  job.set_state(initial);
  job.set_user(user);
  job.set_create_unix_ms(e->queued_ms);
  job.set_request_id(request_id);
  if (absl::Status s = store_->Insert({e->seq, job}); !s.ok()) {
    ReleaseJobDir(layout, job.id(), job.uid());
    NoteCommit(s);
    return s;
  }
  NoteCommit(absl::OkStatus());
  ++next_seq_;
  e->committed_state = initial;
  state_counts_[initial]++;
  if (metrics_) metrics_->JobSubmitted();
  JobEntry* raw = e.get();
  by_seq_[e->seq] = raw;
  if (!job.request_id().empty()) by_request_[RequestKey(job.user(), job.request_id())] = raw;
  jobs_[job.id()] = std::move(e);
  UpdateGauges();
  return raw;
}


absl::StatusOr<v1::Job> Coordinator::Get(const std::string& id) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, Find(id));
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
  for (auto it = std::make_reverse_iterator(by_seq_.lower_bound(before)); it != by_seq_.rend(); ++it) {
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
  ASSIGN_OR_RETURN(JobEntry * e, Find(id));
  RETURN_IF_ERROR(CancelEntry(e));
  return e->job;
}

absl::Status Coordinator::CancelEntry(JobEntry* e) {
  const std::string& id = e->job.id();
  v1::Job& job = e->job;
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("id: job ", id, " is already ", JobStateName(job.state()), "; only active jobs can be cancelled"));
  }
  if (job.cancel_requested()) return absl::OkStatus();
  v1::Job next = job;
  next.set_cancel_requested(true);
  if (job.state() == v1::QUEUED) {
    next.set_state(v1::CANCELLED);
    next.set_end_unix_ms(NowMs());
    next.set_message("cancelled while queued");
    RETURN_IF_ERROR(Commit(e, std::move(next)));
    if (metrics_) metrics_->JobFinished("cancelled");
    return absl::OkStatus();
  }
  if (job.spec().kind() == v1::STUDY) {
    next.set_message("cancel requested; cancelling its children");
    RETURN_IF_ERROR(Commit(e, std::move(next)));
    TickStudy(e, NowMs());  // cancels the children; the study ends when they have
    return absl::OkStatus();
  }
  next.set_message("cancel requested; stopping ranks");
  RETURN_IF_ERROR(Commit(e, std::move(next)));
  StopAttempt(e);
  MaybeFinishAttempt(e, NowMs());
  return absl::OkStatus();
}

absl::StatusOr<v1::JobMetrics> Coordinator::Metrics(const std::string& id) {
  {
    StateLock lock(this);
    RETURN_IF_ERROR(Find(id).status());
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

v1::ListWorkersResponse Coordinator::Workers() {
  StateLock lock(this);
  v1::ListWorkersResponse out;
  for (const auto& [id, w] : workers_) {
    v1::WorkerInfo* info = out.add_workers();
    *info = w.info;
    info->set_free_slots(static_cast<int>(w.slot_ids.size() - w.used.size()));
    info->set_last_heartbeat_unix_ms(LastSeen(w));
    for (const auto& [key, slots] : w.tasks) info->add_jobs(key.first);
  }
  return out;
}

absl::StatusOr<int64_t> Coordinator::Watch(const std::string& id, WatchSink sink) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, Find(id));
  auto snapshot = std::make_shared<v1::JobEvent>();
  snapshot->set_type(v1::JobEvent::SNAPSHOT);
  *snapshot->mutable_job() = e->job;
  const bool last = IsTerminal(e->job.state());
  sink(std::move(snapshot), last);
  if (last) return 0;
  const int64_t handle = next_watch_++;
  watchers_[handle] = Watcher{id, std::move(sink)};
  watchers_by_job_.emplace(id, handle);
  return handle;
}

void Coordinator::Unwatch(int64_t handle) {
  StateLock lock(this);
  auto it = watchers_.find(handle);
  if (it == watchers_.end()) return;
  auto [begin, end] = watchers_by_job_.equal_range(it->second.job);
  for (auto j = begin; j != end; ++j) {
    if (j->second == handle) {
      watchers_by_job_.erase(j);
      break;
    }
  }
  watchers_.erase(it);
}

absl::StatusOr<std::pair<std::filesystem::path, bool>> Coordinator::LogFile(const std::string& id, int attempt,
                                                                           int rank) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(JobEntry * e, Find(id));
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

// ---- workers ----

namespace {

// RegisterWorker's request within limits (coordinator/limits.h), naming the field.
absl::Status ValidateRegistration(const v1::RegisterWorkerRequest& r) {
  if (r.worker_id().empty() || r.worker_id().size() > 128) {
    return absl::InvalidArgumentError("worker_id: 1-128 characters");
  }
  if (r.host().empty() || r.host().size() > limits::kHostChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("host: 1-", limits::kHostChars, " characters, the address ranks reach this worker at"));
  }
  if (r.metrics_address().size() > limits::kHostChars || r.version().size() > limits::kVersionChars) {
    return absl::InvalidArgumentError(absl::StrCat("metrics_address/version: at most ", limits::kHostChars, "/",
                                                   limits::kVersionChars, " characters"));
  }
  if (r.labels_size() > limits::kLabels) {
    return absl::InvalidArgumentError(absl::StrCat("labels: at most ", limits::kLabels));
  }
  for (const auto& [key, value] : r.labels()) {
    if (key.empty() || key.size() > limits::kLabelKeyChars || value.size() > limits::kLabelValueChars) {
      return absl::InvalidArgumentError(absl::StrCat("labels: keys 1-", limits::kLabelKeyChars,
                                                     " characters, values at most ", limits::kLabelValueChars));
    }
  }
  if (!v1::SlotType_IsValid(r.slot_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot_type: unknown value ", static_cast<int>(r.slot_type()), " (SLOT_CPU, SLOT_GPU)"));
  }
  if (r.slots() < 1 || r.slots() > limits::kWorkerSlots) {
    return absl::InvalidArgumentError(absl::StrCat("slots: must be 1-", limits::kWorkerSlots));
  }
  if (r.running_size() > r.slots()) return absl::InvalidArgumentError("running: more tasks than slots");
  for (const v1::TaskRef& t : r.running()) RETURN_IF_ERROR(ValidateTaskRef(t, r.slots(), "running"));
  if (r.slot_type() == v1::SLOT_GPU && r.gpu_ids_size() != r.slots()) {
    return absl::InvalidArgumentError("gpu_ids: one per GPU slot");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(const v1::RegisterWorkerRequest& r) {
  RETURN_IF_ERROR(ValidateRegistration(r));
  StateLock lock(this);
  const int64_t now = NowMs();
  auto old = workers_.find(r.worker_id());
  if (old != workers_.end() && old->second.info.state() == v1::WorkerInfo::READY) {
    // A worker restarted: tasks it no longer lists are gone.
    std::set<TaskKey> listed;
    for (const v1::TaskRef& t : r.running()) listed.insert({t.job_id(), t.attempt()});
    for (const auto& [key, slots] : std::map(old->second.tasks)) {
      if (listed.count(key)) continue;
      auto j = jobs_.find(key.first);
      if (j != jobs_.end() && j->second->job.attempt() == key.second) {
        FailPart(j->second.get(), r.worker_id(), absl::StrCat("worker ", r.worker_id(), " restarted"));
        MaybeFinishAttempt(j->second.get(), now);
      }
    }
  }
  WorkerEntry& w = workers_[r.worker_id()];
  w = WorkerEntry{};
  w.info.set_id(r.worker_id());
  w.info.set_host(r.host());
  w.info.set_slot_type(NormalType(r.slot_type()));
  w.info.set_slots(r.slots());
  *w.info.mutable_labels() = r.labels();
  w.info.set_version(r.version());
  w.info.set_state(v1::WorkerInfo::READY);
  w.info.set_metrics_address(r.metrics_address());
  w.last_seen_ms = now;
  {
    absl::MutexLock lease(&lease_mu_);
    lease_seen_ms_[r.worker_id()] = now;
  }
  for (int i = 0; i < r.slots(); ++i) w.slot_ids.push_back(r.slot_type() == v1::SLOT_GPU ? r.gpu_ids(i) : i);
  seen_workers_ = true;

  v1::RegisterWorkerResponse out;
  out.set_heartbeat_ms(absl::ToInt64Milliseconds(options_.heartbeat));
  out.set_lease_ms(absl::ToInt64Milliseconds(options_.lease));
  for (const v1::TaskRef& t : r.running()) {
    const TaskKey key{t.job_id(), t.attempt()};
    std::vector<int> slots(t.slot_ids().begin(), t.slot_ids().end());
    w.tasks[key] = slots;
    w.used.insert(slots.begin(), slots.end());
    auto j = jobs_.find(t.job_id());
    JobEntry* e = j == jobs_.end() ? nullptr : j->second.get();
    const bool active = e && e->job.attempt() == t.attempt() &&
                        (e->job.state() == v1::SCHEDULED || e->job.state() == v1::RUNNING) && !e->attempt_failed &&
                        !e->job.cancel_requested();
    if (active && (e->recovering || e->parts.count(r.worker_id()))) {
      Part& p = e->parts[r.worker_id()];
      p.ranks.assign(t.ranks().begin(), t.ranks().end());
      p.slot_ids = slots;
      p.confirmed = true;
      RETINA_LOG(Info) << "re-attached " << t.job_id() << " attempt " << t.attempt() << " ranks ["
                       << absl::StrJoin(p.ranks, ",") << "] on " << r.worker_id();
    } else {
      w.stopping[key] = t;
      *out.add_stop() = t;
    }
  }
  RETINA_LOG(Info) << "worker " << r.worker_id() << " registered: " << r.slots()
                   << (r.slot_type() == v1::SLOT_GPU ? " GPU" : " CPU") << " slots at " << r.host() << ", "
                   << r.running_size() << " running tasks";
  UpdateGauges();
  // The tick's next pass (within `tick`) places work on it: a storm of
  // registrations (a cluster starting) costs one pass per tick, not one each.
  return out;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& r) {
  if (r.worker_id().size() > limits::kIdChars) return absl::InvalidArgumentError("worker_id: 1-128 characters");
  if (r.running_size() > limits::kWorkerSlots) {
    return absl::InvalidArgumentError(absl::StrCat("running: at most ", limits::kWorkerSlots, " tasks"));
  }
  for (const v1::TaskRef& t : r.running()) RETURN_IF_ERROR(ValidateTaskRef(t, limits::kWorkerSlots, "running"));
  {
    absl::MutexLock lease(&lease_mu_);
    auto seen = lease_seen_ms_.find(r.worker_id());
    if (seen != lease_seen_ms_.end()) seen->second = NowMs();
  }
  v1::HeartbeatResponse out;
  // The rest (confirmations, assignments, stops) needs mu_. When it stays
  // busy past half a heartbeat, answer now with nothing: the lease is renewed
  // above, and assignments and stops ride on every heartbeat until confirmed.
  const absl::Time give_up = absl::Now() + options_.heartbeat / 2;
  while (!mu_.TryLock()) {
    if (absl::Now() >= give_up) {
      if (metrics_) metrics_->HeartbeatDeferred();
      return out;
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  absl::Cleanup unlock = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu_.Unlock(); };
  auto it = workers_.find(r.worker_id());
  if (it == workers_.end() || it->second.info.state() != v1::WorkerInfo::READY) {
    out.set_reregister(true);
    return out;
  }
  WorkerEntry& w = it->second;
  const int64_t now = NowMs();
  w.last_seen_ms = now;
  for (const v1::TaskRef& t : r.running()) {
    const TaskKey key{t.job_id(), t.attempt()};
    if (!w.tasks.count(key)) {  // not ours (any more): stop it
      w.tasks[key] = std::vector<int>(t.slot_ids().begin(), t.slot_ids().end());
      w.used.insert(t.slot_ids().begin(), t.slot_ids().end());
      w.stopping[key] = t;
      continue;
    }
    if (w.pending.erase(key) == 0) continue;
    auto j = jobs_.find(t.job_id());
    if (j == jobs_.end()) continue;
    JobEntry* e = j->second.get();
    auto p = e->parts.find(r.worker_id());
    if (p == e->parts.end() || e->job.attempt() != t.attempt()) continue;
    p->second.confirmed = true;
    MarkRunningIfConfirmed(e, now);
  }
  for (const auto& [key, a] : w.pending) *out.add_assignments() = a;
  for (const auto& [key, t] : w.stopping) *out.add_stop() = t;
  return out;
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
  ASSIGN_OR_RETURN(JobEntry * e, Find(r.job_id()));
  if (e->job.attempt() != r.attempt() || IsTerminal(e->job.state())) return absl::OkStatus();
  v1::Progress* p = e->job.mutable_progress();
  for (size_t i = 0; i < events.size(); ++i) {
    const std::string& line = r.events_json(static_cast<int>(i));
    if (!events[i]) {
      Publish(e, v1::JobEvent::PROGRESS, line);
      continue;
    }
    const Event& ev = *events[i];
    if (const auto* start = std::get_if<StartEvent>(&ev)) {
      p->set_total_steps(start->total_steps);
      p->set_step(start->step);
      Publish(e, v1::JobEvent::PROGRESS, line);
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
      Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (const auto* eval = std::get_if<EvalEvent>(&ev)) {
      p->set_last_iou(eval->iou);
      p->set_has_iou(true);
      if (metrics_) metrics_->EvalIou(e->job.id(), eval->iou_per_class);
      Publish(e, v1::JobEvent::EVAL, line);
    } else if (const auto* predict = std::get_if<PredictEvent>(&ev)) {
      // An infer job's steps are chunk rows (retina watch shows voxels from the line).
      p->set_total_steps(predict->chunks_total);
      p->set_step(predict->chunks_done);
      Publish(e, v1::JobEvent::PROGRESS, line);
    } else if (const auto* checkpoint = std::get_if<CheckpointEvent>(&ev)) {
      p->set_last_checkpoint_step(checkpoint->step);
      p->set_last_checkpoint_unix_ms(NowMs());
      if (metrics_) metrics_->CheckpointWritten(e->job.id(), NowMs() / 1000.0);
      Publish(e, v1::JobEvent::CHECKPOINT, line);
    }
  }
  return absl::OkStatus();
}

absl::Status Coordinator::CompleteTask(const v1::CompleteTaskRequest& r) {
  if (r.worker_id().size() > limits::kIdChars || r.job_id().size() > limits::kIdChars) {
    return absl::InvalidArgumentError("worker_id/job_id: at most 128 characters");
  }
  if (r.exits_size() > limits::kWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat("exits: at most ", limits::kWorldSize));
  }
  StateLock lock(this);
  const int64_t now = NowMs();
  auto w = workers_.find(r.worker_id());
  if (w != workers_.end()) ReleaseTask(&w->second, r.job_id(), r.attempt());
  auto j = jobs_.find(r.job_id());
  if (j == jobs_.end()) return absl::OkStatus();
  JobEntry* e = j->second.get();
  if (e->job.attempt() != r.attempt() || (e->job.state() != v1::SCHEDULED && e->job.state() != v1::RUNNING)) {
    return absl::OkStatus();  // a stale attempt: its slots were released above
  }
  auto pit = e->parts.find(r.worker_id());
  if (pit == e->parts.end()) {
    if (!e->recovering) return absl::OkStatus();
    Part& p = e->parts[r.worker_id()];  // finished while the coordinator was down
    for (const v1::RankExit& x : r.exits()) p.ranks.push_back(x.rank());
    p.confirmed = true;
    pit = e->parts.find(r.worker_id());
  }
  Part& part = pit->second;
  if (part.done) return absl::OkStatus();
  part.done = true;
  const bool stopping = e->job.cancel_requested() || e->attempt_failed;
  // The cause: the first rank that failed saying why (its first error line:
  // the others were usually stopped because of it), else the first failed.
  std::string failure;
  const v1::RankExit* cause = nullptr;
  for (const v1::RankExit& x : r.exits()) {
    if (x.exit_code() != 0 && x.exit_code() != kExitPreempted && !x.first_error().empty()) {
      cause = &x;
      break;
    }
  }
  for (const v1::RankExit& x : r.exits()) {
    if (cause == nullptr && x.exit_code() != 0) cause = &x;
  }
  if (cause != nullptr) {
    const v1::RankExit& x = *cause;
    std::string why = x.first_error().substr(0, 512);  // the worker escaped it; a user sees it as is
    for (char& c : why) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    failure = x.exit_code() == kExitPreempted
                  ? absl::StrCat("rank ", x.rank(), " stopped after a checkpoint (exit 75, preempted) on ", r.worker_id())
                  : absl::StrCat("rank ", x.rank(), " exited with code ", x.exit_code(), " on ", r.worker_id(),
                                 why.empty() ? "" : absl::StrCat(": ", why),
                                 "; see its log: retina logs ", r.job_id(), " --rank ", x.rank());
  }
  if (failure.empty() && (r.stopped() || r.exits_size() < static_cast<int>(part.ranks.size()))) {
    failure = absl::StrCat("ranks on ", r.worker_id(), " were stopped before finishing");
  }
  if (!failure.empty()) {
    part.failed = true;
    if (!stopping) {
      e->attempt_failed = true;
      e->failure = failure;
      e->attempt_reason = "rank_failed";
      StopAttempt(e);
    }
  }
  MaybeFinishAttempt(e, now);
  return absl::OkStatus();
}

void Coordinator::ReleaseTask(WorkerEntry* w, const std::string& job, int attempt) {
  const TaskKey key{job, attempt};
  auto t = w->tasks.find(key);
  if (t != w->tasks.end()) {
    for (int s : t->second) w->used.erase(s);
    w->tasks.erase(t);
  }
  w->pending.erase(key);
  w->stopping.erase(key);
  UpdateGauges();
}

void Coordinator::FailPart(JobEntry* e, const std::string& worker, const std::string& why) {
  auto p = e->parts.find(worker);
  if (p == e->parts.end() || p->second.done) return;
  p->second.done = true;
  p->second.failed = true;
  if (!e->attempt_failed && !e->job.cancel_requested()) {
    e->attempt_failed = true;
    e->failure = why;
    e->attempt_reason = "worker_lost";
  }
  StopAttempt(e);
}

void Coordinator::StopAttempt(JobEntry* e) {
  const TaskKey key{e->job.id(), e->job.attempt()};
  for (auto& [worker, part] : e->parts) {
    if (part.done) continue;
    auto w = workers_.find(worker);
    if (w == workers_.end() || w->second.info.state() != v1::WorkerInfo::READY) {
      part.done = true;
      continue;
    }
    w->second.pending.erase(key);
    v1::TaskRef t;
    t.set_job_id(key.first);
    t.set_attempt(key.second);
    for (int r : part.ranks) t.add_ranks(r);
    for (int s : part.slot_ids) t.add_slot_ids(s);
    w->second.stopping[key] = t;
  }
}

void Coordinator::MarkRunningIfConfirmed(JobEntry* e, int64_t now) {
  if (e->job.state() != v1::SCHEDULED || e->recovering || e->parts.empty()) return;
  for (const auto& [worker, part] : e->parts) {
    if (!part.confirmed) return;
  }
  v1::Job next = e->job;
  next.set_state(v1::RUNNING);
  next.set_start_unix_ms(now);
  if (absl::Status s = Commit(e, std::move(next)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << e->job.id() << " RUNNING: " << s << " (retried)";
    retry_.insert(e);
  }
}

void Coordinator::MaybeFinishAttempt(JobEntry* e, int64_t now) {
  v1::Job job = e->job;
  if (job.state() != v1::SCHEDULED && job.state() != v1::RUNNING) return;
  if (job.spec().kind() == v1::STUDY) return;  // ends with its children (TickStudy)
  if (slurm_runs_.count(job.id())) return;     // ends when Slurm says so (SlurmTick)
  if (e->recovering) return;
  if (e->parts.empty() && !job.cancel_requested() && !e->attempt_failed) return;
  for (const auto& [worker, part] : e->parts) {
    if (!part.done) return;
  }
  const AttemptEnd end = DecideAttemptEnd(
      job, job.cancel_requested() ? AttemptOutcome::kCancelled
           : e->attempt_failed    ? AttemptOutcome::kFailed
                                  : AttemptOutcome::kSucceeded,
      e->attempt_failed && !job.cancel_requested() ? e->failure : "");
  const std::string& result = end.result;
  job.set_state(end.state);
  job.set_message(end.message);
  if (end.requeued()) e->queued_ms = now;
  if (!result.empty()) job.set_end_unix_ms(now);
  const std::string id = job.id();
  if (absl::Status s = Commit(e, std::move(job)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << id << ": " << s << " (the attempt's end is retried)";
    retry_.insert(e);  // parts and failure kept: the tick retries
    return;
  }
  RETINA_LOG(Info) << id << " attempt " << e->job.attempt() << " -> " << JobStateName(e->job.state())
                   << (e->job.message().empty() ? "" : ": ") << e->job.message();
  e->parts.clear();
  e->attempt_failed = false;
  e->failure.clear();
  if (!result.empty() && metrics_) {
    metrics_->JobFinished(result);
    metrics_->DropJob(id);
  }
}

void Coordinator::LoseWorker(WorkerEntry* w, int64_t now) {
  RETINA_LOG(Warning) << "worker " << w->info.id() << " lost: no heartbeat for "
                      << (now - LastSeen(*w)) / 1000.0 << " s (" << ServingSilence(*w, now) / 1000.0
                      << " s of it while serving); its ranks count as failed";
  w->info.set_state(v1::WorkerInfo::LOST);
  if (metrics_) metrics_->LeaseMissed();
  const auto tasks = w->tasks;
  w->tasks.clear();
  w->used.clear();
  w->pending.clear();
  w->stopping.clear();
  for (const auto& [key, slots] : tasks) {
    auto j = jobs_.find(key.first);
    if (j == jobs_.end() || j->second->job.attempt() != key.second) continue;
    FailPart(j->second.get(), w->info.id(), absl::StrCat("worker ", w->info.id(), " lost"));
    MaybeFinishAttempt(j->second.get(), now);
  }
  UpdateGauges();
}

void Coordinator::Tick() {
  StateLock lock(this);
  const int64_t now = NowMs();
  const int64_t lease = absl::ToInt64Milliseconds(options_.lease);
  for (auto& [id, w] : workers_) {
    if (w.info.state() == v1::WorkerInfo::READY && ServingSilence(w, now) > lease) LoseWorker(&w, now);
  }
  if (recovery_deadline_ms_ != 0 && now >= recovery_deadline_ms_) {
    recovery_deadline_ms_ = 0;
    for (auto& [id, e] : jobs_) {
      if (!e->recovering) continue;
      e->recovering = false;
      std::set<int> ranks;
      for (const auto& [worker, part] : e->parts) ranks.insert(part.ranks.begin(), part.ranks.end());
      const bool whole = static_cast<int>(ranks.size()) == e->job.spec().world_size();
      if (!whole && !e->attempt_failed) {
        e->attempt_failed = true;
        e->failure = absl::StrCat("only ", ranks.size(), " of ", e->job.spec().world_size(),
                                  " ranks re-attached after a coordinator restart");
        e->attempt_reason = "coordinator_restart";
        StopAttempt(e.get());
      } else if (whole) {
        for (auto& [worker, part] : e->parts) part.confirmed = true;
        MarkRunningIfConfirmed(e.get(), now);
      }
      MaybeFinishAttempt(e.get(), now);
    }
  }
  // Transitions whose commit failed, again; a probe write while nothing else
  // commits, so health returns once the database does.
  if (!db_ok_ && now - last_probe_ms_ >= 1000) {
    last_probe_ms_ = now;
    NoteCommit(store_->Probe());
  }
  if (!db_ok_) return;
  for (JobEntry* e : std::set<JobEntry*>(retry_)) {
    if (e->job.state() != v1::SCHEDULED && e->job.state() != v1::RUNNING) {
      retry_.erase(e);
      continue;
    }
    MarkRunningIfConfirmed(e, now);
    MaybeFinishAttempt(e, now);
  }
  TickStudies(now);
  Schedule(now);
}

void Coordinator::Schedule(int64_t now) {
  if (options_.executor == CoordinatorOptions::Executor::kSlurm) return;  // sbatch: SlurmTick
  std::vector<QueuedJob> queue;
  FairShare share;
  share.max_running_slots_per_user = options_.max_running_slots_per_user;
  for (auto& [seq, e] : by_seq_) {
    const v1::JobSpec& spec = e->job.spec();
    if ((e->job.state() == v1::SCHEDULED || e->job.state() == v1::RUNNING) && spec.kind() != v1::STUDY) {
      share.running_slots[e->job.user()] += spec.world_size() * spec.slots_per_rank();
    }
    if (e->job.state() != v1::QUEUED) continue;
    queue.push_back({e->job.id(), spec.priority(), seq,
                     NormalType(spec.slot_type()) == v1::SLOT_GPU ? SlotKind::kGpu : SlotKind::kCpu, spec.world_size(),
                     spec.slots_per_rank(), e->job.user()});
  }
  if (queue.empty()) return;
  std::vector<FreeWorker> free;
  for (auto& [id, w] : workers_) {
    if (w.info.state() != v1::WorkerInfo::READY) continue;
    free.push_back({id, NormalType(w.info.slot_type()) == v1::SLOT_GPU ? SlotKind::kGpu : SlotKind::kCpu,
                    static_cast<int>(w.slot_ids.size() - w.used.size())});
  }
  const std::vector<GangPlan> plans = PlanPass(std::move(queue), std::move(free), share);
  if (plans.empty()) return;
  // One transaction for the whole pass: one fsync instead of one per
  // placement, so a burst of placements holds mu_ (and heartbeats) for one
  // commit. Until it commits nothing of the pass reaches a worker (assignments
  // ride on heartbeats, which wait for mu_); if it fails, the pass is undone.
  const bool batch = plans.size() > 1 && store_->BeginBatch().ok();
  std::vector<std::pair<JobEntry*, v1::Job>> undo;  // the records before the pass
  for (const GangPlan& plan : plans) {
    JobEntry* e = jobs_.at(plan.job_id).get();
    v1::Job before = e->job;
    if (!Place(e, plan, now)) break;  // a later pass places it
    if (batch) undo.emplace_back(e, std::move(before));
  }
  if (!batch) return;
  const absl::Status committed = store_->CommitBatch();
  NoteCommit(committed);
  if (committed.ok()) return;
  RETINA_LOG(Error) << "cannot commit a scheduling pass of " << undo.size() << " placement(s): " << committed
                    << "; undone (a later pass places them)";
  for (auto& [e, before] : undo) {
    for (const auto& [worker, part] : e->parts) ReleaseTask(&workers_.at(worker), e->job.id(), e->job.attempt());
    e->parts.clear();
    state_counts_[e->committed_state]--;
    state_counts_[before.state()]++;
    e->committed_state = before.state();
    e->job = std::move(before);
    Publish(e, v1::JobEvent::STATE, "");
  }
  UpdateGauges();
}

int Coordinator::PickPort(const std::string& host) {
  std::set<int> busy;
  for (const auto& [id, e] : jobs_) {
    if ((e->job.state() == v1::SCHEDULED || e->job.state() == v1::RUNNING) && e->job.master_addr() == host) {
      busy.insert(e->job.master_port());
    }
  }
  const int n = options_.port_max - options_.port_min + 1;
  for (int i = 0; i < n; ++i) {
    const int port = options_.port_min + (next_port_++ % n);
    if (!busy.count(port)) return port;
  }
  return 0;
}

bool Coordinator::Place(JobEntry* e, const GangPlan& plan, int64_t now) {
  const v1::JobSpec& spec = e->job.spec();
  const int per_rank = std::max(1, spec.slots_per_rank());
  std::vector<std::pair<WorkerEntry*, int>> chosen;
  for (const auto& [id, n] : plan.ranks_per_worker) chosen.emplace_back(&workers_.at(id), n);
  v1::Job job = e->job;  // committed below, then applied
  const int attempt = job.attempt() + 1;
  job.set_attempt(attempt);
  job.set_state(v1::SCHEDULED);
  job.set_message("");
  job.set_start_unix_ms(0);
  job.clear_placement();
  job.set_master_addr(chosen.front().first->info.host());
  job.set_master_port(PickPort(job.master_addr()));
  e->parts.clear();
  e->attempt_failed = false;
  int rank = 0;
  for (auto& [w, n] : chosen) {
    Part part;
    v1::Assignment a;
    a.set_job_id(job.id());
    a.set_attempt(attempt);
    a.set_kind(spec.kind());
    a.set_config_yaml(spec.config_yaml());
    a.set_world_size(spec.world_size());
    a.set_local_world_size(n);
    a.set_master_addr(job.master_addr());
    a.set_master_port(job.master_port());
    a.set_job_uid(job.uid());
    for (const auto& root : options_.allowed_roots) a.add_allowed_roots(root.string());
    for (const auto& root : options_.output_roots) a.add_output_roots(root.string());
    for (int r = 0; r < n; ++r, ++rank) {
      part.ranks.push_back(rank);
      a.add_ranks(rank);
      v1::RankPlacement* pl = job.add_placement();
      pl->set_rank(rank);
      pl->set_worker_id(w->info.id());
      pl->set_host(w->info.host());
      int taken = 0;
      for (int s : w->slot_ids) {
        if (taken == per_rank) break;
        if (w->used.count(s)) continue;
        w->used.insert(s);
        part.slot_ids.push_back(s);
        a.add_slot_ids(s);
        ++taken;
      }
    }
    const TaskKey key{job.id(), attempt};
    w->tasks[key] = part.slot_ids;
    w->pending[key] = std::move(a);
    e->parts[w->info.id()] = std::move(part);
  }
  const std::string id = job.id(), rendezvous = absl::StrCat(job.master_addr(), ":", job.master_port());
  if (absl::Status s = Commit(e, std::move(job)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << id << " attempt " << attempt << ": " << s << "; not placed";
    for (auto& [w, n] : chosen) ReleaseTask(w, id, attempt);
    e->parts.clear();  // still QUEUED: a later pass places it
    return false;
  }
  if (metrics_) {
    metrics_->QueueWait((now - e->queued_ms) / 1000.0);
    metrics_->AttemptStarted(e->attempt_reason);
  }
  RETINA_LOG(Info) << id << " attempt " << attempt << " scheduled: " << e->job.spec().world_size() << " ranks on "
                   << chosen.size() << " worker(s), rendezvous " << rendezvous;
  return true;
}

}  // namespace retina::coordinator
