#include "services/coordinator/agent_executor.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/records.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

namespace {

// A rank's first error line as a user may see it (the worker escaped it).
std::string Printable(const std::string& text) {
  std::string why = text.substr(0, 512);
  for (char& c : why) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return why;
}

// Why a worker's part of an attempt failed, from its ranks' exits: the first
// rank that failed saying why (its first error line: the others were usually
// stopped because of it), else the first that failed; "" when none did.
std::string PartFailure(const v1::CompleteTaskRequest& r, size_t ranks_placed) {
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
    const std::string why = Printable(x.first_error());
    return x.exit_code() == kExitPreempted
               ? absl::StrCat("rank ", x.rank(), " stopped after a checkpoint (exit 75, preempted) on ", r.worker_id())
               : absl::StrCat("rank ", x.rank(), " exited with code ", x.exit_code(), " on ", r.worker_id(),
                              why.empty() ? "" : absl::StrCat(": ", why), "; see its log: retina logs ", r.job_id(),
                              " --rank ", x.rank());
  }
  if (r.stopped() || r.exits_size() < static_cast<int>(ranks_placed)) {
    return absl::StrCat("ranks on ", r.worker_id(), " were stopped before finishing");
  }
  return "";
}

}  // namespace

AgentExecutor::AgentExecutor(AgentOptions options, ExecutorContext context, const NotServingLog* serving, int64_t now)
    : options_(std::move(options)), ctx_(std::move(context)), jobs_(*ctx_.jobs), registry_(ctx_.metrics, serving) {
  recovery_deadline_ms_ = now + 2 * absl::ToInt64Milliseconds(options_.lease);
  // Start the port rotation at a random place: a restarted coordinator (or a
  // second one on the host) does not hand out the port it just used.
  next_port_ = static_cast<int>(absl::ToUnixNanos(absl::Now()) % 100003);
}

void AgentExecutor::Recover(JobEntry* e, int64_t) {
  Attempt& a = attempts_[e->job.id()];
  a.recovering = true;
  // A stop for a preemption or a growth, sent before the restart, ends the
  // attempt the same way now (Job.stopping).
  const std::string& stopping = e->job.stopping();
  if (absl::StartsWith(stopping, kStoppingPreempted)) a.preempted_by = stopping.substr(strlen(kStoppingPreempted));
  if (absl::StartsWith(stopping, kStoppingGrow)) a.growing = stopping.substr(strlen(kStoppingGrow));
  a.host = e->job.master_addr();
  a.port = e->job.master_port();
  ports_[a.host].insert(a.port);
}

absl::Status AgentExecutor::CheckFits(const v1::JobSpec& spec) {
  const int needed = ElasticSizes(spec.world_size(), spec.min_world_size()).back() * spec.slots_per_rank();
  const int total = registry_.TotalSlots(spec.slot_type());
  if (registry_.seen_any() && needed > total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.world_size: ", spec.world_size(), " ranks x ", spec.slots_per_rank(), " slots need ", needed, " ",
        NormalType(spec.slot_type()) == v1::SLOT_GPU ? "GPU" : "CPU", " slots; the ready workers have ", total));
  }
  return absl::OkStatus();
}

void AgentExecutor::Tick(int64_t now) {
  const int64_t lease = absl::ToInt64Milliseconds(options_.lease);
  for (auto& [id, w] : registry_.all()) {
    if (w.info.state() == v1::WorkerInfo::READY && registry_.ServingSilence(w, now) > lease) LoseWorker(&w, now);
  }
  if (recovery_deadline_ms_ != 0 && now >= recovery_deadline_ms_) EndRecovery(now);
  CommitConfirmed(now);
  registry_.UpdateGauges();  // once a tick: an O(workers) pass
}

void AgentExecutor::Retry(JobEntry* e, int64_t now) {
  NoteConfirmed(e);
  MaybeFinishAttempt(e, now);
}

void AgentExecutor::Cancel(JobEntry* e, int64_t now) {
  StopAttempt(e);
  MaybeFinishAttempt(e, now);
}

void AgentExecutor::EndRecovery(int64_t now) {
  recovery_deadline_ms_ = 0;
  std::vector<std::string> ids;
  for (const auto& [id, a] : attempts_) {
    if (a.recovering) ids.push_back(id);
  }
  for (const std::string& id : ids) {
    JobEntry* e = jobs_.Get(id);
    Attempt& a = attempts_[id];
    a.recovering = false;
    if (e == nullptr) continue;
    std::set<int> ranks;
    for (const auto& [worker, part] : a.parts) ranks.insert(part.ranks.begin(), part.ranks.end());
    const bool whole = static_cast<int>(ranks.size()) == AttemptWorldSize(e->job);
    if (!whole && !a.failed) {
      a.failed = true;
      a.failure = absl::StrCat("only ", ranks.size(), " of ", AttemptWorldSize(e->job),
                               " ranks re-attached after a coordinator restart");
      a.reason = "coordinator_restart";
      StopAttempt(e);
    } else if (whole) {
      for (auto& [worker, part] : a.parts) part.confirmed = true;
      NoteConfirmed(e);
      // A stop sent before the restart may not have reached the ranks: again.
      if (!a.preempted_by.empty() || !a.growing.empty()) StopAttempt(e);
    }
    MaybeFinishAttempt(e, now);
  }
}

// ---- placement: planned without the state lock, applied under it ----

void AgentExecutor::Poll() {
  std::vector<QueuedJob> queue;
  std::vector<FreeWorker> free;
  FairShare share;
  std::map<std::string, int> attempt_seen;
  std::vector<RunningJob> running;  // placed jobs, for priority preemption
  bool preempting = false;          // a preemption (or a growth) is still freeing its slots
  bool elastic_below = false;       // an elastic job runs below its world size
  std::pair<uint64_t, uint64_t> seen;
  bool skip = false;
  ctx_.locked([&] {
    seen = {jobs_.state_changes(), registry_.slot_changes()};
    skip = !jobs_.db_ok() || seen == idle_at_;
    if (skip) return;
    share.max_running_slots_per_user = options_.max_running_slots_per_user;
    for (const auto& [seq, e] : jobs_.by_seq()) {
      const v1::JobSpec& spec = e->job.spec();
      if (spec.kind() == v1::STUDY) continue;
      if (IsPlaced(e->job)) {
        share.running_slots[e->job.user()] += AttemptWorldSize(e->job) * spec.slots_per_rank();
        auto at = attempts_.find(e->job.id());
        if (at != attempts_.end()) {
          preempting |= !at->second.preempted_by.empty() || !at->second.growing.empty();
          auto label = spec.labels().find("preemptible");
          RunningJob r{e->job.id(), spec.priority(), seq,
                       e->job.start_unix_ms() > 0 ? e->job.start_unix_ms() : ctx_.now_ms(),
                       NormalType(spec.slot_type()) == v1::SLOT_GPU ? SlotKind::kGpu : SlotKind::kCpu,
                       label == spec.labels().end() || label->second != "false", {}};
          for (const auto& [worker, part] : at->second.parts) {
            r.slots.emplace_back(worker, static_cast<int>(part.slot_ids.size()));
          }
          r.world_size = AttemptWorldSize(e->job);
          r.full_world_size = spec.world_size();
          r.min_world_size = spec.min_world_size();
          r.slots_per_rank = spec.slots_per_rank();
          elastic_below |= e->job.state() == v1::RUNNING && r.world_size < r.full_world_size;
          running.push_back(std::move(r));
        }
      }
      if (e->job.state() != v1::QUEUED) continue;
      queue.push_back({e->job.id(), spec.priority(), seq,
                       NormalType(spec.slot_type()) == v1::SLOT_GPU ? SlotKind::kGpu : SlotKind::kCpu,
                       spec.world_size(), spec.slots_per_rank(), e->job.user(), spec.min_world_size()});
      attempt_seen[e->job.id()] = e->job.attempt();
    }
    if (!queue.empty() || elastic_below) free = registry_.FreeWorkers();
  });
  if (skip) return;
  std::vector<GangPlan> plans;
  if (!queue.empty() && !free.empty()) plans = PlanPass(queue, free, share);
  if (plans.empty()) {
    // Nothing fits: the queue's head may preempt lower-priority jobs. One
    // preemption at a time: the next waits until its victims have stopped.
    bool again = false;
    if (!queue.empty() && !preempting) {
      const QueuedJob& head = *std::min_element(queue.begin(), queue.end(), [](const QueuedJob& a, const QueuedJob& b) {
        return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
      });
      const int needed = head.world_size * std::max(1, head.slots_per_rank);
      auto held = share.running_slots.find(head.user);
      const bool user_limited = share.max_running_slots_per_user > 0 &&
                                (held == share.running_slots.end() ? 0 : held->second) + needed >
                                    share.max_running_slots_per_user;
      if (!user_limited) ctx_.locked([&] { again = MaybePreempt(head, free, running, ctx_.now_ms()); });
    }
    // Idle slots: an elastic job below its size may grow back.
    if (!again && !preempting && elastic_below) {
      ctx_.locked([&] { again = MaybeGrow(running, free, queue, ctx_.now_ms()); });
    }
    if (!again) ctx_.locked([&] { idle_at_ = seen; });
    return;
  }
  ctx_.locked([&] {
    // One transaction for the whole pass: one fsync instead of one per
    // placement. Until it commits nothing of the pass reaches a worker
    // (assignments ride on heartbeats, which wait for the state lock); if it
    // fails, the pass is undone.
    const int64_t now = ctx_.now_ms();
    const bool batch = plans.size() > 1 && jobs_.BeginBatch();
    std::vector<std::pair<JobEntry*, v1::Job>> undo;  // the records before the pass
    for (const GangPlan& plan : plans) {
      JobEntry* e = jobs_.Get(plan.job_id);
      if (e == nullptr) break;
      v1::Job before = e->job;
      // A job or worker no longer as planned: the rest waits for the next
      // pass (placing it would jump the queue).
      if (!Place(e, attempt_seen.at(plan.job_id), plan, now)) break;
      if (batch) undo.emplace_back(e, std::move(before));
    }
    if (!batch) return;
    const absl::Status committed = jobs_.CommitBatch();
    if (committed.ok()) return;
    RETINA_LOG(Error) << "cannot commit a scheduling pass of " << undo.size() << " placement(s): " << committed
                      << "; undone (a later pass places them)";
    for (auto& [e, before] : undo) {
      Attempt& a = attempts_[e->job.id()];
      for (const auto& [worker, part] : a.parts) {
        if (WorkerEntry* w = registry_.Find(worker)) registry_.ReleaseTask(w, {e->job.id(), e->job.attempt()});
      }
      a.parts.clear();
      FreePort(&a);
      jobs_.Restore(e, std::move(before));
    }
  });
}

bool AgentExecutor::MaybePreempt(const QueuedJob& blocked, const std::vector<FreeWorker>& free,
                                 const std::vector<RunningJob>& running, int64_t now) {
  PreemptionRules rules;
  rules.now_ms = now;
  rules.min_run_ms = absl::ToInt64Milliseconds(options_.preempt_min_run);
  const std::vector<std::string> victims = PlanPreemption(blocked, free, running, rules);
  if (victims.empty()) {
    // A lower-priority job that has not yet run its minimum time may become
    // a victim later with nothing else changing: plan again next tick.
    return std::any_of(running.begin(), running.end(), [&](const RunningJob& r) {
      return r.priority < blocked.priority && r.preemptible && r.kind == blocked.kind && now - r.started_ms < rules.min_run_ms;
    });
  }
  const std::string why = absl::StrCat(blocked.id, " (priority ", blocked.priority, ") needed its slots");
  for (const std::string& id : victims) {
    JobEntry* e = jobs_.Get(id);
    auto at = attempts_.find(id);
    if (e == nullptr || !IsPlaced(e->job) || at == attempts_.end() || !at->second.preempted_by.empty()) continue;
    RETINA_LOG(Info) << "preempting " << id << " attempt " << e->job.attempt() << " (priority " << e->job.spec().priority()
                     << "): " << why;
    at->second.preempted_by = why;
    CommitStopping(e, kStoppingPreempted + why);
    if (ctx_.metrics) ctx_.metrics->Preempted();
    StopAttempt(e);  // SIGTERM: the ranks checkpoint and exit 75
  }
  return true;
}

bool AgentExecutor::MaybeGrow(const std::vector<RunningJob>& running, const std::vector<FreeWorker>& free,
                              const std::vector<QueuedJob>& queue, int64_t now) {
  GrowthRules rules;
  rules.now_ms = now;
  rules.min_interval_ms = absl::ToInt64Milliseconds(options_.grow_after);
  bool later = false;
  const std::optional<GrowPlan> grow = PlanGrowth(running, free, queue, rules, &later);
  if (!grow) return later;
  JobEntry* e = jobs_.Get(grow->job_id);
  auto at = attempts_.find(grow->job_id);
  if (e == nullptr || e->job.state() != v1::RUNNING || at == attempts_.end() || !at->second.growing.empty()) return false;
  at->second.growing = absl::StrCat(grow->from, " -> ", grow->to, " ranks (idle slots)");
  RETINA_LOG(Info) << "growing " << grow->job_id << " attempt " << e->job.attempt() << ": " << at->second.growing;
  CommitStopping(e, kStoppingGrow + at->second.growing);
  StopAttempt(e);  // SIGTERM: the ranks checkpoint and exit 75; the job is placed again with more ranks
  return true;
}

void AgentExecutor::CommitStopping(JobEntry* e, const std::string& why) {
  v1::Job next = e->job;
  next.set_stopping(why);
  // Not committed: the stop still goes out; only a restart before the
  // attempt ends would then count it as a failure.
  if (absl::Status s = jobs_.Commit(e, std::move(next)); !s.ok()) {
    RETINA_LOG(Warning) << "cannot commit why " << e->job.id() << " is being stopped: " << s;
  }
}

int AgentExecutor::PickPort(const std::string& host) {
  const std::set<int>& busy = ports_[host];
  const int n = options_.port_max - options_.port_min + 1;
  for (int i = 0; i < n; ++i) {
    const int port = options_.port_min + (next_port_++ % n);
    if (!busy.count(port)) return port;
  }
  return 0;
}

void AgentExecutor::FreePort(Attempt* a) {
  auto it = ports_.find(a->host);
  if (it != ports_.end()) {
    it->second.erase(a->port);
    if (it->second.empty()) ports_.erase(it);
  }
  a->host.clear();
  a->port = 0;
}

v1::Assignment AgentExecutor::AssignmentOf(const v1::Job& job, int world_size, int local_world_size) const {
  v1::Assignment a;
  a.set_job_id(job.id());
  a.set_attempt(job.attempt());
  a.set_kind(job.spec().kind());
  a.set_config_yaml(job.spec().config_yaml());
  a.set_world_size(world_size);
  if (ElasticSizes(job.spec().world_size(), job.spec().min_world_size()).size() > 1) {
    a.set_full_world_size(job.spec().world_size());
    a.set_min_world_size(job.spec().min_world_size());
  }
  a.set_local_world_size(local_world_size);
  a.set_master_addr(job.master_addr());
  a.set_master_port(job.master_port());
  a.set_job_uid(job.uid());
  a.set_user(job.user());
  for (const auto& root : options_.allowed_roots) a.add_allowed_roots(root.string());
  for (const auto& root : options_.output_roots) a.add_output_roots(root.string());
  return a;
}

bool AgentExecutor::Place(JobEntry* e, int attempt_seen, const GangPlan& plan, int64_t now) {
  if (e->job.state() != v1::QUEUED || e->job.attempt() != attempt_seen) return false;
  const v1::JobSpec& spec = e->job.spec();
  const int per_rank = std::max(1, spec.slots_per_rank());
  std::vector<std::pair<WorkerEntry*, int>> chosen;
  for (const auto& [id, n] : plan.ranks_per_worker) {
    WorkerEntry* w = registry_.Find(id);
    if (w == nullptr || w->info.state() != v1::WorkerInfo::READY ||
        static_cast<int>(w->slot_ids.size() - w->used.size()) < n * per_rank) {
      return false;
    }
    chosen.emplace_back(w, n);
  }
  if (chosen.empty()) return false;
  v1::Job job = e->job;  // committed below, then applied
  const int attempt = job.attempt() + 1;
  int size = 0;
  for (const auto& [w, n] : chosen) size += n;
  job.set_attempt(attempt);
  job.set_state(v1::SCHEDULED);
  job.set_message("");
  job.clear_stopping();
  // A serve job's address is its attempt's (the next one says where it answers).
  job.mutable_progress()->clear_endpoint();
  job.mutable_progress()->clear_models();
  const int before = job.attempt_world_size();  // 0 before the first attempt
  std::string resize;
  if (before > 0 && before != size) {
    // The global batch is kept: ranks below world_size accumulate micro-batches (run.h).
    resize = absl::StrCat("resized: ", before, " -> ", size, " ranks, accumulation ", spec.world_size() / before, " -> ",
                          spec.world_size() / size);
    job.set_resizes(job.resizes() + 1);
    job.set_message(resize);
  } else if (before == 0 && size < spec.world_size()) {
    job.set_message(absl::StrCat("started on ", size, " of ", spec.world_size(), " ranks (elastic, accumulation ",
                                 spec.world_size() / size, "); grows when slots free up"));
  }
  job.set_attempt_world_size(size);
  job.set_start_unix_ms(0);
  job.clear_placement();
  job.set_master_addr(chosen.front().first->info.host());
  job.set_master_port(PickPort(job.master_addr()));
  Attempt& at = attempts_[job.id()];
  at.parts.clear();
  at.failed = false;
  int rank = 0;
  for (auto& [w, n] : chosen) {
    Part part;
    v1::Assignment a = AssignmentOf(job, size, n);
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
    at.parts[w->info.id()] = std::move(part);
  }
  const std::string id = job.id(), rendezvous = absl::StrCat(job.master_addr(), ":", job.master_port());
  if (absl::Status s = jobs_.Commit(e, std::move(job)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << id << " attempt " << attempt << ": " << s << "; not placed";
    for (auto& [w, n] : chosen) registry_.ReleaseTask(w, {id, attempt});
    at.parts.clear();  // still QUEUED: a later pass places it
    return false;
  }
  at.host = e->job.master_addr();
  at.port = e->job.master_port();
  ports_[at.host].insert(at.port);
  if (ctx_.metrics) {
    ctx_.metrics->QueueWait((now - e->queued_ms) / 1000.0);
    ctx_.metrics->AttemptStarted(at.reason);
    if (!resize.empty()) ctx_.metrics->Resized(size < before ? "shrink" : "grow");
  }
  RETINA_LOG(Info) << id << " attempt " << attempt << " scheduled: " << size << " ranks on " << chosen.size()
                   << " worker(s), rendezvous " << rendezvous << (resize.empty() ? "" : "; ") << resize;
  return true;
}

// ---- an attempt's life ----

void AgentExecutor::FailPart(JobEntry* e, const std::string& worker, const std::string& why, const std::string& reason) {
  Attempt& a = attempts_[e->job.id()];
  auto p = a.parts.find(worker);
  if (p == a.parts.end() || p->second.done) return;
  p->second.done = true;
  p->second.failed = true;
  if (!a.failed && !e->job.cancel_requested()) {
    a.failed = true;
    a.failure = why;
    a.reason = reason;
  }
  StopAttempt(e);
}

void AgentExecutor::StopAttempt(JobEntry* e) {
  const TaskKey key{e->job.id(), e->job.attempt()};
  for (auto& [worker, part] : attempts_[e->job.id()].parts) {
    if (part.done) continue;
    WorkerEntry* w = registry_.Find(worker);
    if (w == nullptr || w->info.state() != v1::WorkerInfo::READY) {
      part.done = true;
      continue;
    }
    w->pending.erase(key);
    v1::TaskRef t;
    t.set_job_id(key.first);
    t.set_attempt(key.second);
    for (int r : part.ranks) t.add_ranks(r);
    for (int s : part.slot_ids) t.add_slot_ids(s);
    w->stopping[key] = t;
  }
}

void AgentExecutor::NoteConfirmed(JobEntry* e) {
  auto it = attempts_.find(e->job.id());
  if (e->job.state() != v1::SCHEDULED || it == attempts_.end() || it->second.recovering || it->second.parts.empty()) {
    return;
  }
  for (const auto& [worker, part] : it->second.parts) {
    if (!part.confirmed) return;
  }
  confirmed_.insert(e->job.id());
}

void AgentExecutor::CommitConfirmed(int64_t now) {
  if (confirmed_.empty() || !jobs_.db_ok()) return;
  std::vector<JobEntry*> ready;
  for (const std::string& id : confirmed_) {
    JobEntry* e = jobs_.Get(id);
    if (e != nullptr && e->job.state() == v1::SCHEDULED) ready.push_back(e);
  }
  confirmed_.clear();
  // One transaction for the tick's confirmations: a start-up burst costs one
  // fsync per tick, not one per heartbeat.
  const bool batch = ready.size() > 1 && jobs_.BeginBatch();
  std::vector<std::pair<JobEntry*, v1::Job>> undo;
  for (JobEntry* e : ready) {
    v1::Job next = e->job, before = e->job;
    next.set_state(v1::RUNNING);
    next.set_start_unix_ms(now);
    if (absl::Status s = jobs_.Commit(e, std::move(next)); !s.ok()) {
      RETINA_LOG(Error) << "cannot commit " << e->job.id() << " RUNNING: " << s << " (retried)";
    } else if (batch) {
      undo.emplace_back(e, std::move(before));
    }
  }
  if (!batch) return;
  if (absl::Status s = jobs_.CommitBatch(); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << undo.size() << " jobs RUNNING: " << s << " (retried)";
    for (auto& [e, before] : undo) {
      jobs_.Restore(e, std::move(before));
      confirmed_.insert(e->job.id());
    }
  }
}

void AgentExecutor::MaybeFinishAttempt(JobEntry* e, int64_t now) {
  const v1::Job& job = e->job;
  if (!IsPlaced(job)) return;
  auto it = attempts_.find(job.id());
  if (it == attempts_.end() || it->second.recovering) return;
  Attempt& a = it->second;
  if (a.parts.empty() && !job.cancel_requested() && !a.failed) return;
  for (const auto& [worker, part] : a.parts) {
    if (!part.done) return;
  }
  if (confirmed_.erase(job.id()) && job.state() == v1::SCHEDULED) {
    // Started and ended within a tick: RUNNING first, so every state shows.
    v1::Job next = job;
    next.set_state(v1::RUNNING);
    next.set_start_unix_ms(now);
    if (!jobs_.Commit(e, std::move(next)).ok()) return;  // retried (Retry)
  }
  // A preempted attempt's ranks exit 75 (or are stopped): that is the
  // preemption, not a failure; a cancel still wins.
  // So do the ranks of an attempt stopped to grow.
  const AttemptOutcome outcome = job.cancel_requested()    ? AttemptOutcome::kCancelled
                                 : !a.preempted_by.empty() ? AttemptOutcome::kPreempted
                                 : !a.growing.empty()      ? AttemptOutcome::kGrowing
                                 : a.failed                ? AttemptOutcome::kFailed
                                                           : AttemptOutcome::kSucceeded;
  const std::string detail = outcome == AttemptOutcome::kPreempted ? a.preempted_by
                             : outcome == AttemptOutcome::kGrowing ? a.growing
                             : outcome == AttemptOutcome::kFailed  ? a.failure
                                                                   : "";
  if (!jobs_.EndAttempt(e, outcome, detail, now)) return;
  FreePort(&a);
  if (IsTerminal(e->job.state())) {
    attempts_.erase(it);
    return;
  }
  a.parts.clear();
  a.failed = false;
  a.failure.clear();
  a.preempted_by.clear();
  a.growing.clear();
}

void AgentExecutor::LoseWorker(WorkerEntry* w, int64_t now) {
  RETINA_LOG(Warning) << "worker " << w->info.id() << " lost: no heartbeat for "
                      << (now - registry_.LastSeen(*w)) / 1000.0 << " s (" << registry_.ServingSilence(*w, now) / 1000.0
                      << " s of it while serving); its ranks count as failed";
  for (const auto& [key, slots] : registry_.Lose(w)) {
    JobEntry* e = jobs_.Get(key.first);
    if (e == nullptr || e->job.attempt() != key.second) continue;
    FailPart(e, w->info.id(), absl::StrCat("worker ", w->info.id(), " lost"), "worker_lost");
    MaybeFinishAttempt(e, now);
  }
}

// ---- WorkerService ----

v1::RegisterWorkerResponse AgentExecutor::Register(const v1::RegisterWorkerRequest& r, int64_t now) {
  WorkerEntry* old = registry_.Find(r.worker_id());
  if (old != nullptr && old->info.state() == v1::WorkerInfo::READY) {
    // A worker restarted: tasks it no longer lists are gone.
    std::set<TaskKey> listed;
    for (const v1::TaskRef& t : r.running()) listed.insert({t.job_id(), t.attempt()});
    for (const auto& [key, slots] : std::map(old->tasks)) {
      if (listed.count(key)) continue;
      JobEntry* e = jobs_.Get(key.first);
      if (e != nullptr && e->job.attempt() == key.second) {
        FailPart(e, r.worker_id(), absl::StrCat("worker ", r.worker_id(), " restarted"), "worker_lost");
        MaybeFinishAttempt(e, now);
      }
    }
  }
  WorkerEntry& w = registry_.Register(r, now);
  v1::RegisterWorkerResponse out;
  out.set_heartbeat_ms(absl::ToInt64Milliseconds(options_.heartbeat));
  out.set_lease_ms(absl::ToInt64Milliseconds(options_.lease));
  for (const v1::TaskRef& t : r.running()) {
    const TaskKey key{t.job_id(), t.attempt()};
    std::vector<int> slots(t.slot_ids().begin(), t.slot_ids().end());
    w.tasks[key] = slots;
    w.used.insert(slots.begin(), slots.end());
    JobEntry* e = jobs_.Get(t.job_id());
    auto a = attempts_.find(t.job_id());
    const bool active = e != nullptr && a != attempts_.end() && e->job.attempt() == t.attempt() && IsPlaced(e->job) &&
                        !a->second.failed && !e->job.cancel_requested();
    if (active && (a->second.recovering || a->second.parts.count(r.worker_id()))) {
      Part& p = a->second.parts[r.worker_id()];
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
  // The next tick's pass places work on it: a storm of registrations (a
  // cluster starting) costs one pass per tick, not one each.
  return out;
}

v1::HeartbeatResponse AgentExecutor::Heartbeat(const v1::HeartbeatRequest& r, int64_t now) {
  v1::HeartbeatResponse out;
  WorkerEntry* w = registry_.Find(r.worker_id());
  if (w == nullptr || w->info.state() != v1::WorkerInfo::READY) {
    out.set_reregister(true);
    return out;
  }
  w->last_seen_ms = now;
  for (const v1::TaskRef& t : r.running()) {
    const TaskKey key{t.job_id(), t.attempt()};
    if (!w->tasks.count(key)) {  // not ours (any more): stop it
      w->tasks[key] = std::vector<int>(t.slot_ids().begin(), t.slot_ids().end());
      w->used.insert(t.slot_ids().begin(), t.slot_ids().end());
      w->stopping[key] = t;
      continue;
    }
    if (w->pending.erase(key) == 0) continue;
    JobEntry* e = jobs_.Get(t.job_id());
    auto a = attempts_.find(t.job_id());
    if (e == nullptr || a == attempts_.end() || e->job.attempt() != t.attempt()) continue;
    auto p = a->second.parts.find(r.worker_id());
    if (p == a->second.parts.end()) continue;
    p->second.confirmed = true;
    NoteConfirmed(e);
  }
  for (const auto& [key, a] : w->pending) *out.add_assignments() = a;
  for (const auto& [key, t] : w->stopping) *out.add_stop() = t;
  return out;
}

void AgentExecutor::Complete(const v1::CompleteTaskRequest& r, int64_t now) {
  if (WorkerEntry* w = registry_.Find(r.worker_id())) registry_.ReleaseTask(w, {r.job_id(), r.attempt()});
  JobEntry* e = jobs_.Get(r.job_id());
  if (e == nullptr || e->job.attempt() != r.attempt() || !IsPlaced(e->job)) return;  // a stale attempt
  auto at = attempts_.find(r.job_id());
  if (at == attempts_.end()) return;
  Attempt& a = at->second;
  auto pit = a.parts.find(r.worker_id());
  if (pit == a.parts.end()) {
    if (!a.recovering) return;
    Part& p = a.parts[r.worker_id()];  // finished while the coordinator was down
    for (const v1::RankExit& x : r.exits()) p.ranks.push_back(x.rank());
    p.confirmed = true;
    pit = a.parts.find(r.worker_id());
  }
  Part& part = pit->second;
  if (part.done) return;
  part.done = true;
  const bool stopping = e->job.cancel_requested() || a.failed;
  if (const std::string failure = PartFailure(r, part.ranks.size()); !failure.empty()) {
    part.failed = true;
    if (!stopping) {
      a.failed = true;
      a.failure = failure;
      a.reason = "rank_failed";
      StopAttempt(e);
    }
  }
  MaybeFinishAttempt(e, now);
}

v1::ListWorkersResponse AgentExecutor::Workers() {
  v1::ListWorkersResponse out;
  for (const auto& [id, w] : registry_.all()) {
    v1::WorkerInfo* info = out.add_workers();
    *info = w.info;
    info->set_free_slots(static_cast<int>(w.slot_ids.size() - w.used.size()));
    info->set_last_heartbeat_unix_ms(registry_.LastSeen(w));
    for (const auto& [key, slots] : w.tasks) info->add_jobs(key.first);
  }
  return out;
}

}  // namespace retina::coordinator
