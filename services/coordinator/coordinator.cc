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
#include "services/coordinator/model_registry.h"
#include "common/model_ref.h"
#include "common/path_policy.h"
#include "services/coordinator/slurm_executor.h"
#include "services/coordinator/worker_registry.h"

namespace retina::coordinator {
namespace fs = std::filesystem;
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
  ASSIGN_OR_RETURN(c->models_, ModelRegistry::Open(c->table_->db(), o.store, metrics));
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
  AutoRegister();
}

void Coordinator::SetHealthListener(std::function<void(bool)> listener) {
  StateLock lock(this);
  table_->SetHealthListener(std::move(listener));
}

// ---- ModelService ----

namespace {

absl::Status CheckModelRequestText(const std::string& description, const google::protobuf::RepeatedPtrField<std::string>& tags) {
  if (description.size() > 4096) return absl::InvalidArgumentError("description: longer than 4096 bytes");
  if (tags.size() > 16) return absl::InvalidArgumentError("tags: more than 16");
  for (const std::string& t : tags) RETURN_IF_ERROR(ValidateModelName(t, "tags"));
  return absl::OkStatus();
}

// What a caller who is neither the model's owner nor an admin sees: the
// metadata and scores, not the job files of its lineage (as GetJob hides a
// job's spec).
v1::ModelVersion Shown(const v1::ModelVersion& m, const std::string& user, bool admin) {
  v1::ModelVersion out = m;
  if (admin || m.user() == user) return out;
  for (v1::LineageStep& st : *out.mutable_lineage()) st.clear_config_yaml();
  return out;
}

absl::Status MayChange(const v1::ModelVersion& m, const std::string& user, bool admin, const char* action) {
  if (admin || m.user() == user) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("model ", m.id(), " belongs to user '", m.user(), "': only its owner or an admin may ", action, " it"));
}

}  // namespace

absl::StatusOr<v1::ModelVersion> Coordinator::RegisterModel(const v1::RegisterModelRequest& request,
                                                            const std::string& user, bool admin) {
  return Register(request, user, admin, "client");
}

absl::StatusOr<v1::ModelVersion> Coordinator::Register(const v1::RegisterModelRequest& r, const std::string& user,
                                                       bool admin, const std::string& origin) {
  RETURN_IF_ERROR(ValidateModelName(r.name(), "name"));
  RETURN_IF_ERROR(CheckModelRequestText(r.description(), r.tags()));
  if (r.step() < 0) return absl::InvalidArgumentError("step: must be >= 0 (0: the job's final checkpoint)");
  if (r.job_id().empty() == r.package().empty()) {
    return absl::InvalidArgumentError("job_id: give a job (its checkpoint) or a package, one of them");
  }
  auto name_taken = [&]() -> absl::Status {
    if (const std::string owner = models_->Owner(r.name()); !owner.empty() && owner != user && !admin) {
      return absl::PermissionDeniedError(absl::StrCat("name: the model name '", r.name(), "' belongs to user '", owner,
                                                      "'; choose another name"));
    }
    return absl::OkStatus();
  };
  fs::path package;
  if (!r.package().empty()) {  // under the store or an allowed root, like any weights a job names
    if (r.package().size() > 4096) return absl::InvalidArgumentError("package: too long");
    const PathPolicy policy(options_.store, options_.allowed_roots);
    package = policy.WeightsPath(r.package());
    RETURN_IF_ERROR(policy.Check("package", package));
  }
  {
    StateLock lock(this);
    if (package.empty()) {
      ASSIGN_OR_RETURN(JobEntry * e, table_->Find(r.job_id()));
      if (!admin && e->job.user() != user) {
        return absl::PermissionDeniedError(absl::StrCat("job ", r.job_id(), " belongs to another user: only its owner or an admin registers its checkpoints"));
      }
      const v1::JobKind kind = e->job.spec().kind();
      if (kind != v1::FINETUNE && kind != v1::PRETRAIN) {
        return absl::FailedPreconditionError(absl::StrCat("job ", r.job_id(), " is not a pretrain or finetune job: it has no model checkpoints"));
      }
    }
    RETURN_IF_ERROR(name_taken());
  }
  // The files, without the lock: verify, read the lineage, link.
  absl::StatusOr<RegistrationFiles> files = package.empty() ? StageRegistration(options_.store, r.job_id(), r.step())
                                                            : StageImport(options_.store, package);
  if (!files.ok()) {
    if (metrics_) metrics_->ModelChange("register", "error");
    return files.status();
  }
  std::error_code ec;
  StateLock lock(this);
  absl::Status ok = name_taken();
  v1::ModelVersion m;
  fs::path dst;
  if (ok.ok()) {
    m.set_name(r.name());
    m.set_version(models_->NextVersion(r.name()));
    m.set_id(ModelId(m.name(), m.version()));
    m.set_user(user);
    m.set_create_unix_ms(NowMs());
    m.set_description(r.description());
    m.set_origin(origin);
    dst = ModelVersionDir(options_.store, m.name(), m.version());
    m.set_path(StoreRelative(dst, options_.store));
    for (const std::string& t : r.tags()) {
      if (std::find(m.tags().begin(), m.tags().end(), t) == m.tags().end()) m.add_tags(t);
    }
    // The chain: users from the job table; a registered model's own chain appended.
    for (v1::LineageStep& st : files->lineage) {
      if (!st.job_id().empty()) {
        if (JobEntry* j = table_->Get(st.job_id())) st.set_user(j->job.user());
      }
      *m.add_lineage() = st;
    }
    if (m.lineage_size() > 0 && !m.lineage(m.lineage_size() - 1).model_id().empty()) {
      if (absl::StatusOr<const v1::ModelVersion*> parent = models_->Resolve(m.lineage(m.lineage_size() - 1).model_id());
          parent.ok()) {
        m.mutable_lineage()->RemoveLast();
        const int first = m.lineage_size();
        for (const v1::LineageStep& st : (*parent)->lineage()) *m.add_lineage() = st;
        if (m.lineage_size() > first) m.mutable_lineage(first)->set_model_id((*parent)->id());
      } else {
        m.mutable_lineage(m.lineage_size() - 1)->set_note("a registered model no longer in the registry");
      }
    }
    fs::remove_all(dst, ec);  // a crash's leftover: never committed (not in the database)
    fs::create_directories(dst.parent_path(), ec);
    fs::rename(files->staged, dst, ec);
    if (ec) ok = ErrnoStatus(ec.value(), "rename", dst);
  }
  std::vector<v1::ModelVersion> changes;
  if (ok.ok()) {
    // A tag names one version of a name: moved here from another.
    for (const v1::ModelVersion* other : models_->List(m.name())) {
      v1::ModelVersion o = *other;
      auto* tags = o.mutable_tags();
      const int before = tags->size();
      tags->erase(std::remove_if(tags->begin(), tags->end(),
                                 [&](const std::string& t) { return std::find(m.tags().begin(), m.tags().end(), t) != m.tags().end(); }),
                  tags->end());
      if (tags->size() != before) changes.push_back(std::move(o));
    }
    changes.push_back(m);
    ok = models_->Put(changes);
  }
  if (!ok.ok()) {
    fs::remove_all(files->staged, ec);
    if (!dst.empty() && !models_->Resolve(m.id()).ok()) fs::remove_all(dst, ec);
    if (metrics_) metrics_->ModelChange("register", "error");
    return ok;
  }
  if (metrics_) metrics_->ModelChange("register", "ok");
  RETINA_LOG(Info) << "registered " << m.id() << " from " << (package.empty() ? "job " + r.job_id() : package.string()) << " (" << files->checkpoint.filename().string()
                   << ") for " << user << " (" << origin << ")";
  return m;
}

v1::ListModelVersionsResponse Coordinator::ListModels(const v1::ListModelVersionsRequest& request) {
  StateLock lock(this);
  v1::ListModelVersionsResponse out;
  for (const v1::ModelVersion* m : models_->List(request.name())) {
    v1::ModelVersion* o = out.add_models();
    *o = *m;
    o->clear_lineage();
    if (m->lineage_size() > 0) *o->add_lineage() = m->lineage(0);  // the source and its scores
    if (o->lineage_size() > 0) o->mutable_lineage(0)->clear_config_yaml();
  }
  return out;
}

absl::StatusOr<v1::ModelVersion> Coordinator::GetModel(const std::string& ref, const std::string& user, bool admin) {
  StateLock lock(this);
  ASSIGN_OR_RETURN(const v1::ModelVersion* m, models_->Resolve(ref));
  return Shown(*m, user, admin);
}

absl::StatusOr<v1::ModelVersion> Coordinator::TagModel(const v1::TagModelRequest& r, const std::string& user,
                                                       bool admin) {
  RETURN_IF_ERROR(ValidateModelName(r.tag(), "tag"));
  StateLock lock(this);
  ASSIGN_OR_RETURN(const v1::ModelVersion* found, models_->Resolve(r.ref()));
  RETURN_IF_ERROR(MayChange(*found, user, admin, "tag"));
  v1::ModelVersion m = *found;
  std::vector<v1::ModelVersion> changes;
  auto* tags = m.mutable_tags();
  if (r.remove()) {
    auto it = std::find(tags->begin(), tags->end(), r.tag());
    if (it == tags->end()) return absl::NotFoundError(absl::StrCat("tag: ", m.id(), " has no tag '", r.tag(), "'"));
    tags->erase(it);
  } else {
    if (std::find(tags->begin(), tags->end(), r.tag()) != tags->end()) return m;
    if (tags->size() >= 16) return absl::InvalidArgumentError(absl::StrCat("tag: ", m.id(), " has 16 tags already"));
    for (const v1::ModelVersion* other : models_->List(m.name())) {  // moved from the version that had it
      auto it = std::find(other->tags().begin(), other->tags().end(), r.tag());
      if (it == other->tags().end()) continue;
      v1::ModelVersion o = *other;
      o.mutable_tags()->erase(o.mutable_tags()->begin() + (it - other->tags().begin()));
      changes.push_back(std::move(o));
    }
    m.add_tags(r.tag());
  }
  changes.push_back(m);
  const absl::Status s = models_->Put(changes);
  if (metrics_) metrics_->ModelChange("tag", s.ok() ? "ok" : "error");
  RETURN_IF_ERROR(s);
  return Shown(m, user, admin);
}

absl::StatusOr<v1::ModelVersion> Coordinator::DeleteModel(const std::string& ref, const std::string& user, bool admin) {
  v1::ModelVersion m;
  fs::path dir;
  {
    StateLock lock(this);
    ASSIGN_OR_RETURN(const v1::ModelVersion* found, models_->Resolve(ref));
    RETURN_IF_ERROR(MayChange(*found, user, admin, "delete"));
    m = *found;
    if (const v1::ModelVersion* child = models_->UsedBy(m.id())) {
      return absl::FailedPreconditionError(absl::StrCat("ref: ", m.id(), " is in the lineage of ", child->id(),
                                                        ": delete that first"));
    }
    // An unfinished job that names the model (any version or tag: which one
    // it reads is decided when its ranks start) keeps it.
    const std::string by_ref = absl::StrCat(kModelRefPrefix, m.name());
    const std::string by_path = absl::StrCat("models/", m.name(), "/");
    for (const auto& [seq, e] : table_->by_seq()) {
      const v1::JobState st = e->job.state();
      if (st == v1::SUCCEEDED || st == v1::FAILED || st == v1::CANCELLED) continue;
      const std::string& text = e->job.spec().config_yaml();
      if (absl::StrContains(text, by_ref) || absl::StrContains(text, by_path)) {
        return absl::FailedPreconditionError(absl::StrCat("ref: ", m.id(), " is named by job ", e->job.id(), " (",
                                                          JobStateName(st), "): wait for it to end or cancel it"));
      }
    }
    const absl::Status s = models_->Remove(m.id());
    if (metrics_) metrics_->ModelChange("delete", s.ok() ? "ok" : "error");
    RETURN_IF_ERROR(s);
    dir = ModelVersionDir(options_.store, m.name(), m.version());
  }
  // The files, without the lock: renamed aside first, so a half-deleted
  // version never looks whole.
  std::error_code ec;
  const fs::path aside = ModelsDir(options_.store) / ".incoming" / UniqueTempName("deleted-");
  fs::create_directories(aside.parent_path(), ec);
  fs::rename(dir, aside, ec);
  fs::remove_all(ec ? dir : aside, ec);
  RETINA_LOG(Info) << "deleted model " << m.id() << " (" << user << ")";
  return Shown(m, user, admin);
}

void Coordinator::AutoRegister() {
  std::vector<std::pair<v1::RegisterModelRequest, std::string>> todo;  // request, job owner
  {
    StateLock lock(this);
    if (table_->state_changes() == auto_register_seen_changes_) return;
    auto_register_seen_changes_ = table_->state_changes();
    for (const auto& [seq, e] : table_->by_seq()) {
      const v1::Job& job = e->job;
      if (job.state() != v1::SUCCEEDED || job.spec().kind() != v1::FINETUNE) continue;
      if (!auto_register_done_.insert(job.id()).second) continue;
      if (!absl::StrContains(job.spec().config_yaml(), "register") || models_->HasVersionFrom(job.id())) continue;
      absl::StatusOr<JobConfig> c = ParseJobConfig(job.spec().config_yaml(), job.id());
      if (!c.ok() || c->finetune.register_as.empty()) continue;
      v1::RegisterModelRequest r;
      r.set_job_id(job.id());
      r.set_name(c->finetune.register_as);
      r.set_description(absl::StrCat("registered when ", job.id(), " succeeded (finetune.register)"));
      todo.emplace_back(std::move(r), job.user());
    }
  }
  for (const auto& [r, owner] : todo) {
    absl::StatusOr<v1::ModelVersion> m = Register(r, owner, false, "auto");
    if (!m.ok()) {
      RETINA_LOG(Warning) << "job " << r.job_id() << " succeeded but was not registered as '" << r.name()
                          << "': " << m.status();
    }
  }
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
  std::string register_as;  // finetune.register: the name must be new or the submitter's
  if (spec.kind() == v1::FINETUNE && absl::StrContains(spec.config_yaml(), "register")) {
    if (absl::StatusOr<JobConfig> c = ParseJobConfig(spec.config_yaml(), "spec.config_yaml"); c.ok()) {
      register_as = c->finetune.register_as;
    }
  }
  int64_t seq = 0;
  {
    StateLock lock(this);
    if (JobEntry* e = table_->ByRequest(user, request.request_id())) return e->job;
    if (const std::string owner = register_as.empty() ? "" : models_->Owner(register_as);
        !owner.empty() && owner != user) {
      return absl::PermissionDeniedError(absl::StrCat("spec.config_yaml: finetune.register: the model name '",
                                                      register_as, "' belongs to user '", owner,
                                                      "'; choose another name"));
    }
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
