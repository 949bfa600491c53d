#include "services/coordinator/coordinator_service.h"

#include <cstdio>
#include <deque>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;
using services::Caller;
using services::Role;

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                       "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

// The access policy (docs/service.md "Permissions"): a job belongs to its
// submitter. Its owner and admins may cancel it, watch it, and read its logs,
// metrics, spec and request id; anyone else sees its metadata only (ListJobs
// and GetJob with the spec's YAML and the request id blanked).
bool MayControl(const Caller& caller, const v1::Job& job) { return caller.admin || caller.user == job.user(); }

v1::Job ForCaller(const Caller& caller, v1::Job job) {
  if (!MayControl(caller, job)) {
    job.mutable_spec()->clear_config_yaml();
    job.clear_request_id();
  }
  return job;
}

// PERMISSION_DENIED unless `caller` may `action` job `id` (NOT_FOUND first).
absl::Status Authorize(Coordinator* core, const Caller& caller, const std::string& id, const char* action) {
  if (caller.admin) return absl::OkStatus();
  ASSIGN_OR_RETURN(v1::Job job, core->Get(id));
  if (MayControl(caller, job)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("id: job ", id, " belongs to ", job.user(), "; only its owner or an admin may ",
                                                  action, " it (you are ", caller.user, ")"));
}

// Authenticates, parses the request, runs `body(caller, request, &response)`,
// serializes the response and finishes the reactor with the status.
template <class Req, class Resp, class Body>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
                                const char* method, Role role, const services::Authenticator* auth,
                                CoordinatorMetrics* metrics, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::Status status;
  absl::StatusOr<Caller> caller = auth->Check(*ctx, role);  // before any parsing: strangers cost nothing
  Req request;
  Resp response;
  if (!caller.ok()) {
    status = caller.status();
  } else if (grpc::ByteBuffer copy(*in); !grpc::SerializationTraits<Req>::Deserialize(&copy, &request).ok()) {
    status = absl::InvalidArgumentError(absl::StrCat("request: ", in->Length(), " bytes that are not a valid ",
                                                     Req::descriptor()->full_name(), " message"));
  } else {
    status = body(*caller, request, &response);
  }
  if (status.ok()) {
    bool own = false;
    if (!grpc::SerializationTraits<Resp>::Serialize(response, out, &own).ok()) {
      status = absl::InternalError(absl::StrCat(method, ": the response could not be serialized"));
    }
  }
  const grpc::Status g = services::ToGrpcStatus(status);
  if (metrics) metrics->GrpcRequest(method, CodeName(g.error_code()));
  reactor->Finish(g);
  return reactor;
}

// Streams a job's events; see Coordinator::Watch for what is sent. Events
// queue here while a write is in flight; progress events beyond kMaxQueued
// are dropped for a slow reader (state changes never are).
class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  explicit WatchReactor(Coordinator* core) : core_(core) {}

  void Start(grpc::CallbackServerContext* ctx, const std::string& id, const services::Authenticator* auth,
             CoordinatorMetrics* metrics) {
    absl::StatusOr<Caller> caller = auth->Check(*ctx, Role::kClient);
    absl::Status status = caller.status();
    if (status.ok()) status = Authorize(core_, *caller, id, "watch");
    if (status.ok()) {
      absl::StatusOr<int64_t> handle =
          core_->Watch(id, [this](std::shared_ptr<const v1::JobEvent> e, bool last) { Push(std::move(e), last); });
      status = handle.status();
      if (handle.ok()) {
        absl::MutexLock lock(&mu_);
        handle_ = *handle;
      }
    }
    if (metrics) metrics->GrpcRequest("WatchJob", CodeName(services::ToGrpcStatus(status).error_code()));
    if (!status.ok()) {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      Finish(services::ToGrpcStatus(status));
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    WriteNextLocked();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  void OnDone() override {
    int64_t handle;
    {
      absl::MutexLock lock(&mu_);
      handle = handle_;
    }
    if (handle != 0) core_->Unwatch(handle);
    delete this;
  }

 private:
  static constexpr size_t kMaxQueued = 4096;

  // Called by the core with its lock held.
  void Push(std::shared_ptr<const v1::JobEvent> e, bool last) {
    absl::MutexLock lock(&mu_);
    if (finished_ || cancelled_) return;
    if (e->type() == v1::JobEvent::PROGRESS && queue_.size() >= kMaxQueued) return;
    queue_.push_back(std::move(e));
    if (last) last_ = true;
    if (!writing_) WriteNextLocked();
  }
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    if (queue_.empty()) {
      if (last_) FinishLocked(grpc::Status::OK);
      return;
    }
    writing_ = true;
    StartWrite(queue_.front().get());
  }
  void FinishLocked(const grpc::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(s);
  }

  Coordinator* core_;
  absl::Mutex mu_;
  std::deque<std::shared_ptr<const v1::JobEvent>> queue_ ABSL_GUARDED_BY(mu_);  // shared with the other watchers
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool last_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t handle_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

// Streams a rank's log file; with `follow`, polls for growth every 200 ms
// (one thread for all following streams) until the attempt has ended and the
// file is drained.
class LogReactor;
class LogFollower {
 public:
  LogFollower() : thread_([this] { Loop(); }) {}
  ~LogFollower() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void Add(LogReactor* r) {
    absl::MutexLock lock(&mu_);
    waiting_.insert(r);
  }
  void Remove(LogReactor* r) {
    absl::MutexLock lock(&mu_);
    waiting_.erase(r);
  }

 private:
  void Loop();
  absl::Mutex mu_;
  std::set<LogReactor*> waiting_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class LogReactor final : public grpc::ServerWriteReactor<v1::LogChunk> {
 public:
  LogReactor(Coordinator* core, LogFollower* follower, const v1::ReadLogsRequest& req)
      : core_(core), follower_(follower), req_(req), offset_(req.offset()) {}

  void Start(grpc::CallbackServerContext* ctx, const services::Authenticator* auth, CoordinatorMetrics* metrics) {
    absl::StatusOr<Caller> caller = auth->Check(*ctx, Role::kClient);
    absl::Status status = caller.status();
    if (status.ok()) status = Authorize(core_, *caller, req_.id(), "read the logs of");
    // Every number bounded before any work (a negative offset once streamed without end).
    if (status.ok() && req_.offset() < 0) status = absl::InvalidArgumentError("offset: must be >= 0");
    if (status.ok() && req_.rank() < 0) status = absl::InvalidArgumentError("rank: must be >= 0");
    if (status.ok() && req_.attempt() < 0) status = absl::InvalidArgumentError("attempt: must be >= 0 (0: the current one)");
    if (status.ok()) status = core_->LogFile(req_.id(), req_.attempt(), req_.rank()).status();
    if (metrics) metrics->GrpcRequest("ReadLogs", CodeName(services::ToGrpcStatus(status).error_code()));
    if (!status.ok()) {
      Finish(services::ToGrpcStatus(status));
      return;
    }
    Next();
  }
  // Writes the next chunk, waits for more (follow), or finishes.
  void Next() {
    absl::StatusOr<std::pair<std::filesystem::path, bool>> file =
        core_->LogFile(req_.id(), req_.attempt(), req_.rank());
    if (!file.ok()) {
      Finish(services::ToGrpcStatus(file.status()));
      return;
    }
    std::string data;
    if (std::FILE* f = std::fopen(file->first.c_str(), "rb")) {
      data.resize(64 << 10);
      // Only what exists past the offset (a log not yet that long reads nothing).
      size_t n = 0;
      bool failed = false;
      if (std::fseek(f, offset_, SEEK_SET) == 0) {
        n = std::fread(data.data(), 1, data.size(), f);
        failed = std::ferror(f) != 0;
      }
      std::fclose(f);
      if (failed) {
        Finish(grpc::Status(grpc::StatusCode::DATA_LOSS, file->first.string() + ": read failed"));
        return;
      }
      data.resize(n);
    }
    if (!data.empty()) {
      offset_ += static_cast<int64_t>(data.size());
      chunk_.set_data(std::move(data));
      StartWrite(&chunk_);
      return;
    }
    if (req_.follow() && !file->second && !cancelled_.load()) {
      follower_->Add(this);
      return;
    }
    Finish(grpc::Status::OK);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Next();
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override {
    follower_->Remove(this);
    delete this;
  }

 private:
  Coordinator* core_;
  LogFollower* follower_;
  v1::ReadLogsRequest req_;
  int64_t offset_;
  v1::LogChunk chunk_;
  std::atomic<bool> cancelled_{false};
};

void LogFollower::Loop() {
  for (;;) {
    std::set<LogReactor*> ready;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(200));
      if (stop_) return;
      ready.swap(waiting_);
    }
    for (LogReactor* r : ready) r->Next();
  }
}

JobServiceImpl::JobServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics)
    : core_(core), auth_(auth), metrics_(metrics), follower_(std::make_unique<LogFollower>()) {}

JobServiceImpl::~JobServiceImpl() = default;

grpc::ServerUnaryReactor* JobServiceImpl::SubmitJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::SubmitJobRequest, v1::Job>(
      ctx, in, out, "SubmitJob", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::SubmitJobRequest& req, v1::Job* resp) -> absl::Status {
    // A job no one may preempt holds its slots against every priority: the admins' to give.
    auto pinned = req.spec().labels().find("preemptible");
    if (pinned != req.spec().labels().end() && pinned->second == "false" && !caller.admin) {
      return absl::PermissionDeniedError(absl::StrCat("spec.labels: preemptible=false (never preempted) is for admins (you are ",
                                                      caller.user, ")"));
    }
    ASSIGN_OR_RETURN(*resp, core_->Submit(req, caller.user));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::GetJobRequest, v1::Job>(
      ctx, in, out, "GetJob", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::GetJobRequest& req, v1::Job* resp) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Job job, core_->Get(req.id()));
    *resp = ForCaller(caller, std::move(job));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::ListJobsRequest, v1::ListJobsResponse>(
      ctx, in, out, "ListJobs", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::ListJobsRequest& req, v1::ListJobsResponse* resp) -> absl::Status {
    ASSIGN_OR_RETURN(*resp, core_->List(req));
    for (v1::Job& job : *resp->mutable_jobs()) job = ForCaller(caller, std::move(job));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::CancelJobRequest, v1::Job>(
      ctx, in, out, "CancelJob", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::CancelJobRequest& req, v1::Job* resp) -> absl::Status {
    RETURN_IF_ERROR(Authorize(core_, caller, req.id(), "cancel"));
    ASSIGN_OR_RETURN(*resp, core_->Cancel(req.id()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJobMetrics(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::GetJobMetricsRequest, v1::JobMetrics>(
      ctx, in, out, "GetJobMetrics", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::GetJobMetricsRequest& req, v1::JobMetrics* resp) -> absl::Status {
    RETURN_IF_ERROR(Authorize(core_, caller, req.id(), "read the metrics of"));
    ASSIGN_OR_RETURN(*resp, core_->Metrics(req.id()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListWorkers(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::ListWorkersRequest, v1::ListWorkersResponse>(
      ctx, in, out, "ListWorkers", Role::kClient, auth_, metrics_,
      [&](const Caller&, const v1::ListWorkersRequest&, v1::ListWorkersResponse* resp) -> absl::Status {
    *resp = core_->Workers();
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::JobEvent>* JobServiceImpl::WatchJob(grpc::CallbackServerContext* ctx,
                                                                 const v1::WatchJobRequest* req) {
  auto* r = new WatchReactor(core_);
  r->Start(ctx, req->id(), auth_, metrics_);
  return r;
}

grpc::ServerWriteReactor<v1::LogChunk>* JobServiceImpl::ReadLogs(grpc::CallbackServerContext* ctx,
                                                                 const v1::ReadLogsRequest* req) {
  auto* r = new LogReactor(core_, follower_.get(), *req);
  r->Start(ctx, auth_, metrics_);
  return r;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::RegisterWorker(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::RegisterWorkerRequest, v1::RegisterWorkerResponse>(
      ctx, in, out, "RegisterWorker", Role::kWorker, auth_, metrics_,
      [&](const Caller&, const v1::RegisterWorkerRequest& req, v1::RegisterWorkerResponse* resp) -> absl::Status {
    ASSIGN_OR_RETURN(*resp, core_->RegisterWorker(req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::HeartbeatRequest, v1::HeartbeatResponse>(
      ctx, in, out, "Heartbeat", Role::kWorker, auth_, metrics_,
      [&](const Caller&, const v1::HeartbeatRequest& req, v1::HeartbeatResponse* resp) -> absl::Status {
    ASSIGN_OR_RETURN(*resp, core_->Heartbeat(req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportEvents(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::ReportEventsRequest, v1::ReportEventsResponse>(
      ctx, in, out, "ReportEvents", Role::kWorker, auth_, metrics_,
      [&](const Caller&, const v1::ReportEventsRequest& req, v1::ReportEventsResponse*) -> absl::Status {
    return core_->ReportEvents(req);
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::CompleteTask(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out) {
  return Unary<v1::CompleteTaskRequest, v1::CompleteTaskResponse>(
      ctx, in, out, "CompleteTask", Role::kWorker, auth_, metrics_,
      [&](const Caller&, const v1::CompleteTaskRequest& req, v1::CompleteTaskResponse*) -> absl::Status {
    return core_->CompleteTask(req);
  });
}


// ---- ModelService ----

namespace {
// Request strings are bounded before the core sees them (limits.h).
absl::Status CheckRef(const std::string& ref, const char* field) {
  if (ref.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required (NAME, NAME:vN or NAME@TAG)"));
  if (ref.size() > limits::kIdChars) return absl::InvalidArgumentError(absl::StrCat(field, ": longer than ", limits::kIdChars, " characters"));
  return absl::OkStatus();
}
}  // namespace

grpc::ServerUnaryReactor* ModelServiceImpl::RegisterModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                                          grpc::ByteBuffer* out) {
  return Unary<v1::RegisterModelRequest, v1::ModelVersion>(
      ctx, in, out, "RegisterModel", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::RegisterModelRequest& req, v1::ModelVersion* resp) -> absl::Status {
    if (req.job_id().size() > limits::kIdChars) return absl::InvalidArgumentError("job_id: too long");
    ASSIGN_OR_RETURN(*resp, core_->RegisterModel(req, caller.user, caller.admin));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ModelServiceImpl::ListModels(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  return Unary<v1::ListModelVersionsRequest, v1::ListModelVersionsResponse>(
      ctx, in, out, "ListModels", Role::kClient, auth_, metrics_,
      [&](const Caller&, const v1::ListModelVersionsRequest& req, v1::ListModelVersionsResponse* resp) -> absl::Status {
    if (req.name().size() > limits::kIdChars) return absl::InvalidArgumentError("name: too long");
    *resp = core_->ListModels(req);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ModelServiceImpl::GetModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return Unary<v1::GetModelRequest, v1::ModelVersion>(
      ctx, in, out, "GetModel", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::GetModelRequest& req, v1::ModelVersion* resp) -> absl::Status {
    RETURN_IF_ERROR(CheckRef(req.ref(), "ref"));
    ASSIGN_OR_RETURN(*resp, core_->GetModel(req.ref(), caller.user, caller.admin));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ModelServiceImpl::TagModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out) {
  return Unary<v1::TagModelRequest, v1::ModelVersion>(
      ctx, in, out, "TagModel", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::TagModelRequest& req, v1::ModelVersion* resp) -> absl::Status {
    RETURN_IF_ERROR(CheckRef(req.ref(), "ref"));
    ASSIGN_OR_RETURN(*resp, core_->TagModel(req, caller.user, caller.admin));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ModelServiceImpl::DeleteModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                                        grpc::ByteBuffer* out) {
  return Unary<v1::DeleteModelRequest, v1::ModelVersion>(
      ctx, in, out, "DeleteModel", Role::kClient, auth_, metrics_,
      [&](const Caller& caller, const v1::DeleteModelRequest& req, v1::ModelVersion* resp) -> absl::Status {
    RETURN_IF_ERROR(CheckRef(req.ref(), "ref"));
    ASSIGN_OR_RETURN(*resp, core_->DeleteModel(req.ref(), caller.user, caller.admin));
    return absl::OkStatus();
  });
}

}  // namespace retina::coordinator
