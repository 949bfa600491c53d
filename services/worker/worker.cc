#include "services/worker/worker.h"

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/job_identity.h"
#include "common/logging.h"
#include "common/rank_launch.h"
#include "common/records.h"
#include "common/store_layout.h"
#include "services/rpc_util.h"

namespace retina::worker {
namespace v1 = retina::v1;
namespace {

constexpr absl::Duration kRpcTimeout = absl::Seconds(3);

}  // namespace

WorkerMetrics::WorkerMetrics(const std::string& version) : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  prometheus::BuildGauge().Name("retina_build_info").Help("Build of the running binary (value 1)").Register(r)
      .Add({{"version", version}, {"component", "worker"}})
      .Set(1);
  auto& slots = prometheus::BuildGauge().Name("retina_worker_slots").Help("This worker's slots by state").Register(r);
  slots_free = &slots.Add({{"state", "free"}});
  slots_used = &slots.Add({{"state", "used"}});
  ranks_running = &prometheus::BuildGauge().Name("retina_worker_ranks").Help("Trainer ranks running on this worker")
                       .Register(r).Add({});
  coordinator_up = &prometheus::BuildGauge().Name("retina_worker_coordinator_up")
                        .Help("1 when the last call to the coordinator succeeded").Register(r).Add({});
  rank_exits = &prometheus::BuildCounter().Name("retina_worker_rank_exits_total")
                    .Help("Rank processes that ended, by result (ok, preempted, failed, killed)").Register(r);
  rpc_failures = &prometheus::BuildCounter().Name("retina_worker_rpc_failures_total")
                      .Help("Calls to the coordinator that failed").Register(r).Add({});
}

Worker::Worker(WorkerOptions options, WorkerMetrics* metrics, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), metrics_(metrics), stub_(v1::WorkerService::NewStub(channel)) {}

Worker::~Worker() = default;

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(WorkerOptions o, WorkerMetrics* metrics) {
  if (o.gpu_ids.empty() && o.cpu_slots < 1) {
    return absl::InvalidArgumentError("--cpu-slots: at least 1 when there are no GPUs");
  }
  if (o.host.empty()) return absl::InvalidArgumentError("--host: the address other ranks reach this node at");
  if (o.worker_id.empty()) o.worker_id = o.host;
  if (!std::filesystem::exists(o.trainer)) {
    return absl::FailedPreconditionError(absl::StrCat("--trainer ", o.trainer.string(), ": no such file (build retina-train)"));
  }
  std::error_code ec;
  std::filesystem::create_directories(o.store / "jobs", ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("--store ", o.store.string(), ": ", ec.message()));
  auto channel = services::MakeChannel(o.coordinator, o.ca);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<Worker>(new Worker(std::move(o), metrics, *channel));
}

std::vector<v1::TaskRef> Worker::RunningRefs() const {
  std::vector<v1::TaskRef> out;
  for (const auto& [key, t] : tasks_) {
    v1::TaskRef ref;
    ref.set_job_id(key.first);
    ref.set_attempt(key.second);
    for (const Rank& r : t.ranks) {
      ref.add_ranks(r.rank);
      for (int s : r.slots) ref.add_slot_ids(s);
    }
    out.push_back(std::move(ref));
  }
  return out;
}

void Worker::UpdateGauges() {
  if (!metrics_) return;
  int used = 0, running = 0;
  for (const auto& [key, t] : tasks_) {
    for (const Rank& r : t.ranks) {
      used += static_cast<int>(r.slots.size());
      running += r.process && !r.process->exited();
    }
  }
  const int total = options_.gpu_ids.empty() ? options_.cpu_slots : static_cast<int>(options_.gpu_ids.size());
  metrics_->slots_used->Set(used);
  metrics_->slots_free->Set(total - used);
  metrics_->ranks_running->Set(running);
}

bool Worker::Register() {
  v1::RegisterWorkerRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_host(options_.host);
  if (options_.gpu_ids.empty()) {
    req.set_slot_type(v1::SLOT_CPU);
    req.set_slots(options_.cpu_slots);
  } else {
    req.set_slot_type(v1::SLOT_GPU);
    req.set_slots(static_cast<int>(options_.gpu_ids.size()));
    for (int g : options_.gpu_ids) req.add_gpu_ids(g);
  }
  for (const auto& [k, v] : options_.labels) (*req.mutable_labels())[k] = v;
  req.set_version(RETINA_VERSION);
  req.set_metrics_address(options_.metrics_address);
  for (v1::TaskRef& r : RunningRefs()) *req.add_running() = std::move(r);
  v1::RegisterWorkerResponse resp;
  auto ctx = services::NewCallContext(options_.token, kRpcTimeout);
  const grpc::Status s = stub_->RegisterWorker(ctx.get(), req, &resp);
  if (!NoteRpc(s, /*liveness=*/true)) {
    RETINA_LOG(Warning) << "cannot register with " << options_.coordinator << ": "
                        << services::FromGrpcStatus(s) << " (retrying)";
    return false;
  }
  registered_ = true;
  heartbeat_ = absl::Milliseconds(std::max<int64_t>(50, resp.heartbeat_ms()));
  RETINA_LOG(Info) << "registered with " << options_.coordinator << " as " << options_.worker_id << " ("
                   << req.slots() << (req.slot_type() == v1::SLOT_GPU ? " GPU" : " CPU") << " slots, "
                   << tasks_.size() << " running tasks)";
  for (const v1::TaskRef& ref : resp.stop()) {
    auto it = tasks_.find({ref.job_id(), ref.attempt()});
    if (it != tasks_.end()) BeginStop(&it->second, true);
  }
  return true;
}

void Worker::Heartbeat() {
  v1::HeartbeatRequest req;
  req.set_worker_id(options_.worker_id);
  for (v1::TaskRef& r : RunningRefs()) *req.add_running() = std::move(r);
  v1::HeartbeatResponse resp;
  auto ctx = services::NewCallContext(options_.token, kRpcTimeout);
  const grpc::Status s = stub_->Heartbeat(ctx.get(), req, &resp);
  if (!NoteRpc(s, /*liveness=*/true)) {
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED || s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      RETINA_LOG(Error) << "heartbeat rejected: " << services::FromGrpcStatus(s) << "; check --token-file";
    }
    return;  // ranks keep running; the next heartbeat retries
  }
  if (resp.reregister()) {
    RETINA_LOG(Warning) << "the coordinator does not know this worker (restarted?): registering again";
    registered_ = false;
    return;
  }
  for (const v1::Assignment& a : resp.assignments()) {
    const Key key{a.job_id(), a.attempt()};
    if (tasks_.count(key) || finished_.count(key)) continue;  // already started (assignments are re-sent)
    Start(a);
  }
  for (const v1::TaskRef& ref : resp.stop()) {
    const Key key{ref.job_id(), ref.attempt()};
    auto it = tasks_.find(key);
    if (it != tasks_.end()) {
      BeginStop(&it->second, true);
      continue;
    }
    bool queued = false;
    for (const auto& c : completions_) queued |= c.job_id() == key.first && c.attempt() == key.second;
    if (!queued) {  // never started or already gone: acknowledge
      v1::CompleteTaskRequest c;
      c.set_worker_id(options_.worker_id);
      c.set_job_id(key.first);
      c.set_attempt(key.second);
      c.set_stopped(true);
      completions_.push_back(std::move(c));
    }
  }
}

namespace {

// The launch contract (common/rank_launch.h) of the assignment's i-th rank.
RankLaunch LaunchOf(const v1::Assignment& a, const std::filesystem::path& config, const std::filesystem::path& store,
                    const std::string& host, int i) {
  RankLaunch launch;
  launch.config = config;
  launch.store = store;
  launch.job_id = a.job_id();
  launch.job_uid = a.job_uid();
  launch.user = a.user();
  launch.attempt = a.attempt();
  launch.allowed_roots.assign(a.allowed_roots().begin(), a.allowed_roots().end());
  launch.output_roots.assign(a.output_roots().begin(), a.output_roots().end());
  launch.rank = a.ranks(i);
  launch.world_size = a.world_size();
  launch.local_rank = i;
  launch.local_world_size = a.local_world_size();
  launch.master_addr = a.master_addr();
  launch.master_port = a.master_port();
  launch.host_addr = host;
  launch.elastic_world_size = a.full_world_size();
  launch.elastic_min_world_size = a.min_world_size();
  return launch;
}

}  // namespace

void Worker::Start(const v1::Assignment& a) {
  const Key key{a.job_id(), a.attempt()};
  const StoreLayout layout(options_.store);
  Task& t = tasks_[key];
  t.assignment = a;
  const std::filesystem::path config = layout.SubmittedConfigPath(a.job_id());
  // The coordinator reserved the directory for this job; never write into another's.
  absl::Status status = CheckJobOwner(layout, a.job_id(), a.job_uid(), /*claim=*/false);
  if (status.ok()) status = CreateDirectories(layout.JobDir(a.job_id()));
  if (status.ok()) status = WriteFileAtomic(config, a.config_yaml());
  bool has_rank0 = false;
  for (int r : a.ranks()) has_rank0 |= r == 0;
  if (status.ok() && has_rank0) {
    auto pipe = EventPipe::Create();
    if (pipe.ok()) t.events = std::move(*pipe);
    else status = pipe.status();
  }
  // Orphans of a killed worker incarnation still running an earlier attempt
  // of this job here would run beside the new one: they go first.
  if (status.ok()) {
    for (pid_t pid : KillEarlierAttempts(a.job_uid(), a.attempt())) {
      RETINA_LOG(Warning) << a.job_id() << " attempt " << a.attempt() << ": killed pid " << pid
                          << ", a rank of an earlier attempt still running on this host";
    }
  }
  const int per_rank = a.ranks_size() > 0 ? a.slot_ids_size() / a.ranks_size() : 1;
  for (int i = 0; i < a.ranks_size() && status.ok(); ++i) {
    Rank rank;
    rank.rank = a.ranks(i);
    for (int k = 0; k < per_rank; ++k) rank.slots.push_back(a.slot_ids(i * per_rank + k));
    RankLaunch launch = LaunchOf(a, config, options_.store, options_.host, i);
    launch.events_fd3 = rank.rank == 0 && t.events;
    std::map<std::string, std::string> env = launch.Env();
    for (const auto& [name, path] : {std::pair<const char*, const std::filesystem::path*>{"RETINA_SERVE_CLIENT_TOKENS",
                                                                                         &options_.serve_client_tokens},
                                     {"RETINA_SERVE_TLS_CERT", &options_.serve_tls_cert},
                                     {"RETINA_SERVE_TLS_KEY", &options_.serve_tls_key}}) {
      if (!path->empty()) env[name] = path->string();
    }
    if (options_.gpu_ids.empty()) {
      env["OMP_NUM_THREADS"] = absl::StrCat(rank.slots.size());  // one thread per CPU slot
    } else {
      env["CUDA_VISIBLE_DEVICES"] = absl::StrJoin(rank.slots, ",");
    }
    std::vector<std::string> argv = {options_.trainer.string()};
    const std::vector<std::string> run = launch.RunArgs();
    argv.insert(argv.end(), run.begin(), run.end());
    const bool events = launch.events_fd3;
    auto p = RankProcess::Spawn(argv, env, layout.RankLogPath(a.job_id(), a.attempt(), rank.rank),
                                events ? t.events->write_fd() : -1);
    if (!p.ok()) {
      status = p.status();
      break;
    }
    rank.process = std::move(*p);
    t.ranks.push_back(std::move(rank));
  }
  if (t.events) t.events->CloseWriteEnd();
  if (!status.ok()) {
    RETINA_LOG(Error) << a.job_id() << " attempt " << a.attempt() << ": cannot start its ranks: " << status;
    for (Rank& r : t.ranks) r.process->Signal(SIGKILL);
    v1::CompleteTaskRequest c;
    c.set_worker_id(options_.worker_id);
    c.set_job_id(a.job_id());
    c.set_attempt(a.attempt());
    const std::string why = absl::StrCat("the worker could not start the rank: ", status.message());
    for (int r : a.ranks()) {
      v1::RankExit* x = c.add_exits();
      x->set_rank(r);
      x->set_exit_code(127);
      x->set_first_error(why.substr(0, 512));
    }
    completions_.push_back(std::move(c));
    finished_[key] = absl::Now();
    tasks_.erase(key);
    return;
  }
  RETINA_LOG(Info) << "started " << a.job_id() << " attempt " << a.attempt() << " ranks ["
                   << absl::StrJoin(a.ranks(), ",") << "] of " << a.world_size() << ", rendezvous "
                   << a.master_addr() << ":" << a.master_port();
  UpdateGauges();
}

void Worker::BeginStop(Task* t, bool requested) {
  t->stop_requested |= requested;
  if (t->stopping) return;
  t->stopping = true;
  t->kill_at = absl::Now() + options_.grace;
  for (Rank& r : t->ranks) r.process->Signal(SIGTERM);
  RETINA_LOG(Info) << "stopping " << t->assignment.job_id() << " attempt " << t->assignment.attempt()
                   << (requested ? " (requested)" : " (a rank failed)") << ": SIGTERM, SIGKILL after "
                   << absl::FormatDuration(options_.grace);
}

void Worker::ForwardEvents(const Key& key, Task* t) {
  if (!t->events) return;
  std::vector<std::string> lines;
  t->events->ReadLines(&lines);
  if (lines.empty() || !registered_) return;
  v1::ReportEventsRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_job_id(key.first);
  req.set_attempt(key.second);
  for (std::string& l : lines) req.add_events_json(std::move(l));
  v1::ReportEventsResponse resp;
  auto ctx = services::NewCallContext(options_.token, kRpcTimeout);
  // Events are also in the store's events.jsonl: a failed forward only
  // delays live progress, so it is not retried.
  NoteRpc(stub_->ReportEvents(ctx.get(), req, &resp));
}

void Worker::Supervise() {
  const absl::Time now = absl::Now();
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    Task& t = it->second;
    bool all = true, failed = false;
    for (Rank& r : t.ranks) {
      if (!r.process->Poll()) {
        all = false;
      } else if (r.process->exit_code() != 0) {
        failed = true;
      }
    }
    if (failed && !t.stopping) BeginStop(&t, false);  // fail fast: the others would only wait for a timeout
    if (t.stopping && now >= t.kill_at) {
      for (Rank& r : t.ranks) r.process->Signal(SIGKILL);
      t.kill_at = absl::InfiniteFuture();
    }
    ForwardEvents(it->first, &t);
    if (!all) {
      ++it;
      continue;
    }
    v1::CompleteTaskRequest c;
    c.set_worker_id(options_.worker_id);
    c.set_job_id(it->first.first);
    c.set_attempt(it->first.second);
    c.set_stopped(t.stop_requested);
    std::vector<std::string> codes;
    for (Rank& r : t.ranks) {
      const int code = r.process->exit_code();
      v1::RankExit* x = c.add_exits();
      x->set_rank(r.rank);
      x->set_exit_code(code);
      if (code != 0 && code != kExitPreempted && !t.stop_requested) {
        x->set_first_error(FirstErrorLine(StoreLayout(options_.store).RankLogPath(it->first.first, it->first.second, r.rank),
                                          "retina-train"));
      }
      codes.push_back(absl::StrCat(r.rank, ":", code));
      if (metrics_) {
        const char* result = ExitResult(code);
        metrics_->rank_exits->Add({{"result", result}}).Increment();
      }
    }
    RETINA_LOG(Info) << it->first.first << " attempt " << it->first.second << " ended on this worker (rank:exit "
                     << absl::StrJoin(codes, " ") << ")";
    completions_.push_back(std::move(c));
    finished_[it->first] = now;
    it = tasks_.erase(it);
  }
  for (auto it = finished_.begin(); it != finished_.end();) {
    it = now - it->second > absl::Minutes(10) ? finished_.erase(it) : std::next(it);
  }
  UpdateGauges();
}

bool Worker::NoteRpc(const grpc::Status& s, bool liveness) {
  if (metrics_ && !s.ok()) metrics_->rpc_failures->Increment();
  if (metrics_ && liveness) metrics_->coordinator_up->Set(s.ok() ? 1 : 0);
  return s.ok();
}

void Worker::FlushCompletions() {
  for (auto it = completions_.begin(); it != completions_.end();) {
    v1::CompleteTaskResponse resp;
    auto ctx = services::NewCallContext(options_.token, kRpcTimeout);
    const grpc::Status s = stub_->CompleteTask(ctx.get(), *it, &resp);
    if (NoteRpc(s) || s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      it = completions_.erase(it);
    } else {
      break;  // the coordinator is unreachable: retry on the next round
    }
  }
}

void Worker::Run(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    const absl::Time now = absl::Now();
    if (!registered_ && now >= next_register_) {
      if (!Register()) next_register_ = now + absl::Seconds(1);
      next_heartbeat_ = now + heartbeat_;
    } else if (registered_ && now >= next_heartbeat_) {
      Heartbeat();
      next_heartbeat_ = now + heartbeat_;
    }
    Supervise();
    if (registered_ && !completions_.empty()) FlushCompletions();
    absl::SleepFor(absl::Milliseconds(50));
  }
  RETINA_LOG(Info) << "shutting down: stopping " << tasks_.size() << " tasks";
  for (auto& [key, t] : tasks_) BeginStop(&t, true);
  while (!tasks_.empty()) {
    Supervise();
    absl::SleepFor(absl::Milliseconds(50));
  }
  for (int i = 0; i < 3 && !completions_.empty(); ++i) FlushCompletions();
}

}  // namespace retina::worker
