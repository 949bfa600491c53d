// The coordinator's core (services/coordinator/coordinator.h) in process, on
// a fake clock: no server, no worker processes, no sleeps. Each test drives
// the state machine the way workers do (RegisterWorker, Heartbeat,
// CompleteTask) and moves time itself, so leases and recovery deadlines are
// exact: a lease is kept at `lease` and lost one millisecond after.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "common/file_util.h"
#include "common/records.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/coordinator_metrics.h"

namespace retina::coordinator {

// Holds the coordinator's state lock, as a slow commit or a long pass would.
class CoordinatorTestPeer {
 public:
  static void WithStateLock(Coordinator& c, const std::function<void()>& fn) {
    c.mu_.Lock();  // as Coordinator::StateLock takes it: the hold is timed
    const int64_t got = c.NowMs();
    fn();
    c.NoteNotServing(got, c.NowMs());
    c.mu_.Unlock();
  }
};

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPretrain[] = "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
                             "pretrain: {epochs: 1, global_batch: 12}\n";

class CoordinatorCore : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("coordinator-core-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    Fresh();
  }
  // An empty database and store (with the dataset the jobs name).
  void Fresh() {
    core_.reset();
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "store/datasets/em");
    ASSERT_TRUE(WriteFileAtomic(dir_ / "store/datasets/em/manifest.json", "{}").ok());
  }
  void TearDown() override {
    core_.reset();
    fs::remove_all(dir_);
  }

  // A coordinator over this test's database and store, ticked by the test.
  Coordinator& Start() {
    core_.reset();
    CoordinatorOptions o;
    o.database = dir_ / "retina.db";
    o.store = dir_ / "store";
    o.lease = kLease;
    o.heartbeat = absl::Seconds(1);
    o.clock_ms = [this] {
      // A thread marked slow spends `slow_step_ms_` per look at the clock
      // (time passing while it waits on the database).
      if (std::this_thread::get_id() == slow_thread_.load()) now_ms_ += slow_step_ms_;
      return now_ms_.load();
    };
    o.background_tick = false;
    o.max_running_slots_per_user = max_running_slots_per_user_;
    o.preempt_min_run = preempt_min_run_;
    o.grow_after = grow_after_;
    o.max_queued_jobs_per_user = max_queued_jobs_per_user_;
    absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Create(o, metrics_);
    EXPECT_TRUE(c.ok()) << c.status();
    core_ = std::move(*c);
    return *core_;
  }
  void Advance(absl::Duration d) { now_ms_ += absl::ToInt64Milliseconds(d); }
  CoordinatorMetrics* metrics_ = nullptr;  // none unless a test sets one before Start
  std::atomic<std::thread::id> slow_thread_{};
  int64_t slow_step_ms_ = 0;

  std::string Submit(int world, int max_restarts, const std::string& user = "alice") {
    absl::StatusOr<v1::Job> job = TrySubmit(world, max_restarts, user);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? job->id() : "";
  }
  absl::StatusOr<v1::Job> TrySubmit(int world, int max_restarts, const std::string& user) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_config_yaml(kPretrain);
    r.mutable_spec()->set_world_size(world);
    r.mutable_spec()->set_max_restarts(max_restarts);
    return core_->Submit(r, user);
  }
  v1::Job Get(const std::string& id) { return *core_->Get(id); }

  v1::RegisterWorkerResponse Register(const std::string& worker, int slots, std::vector<v1::TaskRef> running = {}) {
    v1::RegisterWorkerRequest r;
    r.set_worker_id(worker);
    r.set_host(worker + ".cluster");
    r.set_slot_type(v1::SLOT_CPU);
    r.set_slots(slots);
    for (const v1::TaskRef& t : running) *r.add_running() = t;
    absl::StatusOr<v1::RegisterWorkerResponse> out = core_->RegisterWorker(r);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }
  v1::HeartbeatResponse Beat(const std::string& worker, std::vector<v1::TaskRef> running = {}) {
    v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    for (const v1::TaskRef& t : running) *r.add_running() = t;
    absl::StatusOr<v1::HeartbeatResponse> out = core_->Heartbeat(r);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }
  static v1::TaskRef Running(const v1::Assignment& a) {
    v1::TaskRef t;
    t.set_job_id(a.job_id());
    t.set_attempt(a.attempt());
    *t.mutable_ranks() = a.ranks();
    *t.mutable_slot_ids() = a.slot_ids();
    return t;
  }
  // The worker's side of an assignment: it starts the ranks and says so;
  // the next tick commits the job RUNNING once every part is confirmed.
  v1::TaskRef StartAssigned(const std::string& worker) {
    core_->Tick();  // the scheduler's pass (every 100 ms in service)
    const v1::HeartbeatResponse hb = Beat(worker);
    EXPECT_EQ(hb.assignments_size(), 1) << worker;
    if (hb.assignments_size() != 1) return {};
    const v1::TaskRef t = Running(hb.assignments(0));
    Beat(worker, {t});
    core_->Tick();
    return t;
  }
  void Exit(const std::string& worker, const v1::TaskRef& t, int code, bool stopped = false) {
    v1::CompleteTaskRequest r;
    r.set_worker_id(worker);
    r.set_job_id(t.job_id());
    r.set_attempt(t.attempt());
    r.set_stopped(stopped);
    for (int rank : t.ranks()) {
      v1::RankExit* x = r.add_exits();
      x->set_rank(rank);
      x->set_exit_code(code);
    }
    EXPECT_TRUE(core_->CompleteTask(r).ok());
  }

  static constexpr absl::Duration kLease = absl::Seconds(10);
  int max_running_slots_per_user_ = 0, max_queued_jobs_per_user_ = 0;
  absl::Duration preempt_min_run_ = absl::Minutes(10);
  absl::Duration grow_after_ = absl::Minutes(5);
  fs::path dir_;
  std::atomic<int64_t> now_ms_{1'700'000'000'000};
  std::unique_ptr<Coordinator> core_;
};

TEST_F(CoordinatorCore, PerUserLimitsHoldOneUserAndRefuseTheExcess) {
  max_running_slots_per_user_ = 2;
  max_queued_jobs_per_user_ = 2;
  Start();
  Register("w1", 8);
  // A job larger than the per-user slot limit could never run: refused.
  EXPECT_EQ(TrySubmit(3, 0, "alice").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string a1 = Submit(2, 0, "alice");
  core_->Tick();
  EXPECT_EQ(Get(a1).state(), v1::SCHEDULED);
  // alice holds 2 of her 2 slots: her next jobs stay queued although 6 are free; bob's run.
  const std::string a2 = Submit(1, 0, "alice"), a3 = Submit(1, 0, "alice");
  const std::string b1 = Submit(2, 0, "bob");
  core_->Tick();
  EXPECT_EQ(Get(a2).state(), v1::QUEUED);
  EXPECT_EQ(Get(a3).state(), v1::QUEUED);
  EXPECT_EQ(Get(b1).state(), v1::SCHEDULED);
  // Two queued already: a third is refused, naming the user and the limit.
  absl::StatusOr<v1::Job> a4 = TrySubmit(1, 0, "alice");
  EXPECT_EQ(a4.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(a4.status().message()), HasSubstr("user alice has 2 queued job(s)"));
  EXPECT_TRUE(TrySubmit(1, 0, "bob").ok());
}

// A study counts its children (datasets x inits x seeds) against the queue
// limit; the count is parsed before the state lock is taken.
TEST_F(CoordinatorCore, AStudyCountsItsChildrenAgainstTheQueueLimit) {
  max_queued_jobs_per_user_ = 2;
  Start();
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(
      "kind: study\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
      "data: {dataset: em, test_dataset: em, loader_threads: 1}\nfinetune: {iters: 2, global_batch: 2}\n"
      "study:\n  inits: [random]\n  seed_count: 3\n  eval_at: [2]\n");
  absl::StatusOr<v1::Job> study = core_->Submit(r, "alice");
  ASSERT_FALSE(study.ok());
  EXPECT_EQ(study.status().code(), absl::StatusCode::kResourceExhausted) << study.status();
  EXPECT_THAT(std::string(study.status().message()), HasSubstr("3 more would pass the limit of 2"));
}

TEST_F(CoordinatorCore, StudyRequestIdsAreTheCoordinatorsInAnyCaseAndIdsArePrintable) {
  Start();
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(kPretrain);
  for (const std::string& id : std::vector<std::string>{"study:job-000042/0", "STUDY:job-000042/0", "Study:x", " study:x", "a b", "tab\tid",
                               std::string("nul\0id", 6), "caf\xc3\xa9"}) {
    r.set_request_id(id);
    absl::StatusOr<v1::Job> job = core_->Submit(r, "mallory");
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_THAT(std::string(job.status().message()), HasSubstr("request_id")) << id;
  }
  r.set_request_id("studies-are-fine:0");
  EXPECT_TRUE(core_->Submit(r, "mallory").ok());
}

// Request ids are per user: the same id from two users makes two jobs, a
// retry finds its own user's job, and no reply carries another user's job
// (its YAML, its request id); also after a restart over the same database.
TEST_F(CoordinatorCore, RequestIdsArePerUserAndNeverRevealAnotherUsersJob) {
  Start();
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(std::string(kPretrain) + "# alice's secret note\n");
  r.set_request_id("req-1");
  absl::StatusOr<v1::Job> alice = core_->Submit(r, "alice");
  ASSERT_TRUE(alice.ok()) << alice.status();
  r.mutable_spec()->set_config_yaml(kPretrain);
  std::string bobs;
  for (int restart = 0; restart < 2; ++restart) {
    if (restart == 1) Start();  // the coordinator restarts over the same database
    absl::StatusOr<v1::Job> bob = core_->Submit(r, "bob");  // new, then bob's retry
    ASSERT_TRUE(bob.ok()) << bob.status();
    EXPECT_NE(bob->id(), alice->id());
    EXPECT_EQ(bob->user(), "bob");
    EXPECT_THAT(bob->spec().config_yaml(), Not(HasSubstr("secret")));
    if (restart == 0) bobs = bob->id();
    EXPECT_EQ(bob->id(), bobs);
    absl::StatusOr<v1::Job> alice_again = core_->Submit(r, "alice");  // alice's retry: alice's job
    ASSERT_TRUE(alice_again.ok());
    EXPECT_EQ(alice_again->id(), alice->id());
    EXPECT_THAT(alice_again->spec().config_yaml(), HasSubstr("secret"));
  }
}

TEST_F(CoordinatorCore, AJobGoesQueuedScheduledRunningSucceeded) {
  Start();
  const std::string id = Submit(2, 0);
  EXPECT_EQ(Get(id).state(), v1::QUEUED);
  core_->Tick();
  EXPECT_EQ(Get(id).state(), v1::QUEUED);  // no workers yet
  Register("w1", 2);
  EXPECT_EQ(Get(id).state(), v1::QUEUED);  // a registration does not schedule: the next tick does
  core_->Tick();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  EXPECT_EQ(Get(id).attempt(), 1);
  EXPECT_EQ(Get(id).master_addr(), "w1.cluster");
  const v1::TaskRef t = StartAssigned("w1");
  EXPECT_THAT(t.ranks(), ::testing::ElementsAre(0, 1));
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_EQ(Beat("w1", {t}).assignments_size(), 0);  // confirmed: not handed out again
  Exit("w1", t, kExitOk);
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED);
  EXPECT_GT(Get(id).end_unix_ms(), 0);
}

TEST_F(CoordinatorCore, AnUnconfirmedAssignmentRidesOnEveryHeartbeat) {
  Start();
  const std::string id = Submit(1, 0);
  Register("w1", 1);
  core_->Tick();
  const v1::HeartbeatResponse first = Beat("w1");  // "lost" by the worker
  const v1::HeartbeatResponse again = Beat("w1");
  ASSERT_EQ(again.assignments_size(), 1);
  EXPECT_EQ(again.assignments(0).job_id(), id);
  EXPECT_EQ(again.assignments(0).master_port(), first.assignments(0).master_port());
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
}

TEST_F(CoordinatorCore, ALeaseIsKeptForItsLengthAndLostOneMillisecondAfter) {
  Start();
  const std::string id = Submit(1, 1);
  Register("w1", 1);
  const v1::TaskRef t = StartAssigned("w1");
  Advance(kLease);
  core_->Tick();
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::READY);
  Advance(absl::Milliseconds(1));
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::LOST);
  const v1::Job requeued = Get(id);
  EXPECT_EQ(requeued.state(), v1::QUEUED);
  EXPECT_THAT(requeued.message(), HasSubstr("worker w1 lost"));
  // A heartbeat from the lost worker is told to register again; its late
  // exit report of the old attempt changes nothing.
  EXPECT_TRUE(Beat("w1", {t}).reregister());
  Exit("w1", t, kExitOk);
  EXPECT_EQ(Get(id).state(), v1::QUEUED);
  Register("w2", 1);
  const v1::TaskRef t2 = StartAssigned("w2");
  EXPECT_EQ(t2.attempt(), 2);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
}

// Issue 29 item 4: a stall of the coordinator itself (the state lock held by
// a slow commit or a long pass, so heartbeats queue behind it) is not a
// worker's silence. Leases count only serving time: three leases under the
// lock lose nobody, and a worker that then really stays silent is lost one
// lease (of serving time) later, not never.
TEST_F(CoordinatorCore, ALeaseDoesNotRunWhileTheStateLockIsHeld) {
  Start();
  const std::string id = Submit(1, 1);
  Register("w1", 1);
  StartAssigned("w1");
  CoordinatorTestPeer::WithStateLock(*core_, [&] { Advance(3 * kLease); });
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::READY);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  Advance(kLease);
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::READY);
  Advance(absl::Milliseconds(1));
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::LOST);
  EXPECT_THAT(Get(id).message(), HasSubstr("worker w1 lost"));
}

// The same stall from the database: another connection holds the write
// lock (a backup, an admin's sqlite3), so a CancelJob's commit waits out the
// busy timeout holding the state lock, and fake time runs meanwhile (6 s per
// look at the clock from that thread). The cancel fails, nothing changes,
// and the running worker is not lost.
// But short holds (shorter than a heartbeat interval: heartbeats renew
// their lease apart from the lock then) are serving time: under steady
// contention a dead worker is still lost after one lease.
TEST_F(CoordinatorCore, ShortHoldsOfTheStateLockDoNotHideADeadWorker) {
  Start();
  const std::string id = Submit(1, 1);
  Register("w1", 1);
  StartAssigned("w1");
  for (int i = 0; i < 21; ++i) {  // 21 holds of 0.5 s: 10.5 s without a heartbeat
    CoordinatorTestPeer::WithStateLock(*core_, [&] { Advance(absl::Milliseconds(500)); });
  }
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::LOST);
  EXPECT_THAT(Get(id).message(), HasSubstr("worker w1 lost"));
}

TEST_F(CoordinatorCore, ALeaseDoesNotRunWhileACommitWaitsForALockedDatabase) {
  Start();
  const std::string id = Submit(1, 1);
  Register("w1", 1);
  StartAssigned("w1");
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "retina.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  const int64_t before = now_ms_.load();
  std::thread cancel([&] {
    slow_thread_ = std::this_thread::get_id();
    slow_step_ms_ = absl::ToInt64Milliseconds(kLease) * 3 / 5;
    absl::StatusOr<v1::Job> r = core_->Cancel(id);
    EXPECT_FALSE(r.ok());
    slow_thread_ = std::thread::id();
  });
  cancel.join();
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  ASSERT_GT(now_ms_.load() - before, absl::ToInt64Milliseconds(kLease)) << "the stall outlasted a lease";
  core_->Tick();
  EXPECT_EQ(core_->Workers().workers(0).state(), v1::WorkerInfo::READY);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_FALSE(Get(id).cancel_requested());
}

TEST_F(CoordinatorCore, HeartbeatsRenewTheLease) {
  Start();
  const std::string id = Submit(1, 0);
  Register("w1", 1);
  const v1::TaskRef t = StartAssigned("w1");
  for (int i = 0; i < 5; ++i) {  // 5 x 8 s = 40 s, four leases, never 10 s silent
    Advance(absl::Seconds(8));
    Beat("w1", {t});
    core_->Tick();
  }
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
}

// A failed job's message carries the cause: the first error line of the rank
// that failed saying why (the others were stopped because of it), bounded,
// with anything unprintable a worker sent replaced.
TEST_F(CoordinatorCore, AFailedJobsMessageCarriesTheFailingRanksFirstErrorLine) {
  Start();
  const std::string id = Submit(2, 0);
  Register("w1", 2);
  const v1::TaskRef t = StartAssigned("w1");
  ASSERT_EQ(t.ranks_size(), 2);
  v1::CompleteTaskRequest r;
  r.set_worker_id("w1");
  r.set_job_id(t.job_id());
  r.set_attempt(t.attempt());
  v1::RankExit* stopped = r.add_exits();  // rank 0: stopped by the worker after rank 1 failed
  stopped->set_rank(0);
  stopped->set_exit_code(143);
  v1::RankExit* cause = r.add_exits();
  cause->set_rank(1);
  cause->set_exit_code(1);
  cause->set_first_error("retina-train: infer.inputs[0]: /x is outside the store\x1b[0m" + std::string(1000, 'y'));
  ASSERT_TRUE(core_->CompleteTask(r).ok());
  const v1::Job job = Get(id);
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_THAT(job.message(), HasSubstr("rank 1 exited with code 1 on w1: retina-train: infer.inputs[0]: /x is outside the store?[0m"));
  EXPECT_THAT(job.message(), HasSubstr("retina logs " + id + " --rank 1"));
  EXPECT_LT(job.message().size(), 700u);
}

// An attempt whose rank failed because the gang did (its first error line
// carries a common/gang_failure.h tag) counts under that cause in
// retina_gang_failures_total; a rank failing on its own (bad input) counts
// nowhere there.
TEST_F(CoordinatorCore, GangFailuresAreCountedByTheCauseTheFailingRankNamed) {
  CoordinatorMetrics metrics("test");
  metrics_ = &metrics;
  Start();
  auto count = [&](const std::string& cause) {
    for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
      if (f.name != "retina_gang_failures_total") continue;
      for (const prometheus::ClientMetric& m : f.metric) {
        for (const prometheus::ClientMetric::Label& l : m.label) {
          if (l.name == "cause" && l.value == cause) return m.counter.value;
        }
      }
    }
    return -1.0;
  };
  EXPECT_EQ(count("collective_timeout"), 0) << "every cause is exported from the start";
  EXPECT_EQ(count("peer_failed"), 0);
  const struct {
    std::string first_error;
    const char* cause;
  } cases[] = {
      {"E1207 rank=0 x.cc:1] gang failure (collective_timeout): rank 0 on 198.18.0.2: all-reduce #7 (gradient "
       "bucket 0): rank 1 on 198.18.0.3 never arrived",
       "collective_timeout"},
      {"E1207 rank=1 x.cc:1] data.dataset: /s/absent: no such dataset", nullptr},
  };
  for (const auto& c : cases) {
    const std::string id = Submit(1, 0);
    Register("w1", 1);
    const v1::TaskRef t = StartAssigned("w1");
    v1::CompleteTaskRequest r;
    r.set_worker_id("w1");
    r.set_job_id(t.job_id());
    r.set_attempt(t.attempt());
    v1::RankExit* x = r.add_exits();
    x->set_rank(0);
    x->set_exit_code(1);
    x->set_first_error(c.first_error);
    ASSERT_TRUE(core_->CompleteTask(r).ok());
    EXPECT_EQ(Get(id).state(), v1::FAILED);
    EXPECT_THAT(Get(id).message(), HasSubstr(c.first_error.substr(c.first_error.find(']') + 2)));
  }
  EXPECT_EQ(count("collective_timeout"), 1);
  EXPECT_EQ(count("peer_failed"), 0);
  core_.reset();
}

// Priority preemption (issue 32): a higher-priority job that cannot be
// placed stops a lower-priority running job once that one has run its
// minimum time (not before). The victim gets a stop (SIGTERM: its ranks
// checkpoint and exit 75), is requeued without using a restart (it has
// none), the preemptor runs, then the victim's next attempt.
TEST_F(CoordinatorCore, AHigherPriorityJobPreemptsALowerOneOnlyAfterItsMinimumRunAndUsesNoRestart) {
  preempt_min_run_ = absl::Seconds(20);
  CoordinatorMetrics metrics("test");
  metrics_ = &metrics;
  Start();
  Register("w1", 2);
  const std::string low = Submit(2, /*max_restarts=*/0);
  const v1::TaskRef t = StartAssigned("w1");
  ASSERT_EQ(Get(low).state(), v1::RUNNING);
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(kPretrain);
  r.mutable_spec()->set_world_size(2);
  r.mutable_spec()->set_priority(5);
  absl::StatusOr<v1::Job> submitted = core_->Submit(r, "bob");
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string high = submitted->id();
  // Under its minimum run: no stop, however many passes.
  for (int i = 0; i < 3; ++i) {
    Advance(absl::Seconds(5));
    core_->Tick();
    EXPECT_EQ(Beat("w1", {t}).stop_size(), 0) << "preempted after " << 5 * (i + 1) << " s";
  }
  Advance(absl::Seconds(6));
  core_->Tick();
  const v1::HeartbeatResponse hb = Beat("w1", {t});
  ASSERT_EQ(hb.stop_size(), 1);
  EXPECT_EQ(hb.stop(0).job_id(), low);
  Exit("w1", t, kExitPreempted, /*stopped=*/true);
  v1::Job victim = Get(low);
  EXPECT_EQ(victim.state(), v1::QUEUED) << victim.message();
  EXPECT_EQ(victim.preemptions(), 1);
  EXPECT_THAT(victim.message(), HasSubstr("attempt 1 preempted: " + high + " (priority 5) needed its slots"));
  const v1::TaskRef h = StartAssigned("w1");
  EXPECT_EQ(h.job_id(), high);
  Exit("w1", h, 0);
  EXPECT_EQ(Get(high).state(), v1::SUCCEEDED);
  const v1::TaskRef again = StartAssigned("w1");
  EXPECT_EQ(again.job_id(), low);
  EXPECT_EQ(again.attempt(), 2);
  Exit("w1", again, 0);
  EXPECT_EQ(Get(low).state(), v1::SUCCEEDED);
  double preemptions = -1;
  for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
    if (f.name == "retina_preemptions_total") preemptions = f.metric.at(0).counter.value;
  }
  EXPECT_EQ(preemptions, 1);
  core_.reset();
}

// Elastic gangs (issue 32): a job of 4 ranks, minimum 2, over two 2-slot
// workers. When w2 is lost the attempt fails and the job restarts at once
// on the 2 ranks left (accumulation 2) instead of waiting; when w2 returns
// the job grows back to 4, but only after its attempt ran --elastic-grow-
// after (no thrashing): a stop (checkpoint, exit 75) that uses no restart.
// Every assignment carries the full size and minimum (RETINA_ELASTIC).
TEST_F(CoordinatorCore, AnElasticJobShrinksWhenAWorkerIsLostAndGrowsBackAfterTheInterval) {
  grow_after_ = absl::Seconds(30);
  CoordinatorMetrics metrics("test");
  metrics_ = &metrics;
  Start();
  Register("w1", 2);
  Register("w2", 2);
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(kPretrain);
  r.mutable_spec()->set_world_size(4);
  r.mutable_spec()->set_min_world_size(2);
  r.mutable_spec()->set_max_restarts(1);
  absl::StatusOr<v1::Job> submitted = core_->Submit(r, "alice");
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = submitted->id();
  core_->Tick();
  const v1::HeartbeatResponse h1 = Beat("w1"), h2 = Beat("w2");
  ASSERT_EQ(h1.assignments_size(), 1);
  ASSERT_EQ(h2.assignments_size(), 1);
  for (const v1::Assignment& a : {h1.assignments(0), h2.assignments(0)}) {
    EXPECT_EQ(a.world_size(), 4);
    EXPECT_EQ(a.full_world_size(), 4);
    EXPECT_EQ(a.min_world_size(), 2);
  }
  const v1::TaskRef t1 = Running(h1.assignments(0)), t2 = Running(h2.assignments(0));
  Beat("w1", {t1});
  Beat("w2", {t2});
  core_->Tick();
  ASSERT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_EQ(Get(id).attempt_world_size(), 4);
  // w2 goes silent: lost after its lease; w1 is told to stop its part.
  bool stopped = false;
  for (int i = 0; i < 8 && !stopped; ++i) {
    Advance(absl::Seconds(2));
    core_->Tick();
    stopped = Beat("w1", {t1}).stop_size() == 1;
  }
  ASSERT_TRUE(stopped);
  Exit("w1", t1, 128 + SIGTERM, /*stopped=*/true);
  ASSERT_EQ(Get(id).state(), v1::QUEUED) << Get(id).message();
  // At once on the 2 ranks left, not waiting for 4.
  core_->Tick();
  const v1::HeartbeatResponse small = Beat("w1");
  ASSERT_EQ(small.assignments_size(), 1);
  EXPECT_EQ(small.assignments(0).world_size(), 2);
  EXPECT_EQ(small.assignments(0).full_world_size(), 4);
  const v1::TaskRef t3 = Running(small.assignments(0));
  Beat("w1", {t3});
  core_->Tick();
  v1::Job job = Get(id);
  EXPECT_EQ(job.state(), v1::RUNNING);
  EXPECT_EQ(job.attempt_world_size(), 2);
  EXPECT_EQ(job.resizes(), 1);
  EXPECT_THAT(job.message(), HasSubstr("resized: 4 -> 2 ranks, accumulation 1 -> 2"));
  // w2 returns; no growth before the attempt ran 30 s.
  Register("w2", 2);
  for (int i = 0; i < 5; ++i) {
    Advance(absl::Seconds(5));
    core_->Tick();
    Beat("w2");
    EXPECT_EQ(Beat("w1", {t3}).stop_size(), 0) << "grew after " << 5 * (i + 1) << " s";
  }
  Advance(absl::Seconds(6));
  core_->Tick();
  ASSERT_EQ(Beat("w1", {t3}).stop_size(), 1);
  Exit("w1", t3, kExitPreempted, /*stopped=*/true);
  job = Get(id);
  EXPECT_EQ(job.state(), v1::QUEUED) << job.message();
  EXPECT_EQ(job.grow_stops(), 1);
  EXPECT_THAT(job.message(), HasSubstr("attempt 2 stopped to grow: 2 -> 4 ranks"));
  core_->Tick();
  const v1::HeartbeatResponse g1 = Beat("w1"), g2 = Beat("w2");
  ASSERT_EQ(g1.assignments_size(), 1);
  ASSERT_EQ(g2.assignments_size(), 1);
  EXPECT_EQ(g1.assignments(0).world_size(), 4);
  const v1::TaskRef t4 = Running(g1.assignments(0)), t5 = Running(g2.assignments(0));
  Beat("w1", {t4});
  Beat("w2", {t5});
  core_->Tick();
  job = Get(id);
  EXPECT_EQ(job.attempt_world_size(), 4);
  EXPECT_EQ(job.resizes(), 2);
  EXPECT_THAT(job.message(), HasSubstr("resized: 2 -> 4 ranks, accumulation 2 -> 1"));
  // The failure used the one restart; the growth none: success still counts.
  Exit("w1", t4, 0);
  Exit("w2", t5, 0);
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED) << Get(id).message();
  std::map<std::string, double> resizes;
  for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
    if (f.name != "retina_resizes_total") continue;
    for (const auto& m : f.metric) resizes[m.label.at(0).value] = m.counter.value;
  }
  EXPECT_EQ(resizes["shrink"], 1);
  EXPECT_EQ(resizes["grow"], 1);
  core_.reset();
}

// A min_world_size that does not divide world_size, or an elastic job of a
// kind that is not training, is refused naming the field.
TEST_F(CoordinatorCore, ElasticSpecsAreChecked) {
  Start();
  for (const auto& [world, min, yaml, what] :
       std::vector<std::tuple<int, int, std::string, std::string>>{
           {4, 3, kPretrain, "spec.min_world_size: must divide world_size 4"},
           {4, 8, kPretrain, "spec.min_world_size: must divide world_size 4"}}) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_config_yaml(yaml);
    r.mutable_spec()->set_world_size(world);
    r.mutable_spec()->set_min_world_size(min);
    absl::StatusOr<v1::Job> job = core_->Submit(r, "alice");
    ASSERT_FALSE(job.ok());
    EXPECT_THAT(std::string(job.status().message()), HasSubstr(what));
  }
}

// A job at equal priority, or one marked preemptible: false, is never
// stopped for another.
TEST_F(CoordinatorCore, EqualPriorityAndNonPreemptibleJobsAreNeverPreempted) {
  preempt_min_run_ = absl::ZeroDuration();
  Start();
  Register("w1", 2);
  v1::SubmitJobRequest pinned;
  pinned.mutable_spec()->set_config_yaml(kPretrain);
  pinned.mutable_spec()->set_world_size(2);
  (*pinned.mutable_spec()->mutable_labels())["preemptible"] = "false";
  ASSERT_TRUE(core_->Submit(pinned, "alice").ok());
  const v1::TaskRef t = StartAssigned("w1");
  for (int priority : {0, 9}) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_config_yaml(kPretrain);
    r.mutable_spec()->set_world_size(2);
    r.mutable_spec()->set_priority(priority);
    ASSERT_TRUE(core_->Submit(r, "bob").ok());
    Advance(absl::Seconds(1));
    core_->Tick();
    EXPECT_EQ(Beat("w1", {t}).stop_size(), 0) << "priority " << priority;
  }
}

TEST_F(CoordinatorCore, RestartsAreCountedThenTheJobFails) {
  struct Case {
    int max_restarts;
    int exit_code;
    std::vector<v1::JobState> after_each_exit;
    const char* last_message;
  };
  const std::vector<Case> cases = {
      {0, 1, {v1::FAILED}, "exited with code 1"},
      {1, 1, {v1::QUEUED, v1::FAILED}, "no restarts left"},
      {2, kExitPreempted, {v1::QUEUED, v1::QUEUED, v1::FAILED}, "preempted"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "max_restarts " << c.max_restarts << ", exit " << c.exit_code);
    Fresh();
    Start();
    const std::string id = Submit(1, c.max_restarts);
    Register("w1", 1);
    for (size_t k = 0; k < c.after_each_exit.size(); ++k) {
      const v1::TaskRef t = StartAssigned("w1");
      EXPECT_EQ(t.attempt(), static_cast<int>(k) + 1);
      Exit("w1", t, c.exit_code);
      EXPECT_EQ(Get(id).state(), c.after_each_exit[k]) << "after attempt " << k + 1;
    }
    EXPECT_THAT(Get(id).message(), HasSubstr(c.last_message));
  }
}

TEST_F(CoordinatorCore, CancelStopsRunningRanksThroughHeartbeats) {
  Start();
  const std::string id = Submit(2, 3);
  Register("w1", 2);
  const v1::TaskRef t = StartAssigned("w1");
  absl::StatusOr<v1::Job> cancelled = core_->Cancel(id);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_TRUE(cancelled->cancel_requested());
  EXPECT_EQ(cancelled->state(), v1::RUNNING);  // until the ranks have stopped
  const v1::HeartbeatResponse hb = Beat("w1", {t});
  ASSERT_EQ(hb.stop_size(), 1);
  EXPECT_EQ(hb.stop(0).job_id(), id);
  // A job queued behind it (the slots are busy) is cancelled at once.
  const std::string queued = Submit(2, 0);
  EXPECT_EQ(Get(queued).state(), v1::QUEUED);
  EXPECT_EQ(core_->Cancel(queued)->state(), v1::CANCELLED);
  Exit("w1", t, kExitPreempted, /*stopped=*/true);
  EXPECT_EQ(Get(id).state(), v1::CANCELLED);  // not requeued, whatever max_restarts says
  core_->Tick();
  EXPECT_EQ(Get(queued).state(), v1::CANCELLED);  // and stays so when slots free up
}

TEST_F(CoordinatorCore, AGangWaitsForEverySlotThenSpansWorkers) {
  Start();
  const std::string id = Submit(3, 0);  // (with 2 slots ready it would be refused: it could never run)
  Register("w1", 2);
  core_->Tick();
  EXPECT_EQ(Get(id).state(), v1::QUEUED);  // 2 of 3 slots: nothing is placed
  EXPECT_EQ(Beat("w1").assignments_size(), 0);
  Register("w2", 1);
  core_->Tick();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  const v1::TaskRef a = StartAssigned("w1"), b = StartAssigned("w2");
  EXPECT_EQ(a.ranks_size() + b.ranks_size(), 3);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);  // both parts confirmed
  Exit("w1", a, kExitOk);
  EXPECT_EQ(Get(id).state(), v1::RUNNING);  // w2's rank still runs
  Exit("w2", b, kExitOk);
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED);
}

TEST_F(CoordinatorCore, AfterARestartRanksThatReattachGoOnAndAJobWithoutThemIsRequeued) {
  Start();
  const std::string kept = Submit(1, 1), lost = Submit(1, 1);
  Register("w1", 1);
  Register("w2", 1);
  const v1::TaskRef tk = StartAssigned("w1");
  const v1::TaskRef tl = StartAssigned("w2");
  ASSERT_EQ(tk.job_id(), kept);
  ASSERT_EQ(tl.job_id(), lost);
  Start();  // the coordinator restarts over the same database
  EXPECT_EQ(Get(kept).state(), v1::RUNNING);
  EXPECT_EQ(Get(lost).state(), v1::RUNNING);
  Register("w1", 1, {tk});  // w1 comes back with its rank; w2 never does
  Advance(2 * kLease - absl::Milliseconds(1));
  Beat("w1", {tk});
  core_->Tick();
  EXPECT_EQ(Get(lost).state(), v1::RUNNING);  // still within the two leases
  Advance(absl::Milliseconds(1));
  core_->Tick();
  EXPECT_EQ(Get(kept).state(), v1::RUNNING);
  EXPECT_EQ(Get(lost).state(), v1::QUEUED);
  EXPECT_THAT(Get(lost).message(), HasSubstr("re-attached after a coordinator restart"));
  Exit("w1", tk, kExitOk);
  EXPECT_EQ(Get(kept).state(), v1::SUCCEEDED);
}

// Why an attempt is being stopped is committed before the stop goes out
// (Job.stopping): a coordinator restarted before the victim's ranks exit
// still ends the attempt as a preemption (requeued, no restart used; this
// job has none), not as a failure.
TEST_F(CoordinatorCore, APreemptionSurvivesACoordinatorRestartBeforeTheVictimExits) {
  preempt_min_run_ = absl::ZeroDuration();
  Start();
  Register("w1", 1);
  const std::string low = Submit(1, /*max_restarts=*/0);
  const v1::TaskRef t = StartAssigned("w1");
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_config_yaml(kPretrain);
  r.mutable_spec()->set_priority(5);
  ASSERT_TRUE(core_->Submit(r, "bob").ok());
  core_->Tick();
  ASSERT_EQ(Beat("w1", {t}).stop_size(), 1);
  EXPECT_THAT(Get(low).stopping(), HasSubstr("preempted: "));
  Start();  // the coordinator restarts over the same database
  Register("w1", 1, {t});
  Exit("w1", t, kExitPreempted, /*stopped=*/true);
  Advance(2 * kLease);  // the end of the recovery window ends the re-attached attempt
  Beat("w1");
  core_->Tick();
  const v1::Job victim = Get(low);
  EXPECT_EQ(victim.state(), v1::QUEUED) << victim.message();
  EXPECT_EQ(victim.preemptions(), 1);
  EXPECT_EQ(victim.stopping(), "");
}

}  // namespace
}  // namespace retina::coordinator
