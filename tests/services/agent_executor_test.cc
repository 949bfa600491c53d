// The worker-agent executor (services/coordinator/agent_executor.h) alone,
// over a job table: its placement is planned without the state lock and
// applied under it, so what changed in between (a worker lost, a job
// cancelled) must be seen when the plan is applied. The test's
// ExecutorContext::locked runs the change between the two holds.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "services/coordinator/agent_executor.h"

namespace retina::coordinator {
namespace {

namespace fs = std::filesystem;

class AgentExecutorPlan : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("agent-executor-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "store");
    absl::StatusOr<std::unique_ptr<JobTable>> t =
        JobTable::Open({dir_ / "jobs.db", "normal", dir_ / "store", false}, &hub_, nullptr, now_);
    ASSERT_TRUE(t.ok()) << t.status();
    table_ = std::move(*t);
    ExecutorContext ctx;
    ctx.jobs = table_.get();
    ctx.now_ms = [this] { return now_; };
    ctx.locked = [this](const std::function<void()>& fn) {
      if (++holds_ == 2 && between_) between_();  // after the plan, before it is applied
      fn();
    };
    AgentOptions o;
    o.lease = absl::Seconds(10);
    agents_ = std::make_unique<AgentExecutor>(o, ctx, &serving_, now_);
  }
  void TearDown() override {
    agents_.reset();
    table_.reset();
    fs::remove_all(dir_);
  }
  void Register(const std::string& worker, int slots) {
    v1::RegisterWorkerRequest r;
    r.set_worker_id(worker);
    r.set_host(worker + ".cluster");
    r.set_slots(slots);
    agents_->Register(r, now_);
  }
  std::string Queue(int world) {
    v1::Job job;
    const int64_t seq = table_->TakeSeq();
    job.set_id("job-" + std::to_string(seq));
    job.set_state(v1::QUEUED);
    job.mutable_spec()->set_world_size(world);
    absl::StatusOr<JobEntry*> e = table_->Insert(seq, job);
    EXPECT_TRUE(e.ok()) << e.status();
    return job.id();
  }
  // One placement pass, `between` run after its plan and before its apply.
  void Pass(std::function<void()> between = nullptr) {
    holds_ = 0;
    between_ = std::move(between);
    agents_->Poll();
    between_ = nullptr;
  }
  int Assigned(const std::string& worker) {
    v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    return agents_->Heartbeat(r, now_).assignments_size();
  }

  fs::path dir_;
  int64_t now_ = 1'700'000'000'000;
  WatchHub hub_;
  NotServingLog serving_;
  std::unique_ptr<JobTable> table_;
  std::unique_ptr<AgentExecutor> agents_;
  int holds_ = 0;
  std::function<void()> between_;
};

TEST_F(AgentExecutorPlan, AWorkerLostAfterThePlanIsNotAssignedTheJob) {
  Register("w1", 2);
  const std::string id = Queue(2);
  Pass([&] {
    now_ += 11'000;  // w1 misses its lease while the plan is made
    agents_->Tick(now_);
  });
  EXPECT_EQ(table_->Get(id)->job.state(), v1::QUEUED);
  EXPECT_EQ(table_->Get(id)->job.attempt(), 0);
  Register("w2", 2);
  Pass();
  EXPECT_EQ(table_->Get(id)->job.state(), v1::SCHEDULED);
  EXPECT_EQ(table_->Get(id)->job.placement(0).worker_id(), "w2");
  EXPECT_EQ(Assigned("w2"), 1);
}

TEST_F(AgentExecutorPlan, AJobCancelledAfterThePlanIsNotPlacedAndTheQueueBehindItWaits) {
  Register("w1", 2);
  const std::string first = Queue(1), second = Queue(1);
  Pass([&] {
    JobEntry* e = table_->Get(first);
    v1::Job next = e->job;
    next.set_state(v1::CANCELLED);
    ASSERT_TRUE(table_->Commit(e, next).ok());
  });
  EXPECT_EQ(table_->Get(first)->job.state(), v1::CANCELLED);
  EXPECT_EQ(table_->Get(second)->job.state(), v1::QUEUED);  // the next pass, in order
  EXPECT_EQ(Assigned("w1"), 0);
  Pass();
  EXPECT_EQ(table_->Get(second)->job.state(), v1::SCHEDULED);
  EXPECT_EQ(Assigned("w1"), 1);
}

TEST_F(AgentExecutorPlan, APassThatPlacedNothingRunsAgainOnceSlotsAreFreed) {
  Register("w1", 1);
  const std::string big = Queue(2);
  Pass();
  EXPECT_EQ(table_->Get(big)->job.state(), v1::QUEUED);
  Pass();  // nothing changed: not planned again
  EXPECT_EQ(holds_, 1);
  Register("w2", 1);  // slots freed: planned again, and placed
  Pass();
  EXPECT_EQ(table_->Get(big)->job.state(), v1::SCHEDULED);
}

}  // namespace
}  // namespace retina::coordinator
