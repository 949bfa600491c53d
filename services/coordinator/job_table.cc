#include "services/coordinator/job_table.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/gang_failure.h"
#include "common/job_identity.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

namespace {

// The database and the store must belong together (common/job_identity.h):
// a new (or emptied) database over a store another database used would hand
// out that database's job ids again.
absl::Status CheckStoreIdentity(const JobTable::Options& o, JobStore* db) {
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

}  // namespace

std::string JobStateName(v1::JobState state) { return v1::JobState_Name(state); }

absl::StatusOr<std::unique_ptr<JobTable>> JobTable::Open(const Options& o, WatchHub* hub, CoordinatorMetrics* metrics,
                                                         int64_t now) {
  ASSIGN_OR_RETURN(std::unique_ptr<JobStore> db, JobStore::Open(o.database, o.synchronous));
  RETINA_LOG(Info) << o.database.string() << ": quick_check passed in " << absl::FormatDuration(db->check_time());
  RETURN_IF_ERROR(CheckStoreIdentity(o, db.get()));
  ASSIGN_OR_RETURN(std::vector<StoredJob> stored, db->LoadAll());
  std::unique_ptr<JobTable> t(new JobTable(std::move(db), o.database.string(), hub, metrics));
  for (StoredJob& s : stored) {
    auto e = std::make_unique<JobEntry>();
    e->seq = s.seq;
    e->job = std::move(s.job);
    e->committed_state = e->job.state();
    e->queued_ms = now;
    t->state_counts_[e->job.state()]++;
    t->next_seq_ = std::max(t->next_seq_, s.seq + 1);
    t->by_seq_[e->seq] = e.get();
    if (!e->job.request_id().empty()) t->by_request_[RequestKey(e->job.user(), e->job.request_id())] = e.get();
    t->jobs_[e->job.id()] = std::move(e);
  }
  // Ids continue past every job directory in the store (another database's,
  // standalone runs'): a submission's exclusive mkdir then rarely has to skip.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(o.store / "jobs", ec)) {
    const std::string name = entry.path().filename().string();
    int64_t n = 0;
    if (absl::StartsWith(name, "job-") && absl::SimpleAtoi(name.substr(4), &n) && n < (int64_t{1} << 50)) {
      t->next_seq_ = std::max(t->next_seq_, n + 1);
    }
  }
  t->UpdateGauges();
  return t;
}

absl::StatusOr<JobEntry*> JobTable::Find(const std::string& id) {
  if (id.size() > limits::kIdChars) {
    return absl::InvalidArgumentError(absl::StrCat("id: ", id.size(), " characters; job ids have at most ", limits::kIdChars));
  }
  JobEntry* e = Get(id);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("id: no job '", limits::Echo(id), "'"));
  return e;
}

JobEntry* JobTable::Get(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

JobEntry* JobTable::ByRequest(const std::string& user, const std::string& request_id) {
  if (request_id.empty()) return nullptr;
  auto it = by_request_.find(RequestKey(user, request_id));
  return it == by_request_.end() ? nullptr : it->second;
}

int JobTable::QueuedOf(const std::string& user) const {
  int queued = 0;
  for (const auto& [id, e] : jobs_) queued += e->job.state() == v1::QUEUED && e->job.user() == user;
  return queued;
}

absl::StatusOr<JobEntry*> JobTable::Insert(int64_t seq, v1::Job job) {
  const absl::Status s = db_->Insert({seq, job});
  NoteCommit(s);
  RETURN_IF_ERROR(s);
  auto e = std::make_unique<JobEntry>();
  e->seq = seq;
  e->queued_ms = job.create_unix_ms();
  e->job = std::move(job);
  e->committed_state = e->job.state();
  state_counts_[e->committed_state]++;
  ++state_changes_;
  if (metrics_) metrics_->JobSubmitted();
  JobEntry* raw = e.get();
  by_seq_[seq] = raw;
  if (!raw->job.request_id().empty()) by_request_[RequestKey(raw->job.user(), raw->job.request_id())] = raw;
  jobs_[raw->job.id()] = std::move(e);
  UpdateGauges();
  return raw;
}

absl::Status JobTable::Commit(JobEntry* e, v1::Job next, v1::JobEvent::Type type) {
  const absl::Status s = db_->Update(next);
  NoteCommit(s);
  if (!s.ok()) {
    retry_.insert(e);
    return s;  // memory keeps the committed record
  }
  retry_.erase(e);
  e->job = std::move(next);
  Count(e);
  Publish(e, type, "");
  return absl::OkStatus();
}

bool JobTable::EndAttempt(JobEntry* e, AttemptOutcome outcome, const std::string& detail, int64_t now) {
  v1::Job job = e->job;
  const AttemptEnd end = DecideAttemptEnd(job, outcome, detail);
  job.set_state(end.state);
  job.set_message(end.message);
  if (end.preempted) job.set_preemptions(job.preemptions() + 1);
  if (end.grow_stop) job.set_grow_stops(job.grow_stops() + 1);
  job.clear_stopping();
  if (!end.requeued()) job.set_end_unix_ms(now);
  const std::string id = job.id();
  if (absl::Status s = Commit(e, std::move(job)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << id << ": " << s << " (the attempt's end is retried)";
    return false;
  }
  if (end.requeued()) e->queued_ms = now;
  if (metrics_ && outcome == AttemptOutcome::kFailed) {
    if (std::optional<GangFailure> cause = FindGangFailure(detail)) metrics_->GangFailed(std::string(GangFailureName(*cause)));
  }
  RETINA_LOG(Info) << id << " attempt " << e->job.attempt() << " -> " << JobStateName(e->job.state())
                   << (e->job.message().empty() ? "" : ": ") << e->job.message();
  if (!end.result.empty() && metrics_) {
    metrics_->JobFinished(end.result);
    metrics_->DropJob(id);
  }
  return true;
}

void JobTable::Publish(JobEntry* e, v1::JobEvent::Type type, const std::string& event_json) {
  hub_->Publish(e->job, type, event_json);
}

bool JobTable::BeginBatch() { return db_->BeginBatch().ok(); }

absl::Status JobTable::CommitBatch() {
  const absl::Status s = db_->CommitBatch();
  NoteCommit(s);
  return s;
}

void JobTable::Restore(JobEntry* e, v1::Job before) {
  e->job = std::move(before);
  Count(e);
  Publish(e, v1::JobEvent::STATE, "");
}

std::set<JobEntry*> JobTable::TakeRetries() { return std::move(retry_); }

void JobTable::Count(JobEntry* e) {
  if (e->committed_state == e->job.state()) return;
  ++state_changes_;
  state_counts_[e->committed_state]--;
  state_counts_[e->job.state()]++;
  e->committed_state = e->job.state();
  UpdateGauges();
}

void JobTable::UpdateGauges() {
  if (metrics_ == nullptr) return;
  std::map<std::string, int> counts;
  for (int s = v1::QUEUED; s <= v1::CANCELLED; ++s) counts[JobStateName(static_cast<v1::JobState>(s))] = state_counts_[s];
  metrics_->SetJobCounts(counts);
}

void JobTable::NoteCommit(const absl::Status& s) {
  if (s.ok()) {
    if (!db_ok_) {
      db_ok_ = true;
      RETINA_LOG(Info) << db_name_ << ": commits again; serving";
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

void JobTable::SetHealthListener(std::function<void(bool)> listener) {
  health_ = std::move(listener);
  health_(db_ok_);
}

void JobTable::ProbeIfDown(int64_t now) {
  if (db_ok_ || now - last_probe_ms_ < 1000) return;
  last_probe_ms_ = now;
  NoteCommit(db_->Probe());
}

}  // namespace retina::coordinator
