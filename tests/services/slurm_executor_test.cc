// The Slurm executor (services/coordinator/slurm_executor.h) in process, over
// an in-memory Slurm (fake_slurm.h) on a fake clock: every Slurm-like path of
// the coordinator without a Slurm cluster (tests/deploy/slurm_service_test.sh
// runs the same executor against a real one). Each Poll() below is one
// scontrol poll interval of the coordinator.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/records.h"
#include "services/coordinator/coordinator.h"
#include "tests/services/fake_slurm.h"

namespace retina::coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kPretrain[] = "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
                             "pretrain: {epochs: 1, global_batch: 12}\n";

class SlurmExecutorCore : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("slurm-core-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "store/datasets/em");
    ASSERT_TRUE(WriteFileAtomic(dir_ / "store/datasets/em/manifest.json", "{}").ok());
    Start();
  }
  void TearDown() override {
    core_.reset();
    fs::remove_all(dir_);
  }
  // A coordinator over this test's database, store and Slurm (a restart when
  // called again).
  void Start() {
    core_.reset();
    CoordinatorOptions o;
    o.database = dir_ / "retina.db";
    o.store = dir_ / "store";
    o.executor = CoordinatorOptions::Executor::kSlurm;
    o.slurm.poll = absl::Seconds(2);
    o.slurm_client = [this] { return slurm_.Client(); };
    o.clock_ms = [this] { return now_ms_.load(); };
    o.background_tick = false;
    absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Create(o, nullptr);
    ASSERT_TRUE(c.ok()) << c.status();
    core_ = std::move(*c);
  }
  // One poll interval later, a tick.
  void Poll() {
    now_ms_ += 2000;
    core_->Tick();
  }
  std::string Submit(int max_restarts) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_config_yaml(kPretrain);
    r.mutable_spec()->set_world_size(2);
    r.mutable_spec()->set_max_restarts(max_restarts);
    absl::StatusOr<v1::Job> job = core_->Submit(r, "alice");
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? job->id() : "";
  }
  v1::Job Get(const std::string& id) { return *core_->Get(id); }
  // A job submitted, and RUNNING as Slurm job *sid.
  std::string SubmitRunning(int max_restarts, std::string* sid) {
    const std::string id = Submit(max_restarts);
    Poll();
    *sid = SlurmIdOf(id, 1);
    slurm_.SetState(*sid, "RUNNING");
    Poll();
    EXPECT_EQ(Get(id).state(), v1::RUNNING);
    return id;
  }
  // The Slurm job of our job's attempt.
  std::string SlurmIdOf(const std::string& id, int attempt) {
    for (const FakeSlurm::Job& j : slurm_.Jobs()) {
      if (j.info.name == SlurmJobName(id, attempt)) return j.info.slurm_id;
    }
    ADD_FAILURE() << "no Slurm job for " << id << " attempt " << attempt;
    return "";
  }

  fs::path dir_;
  FakeSlurm slurm_;
  std::atomic<int64_t> now_ms_{1'700'000'000'000};
  std::unique_ptr<Coordinator> core_;
};

TEST_F(SlurmExecutorCore, ASlurmJobGoesSubmittedRunningSucceededWithRank0sEvents) {
  const std::string id = Submit(0);
  EXPECT_EQ(Get(id).state(), v1::QUEUED);
  Poll();
  ASSERT_EQ(slurm_.Jobs().size(), 1u);
  const std::string sid = SlurmIdOf(id, 1);
  EXPECT_EQ(slurm_.Get(sid).attempt.world_size, 2);
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  EXPECT_EQ(Get(id).executor_job_id(), sid);
  EXPECT_THAT(Get(id).message(), HasSubstr("submitted as Slurm job " + sid));
  slurm_.SetState(sid, "RUNNING");
  // Rank 0's events reach the job through the store, as a worker's reports do.
  ASSERT_TRUE(WriteFileAtomic(dir_ / "store/jobs" / id / "events.jsonl",
                              EncodeEvent(StartEvent{0, 10}, 1) + "\n" + EncodeEvent(StepEvent{4, 0, 0.5}, 2) + "\n")
                  .ok());
  Poll();
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  EXPECT_EQ(Get(id).progress().step(), 4);
  EXPECT_EQ(Get(id).progress().total_steps(), 10);
  slurm_.SetState(sid, "COMPLETED");
  Poll();
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED);
  EXPECT_EQ(slurm_.Jobs().size(), 1u);  // nothing submitted again
}

TEST_F(SlurmExecutorCore, ARequeueBySlurmIsANewAttemptOfTheSameSlurmJob) {
  std::string sid;
  const std::string id = SubmitRunning(0, &sid);
  slurm_.Requeue(sid);  // a preemption: Slurm runs the same job again
  Poll();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  EXPECT_EQ(Get(id).attempt(), 2);
  EXPECT_THAT(Get(id).message(), HasSubstr("requeued by Slurm (restart 1 of Slurm job " + sid));
  slurm_.SetState(sid, "RUNNING");
  Poll();
  slurm_.SetState(sid, "COMPLETED");
  Poll();
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED);
  EXPECT_EQ(Get(id).attempt(), 2);
  EXPECT_EQ(slurm_.Jobs().size(), 1u);  // no sbatch of its own: Slurm's restart is the attempt
}

TEST_F(SlurmExecutorCore, AFailedAttemptIsSubmittedAgainWhileRestartsAreLeftThenTheJobFails) {
  const std::string id = Submit(1);
  std::vector<std::string> seen;  // every transition, as a watcher sees it
  ASSERT_TRUE(core_->Watch(id, [&](std::shared_ptr<const v1::JobEvent> e, bool) {
                     seen.push_back(absl::StrCat(v1::JobState_Name(e->job().state()), " ", e->job().attempt(), ": ",
                                                 e->job().message()));
                   }).ok());
  Poll();
  slurm_.SetState(SlurmIdOf(id, 1), "FAILED", 3);
  // The one rule (attempt_rule.h): requeued, and the same poll submits attempt 2.
  Poll();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  EXPECT_EQ(Get(id).attempt(), 2);
  EXPECT_THAT(seen, ::testing::Contains(HasSubstr("QUEUED 1: attempt 1 failed: Slurm job")));
  EXPECT_THAT(seen, ::testing::Contains(HasSubstr("exit code 3; requeued")));
  slurm_.SetState(SlurmIdOf(id, 2), "FAILED", 1);
  Poll();
  EXPECT_EQ(Get(id).state(), v1::FAILED);
  EXPECT_THAT(Get(id).message(), HasSubstr("no restarts left"));
  EXPECT_EQ(slurm_.Jobs().size(), 2u);
}

TEST_F(SlurmExecutorCore, CancelIssuesScancelAndTheJobEndsWhenSlurmSaysSo) {
  std::string sid;
  const std::string id = SubmitRunning(3, &sid);
  ASSERT_TRUE(core_->Cancel(id).ok());
  EXPECT_EQ(Get(id).state(), v1::RUNNING);  // until Slurm has ended it
  core_->Tick();                            // a cancel does not wait for the poll interval
  EXPECT_EQ(slurm_.Get(sid).cancels, 1);
  Poll();
  EXPECT_EQ(Get(id).state(), v1::CANCELLED);  // not requeued, whatever max_restarts says
  EXPECT_THAT(Get(id).message(), HasSubstr("scancel of Slurm job " + sid));
  Poll();
  EXPECT_EQ(slurm_.Get(sid).cancels, 1);  // once
}

TEST_F(SlurmExecutorCore, ACancelFromOutsideTheServiceEndsTheJobCancelled) {
  const std::string id = Submit(3);
  Poll();
  slurm_.SetState(SlurmIdOf(id, 1), "CANCELLED");  // scancel by an administrator
  Poll();
  EXPECT_EQ(Get(id).state(), v1::CANCELLED);
  EXPECT_THAT(Get(id).message(), HasSubstr("cancelled outside the service"));
}

TEST_F(SlurmExecutorCore, AnSbatchWhoseAnswerWasLostIsFoundByNameNotSubmittedTwice) {
  const std::string id = Submit(0);
  slurm_.LoseNextSbatchAnswer();  // Slurm queued it; sbatch timed out
  Poll();
  EXPECT_EQ(Get(id).state(), v1::QUEUED);
  ASSERT_EQ(slurm_.Jobs().size(), 1u);
  Poll();  // the listing shows retina-<id>-1: re-attached
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  EXPECT_THAT(Get(id).message(), HasSubstr("re-attached to Slurm job " + SlurmIdOf(id, 1)));
  EXPECT_EQ(slurm_.Jobs().size(), 1u);
}

TEST_F(SlurmExecutorCore, ARefusedSubmissionFailsTheAttempt) {
  const std::string id = Submit(0);
  slurm_.Refuse("error: invalid partition specified: gpu");
  Poll();
  EXPECT_EQ(Get(id).state(), v1::FAILED);
  EXPECT_THAT(Get(id).message(), HasSubstr("invalid partition specified: gpu"));
}

TEST_F(SlurmExecutorCore, ACoordinatorRestartFollowsItsSlurmJobsAgain) {
  std::string sid;
  const std::string id = SubmitRunning(0, &sid);
  Start();  // the coordinator restarts over the same database
  EXPECT_EQ(Get(id).state(), v1::RUNNING);
  slurm_.SetState(sid, "COMPLETED");
  Poll();
  EXPECT_EQ(Get(id).state(), v1::SUCCEEDED);
  EXPECT_EQ(slurm_.Jobs().size(), 1u);
}

TEST_F(SlurmExecutorCore, WhileSlurmDoesNotAnswerNothingIsSubmittedAndAPurgedJobFailsAfterThreePolls) {
  const std::string id = Submit(0);
  slurm_.Answering(false);
  Poll();
  Poll();
  EXPECT_EQ(Get(id).state(), v1::QUEUED);  // without a listing an sbatch could duplicate a lost one
  EXPECT_TRUE(slurm_.Jobs().empty());
  slurm_.Answering(true);
  // The poll interval has backed off (up to max_poll, 30 s): a poll of that.
  const auto long_poll = [&] {
    now_ms_ += 30000;
    core_->Tick();
  };
  long_poll();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  slurm_.Purge(SlurmIdOf(id, 1));  // ended and forgotten (MinJobAge) between two polls
  long_poll();
  long_poll();
  EXPECT_EQ(Get(id).state(), v1::SCHEDULED);
  long_poll();
  EXPECT_EQ(Get(id).state(), v1::FAILED);
  EXPECT_THAT(Get(id).message(), HasSubstr("no longer known to Slurm"));
}

TEST_F(SlurmExecutorCore, WorkerAgentsAreRefusedWhenAttemptsRunOnSlurm) {
  v1::RegisterWorkerRequest r;
  r.set_worker_id("w1");
  r.set_host("w1.cluster");
  r.set_slots(1);
  absl::StatusOr<v1::RegisterWorkerResponse> out = core_->RegisterWorker(r);
  EXPECT_TRUE(absl::IsFailedPrecondition(out.status())) << out.status();
  EXPECT_THAT(out.status().message(), HasSubstr("Slurm"));
}

}  // namespace
}  // namespace retina::coordinator
