// The one rule for an ended attempt (services/coordinator/attempt_rule.h),
// which the worker-agent and Slurm paths both apply.
#include "services/coordinator/attempt_rule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace retina::coordinator {
namespace {

namespace v1 = retina::v1;
using ::testing::HasSubstr;

v1::Job JobAt(int attempt, int max_restarts) {
  v1::Job job;
  job.set_attempt(attempt);
  job.mutable_spec()->set_max_restarts(max_restarts);
  return job;
}

TEST(AttemptRule, FailuresRequeueWhileRestartsAreLeftThenFail) {
  AttemptEnd e = DecideAttemptEnd(JobAt(1, 1), AttemptOutcome::kFailed, "rank 0 exited with code 1");
  EXPECT_TRUE(e.requeued());
  EXPECT_EQ(e.message, "attempt 1 failed: rank 0 exited with code 1; requeued (resumes from LATEST)");
  EXPECT_EQ(e.result, "");
  e = DecideAttemptEnd(JobAt(2, 1), AttemptOutcome::kFailed, "Slurm job 41 FAILED, exit code 1");
  EXPECT_EQ(e.state, v1::FAILED);
  EXPECT_EQ(e.message, "attempt 2 failed: Slurm job 41 FAILED, exit code 1; no restarts left");
  EXPECT_EQ(e.result, "failed");
  e = DecideAttemptEnd(JobAt(1, 0), AttemptOutcome::kFailed, "worker w1 lost");
  EXPECT_EQ(e.state, v1::FAILED);
  EXPECT_EQ(e.message, "attempt 1 failed: worker w1 lost");
}

// A preempted attempt always requeues and uses no restart: a job preempted
// twice with max_restarts 1 still has its one restart for a real failure.
TEST(AttemptRule, PreemptionsRequeueAndCountNoRestart) {
  v1::Job job = JobAt(1, 0);
  AttemptEnd e = DecideAttemptEnd(job, AttemptOutcome::kPreempted, "job-000009 (priority 5) needed its slots");
  EXPECT_TRUE(e.requeued());
  EXPECT_TRUE(e.preempted);
  EXPECT_EQ(e.result, "");
  EXPECT_THAT(e.message, HasSubstr("attempt 1 preempted: job-000009 (priority 5) needed its slots"));
  job = JobAt(3, 1);
  job.set_preemptions(2);  // attempts 1 and 2 were preempted
  e = DecideAttemptEnd(job, AttemptOutcome::kFailed, "rank 0 exited with code 1");
  EXPECT_TRUE(e.requeued()) << "the one restart is still there";
  job = JobAt(4, 1);
  job.set_preemptions(2);
  EXPECT_EQ(DecideAttemptEnd(job, AttemptOutcome::kFailed, "again").state, v1::FAILED);
}

TEST(AttemptRule, CancelsAndSuccessesEndTheJob) {
  AttemptEnd e = DecideAttemptEnd(JobAt(1, 3), AttemptOutcome::kCancelled, "");
  EXPECT_EQ(e.state, v1::CANCELLED);
  EXPECT_EQ(e.message, "cancelled");
  EXPECT_EQ(e.result, "cancelled");
  e = DecideAttemptEnd(JobAt(1, 3), AttemptOutcome::kCancelled, "cancelled outside the service: Slurm job 9");
  EXPECT_THAT(e.message, HasSubstr("outside the service"));
  e = DecideAttemptEnd(JobAt(4, 3), AttemptOutcome::kSucceeded, "");
  EXPECT_EQ(e.state, v1::SUCCEEDED);
  EXPECT_EQ(e.result, "succeeded");
  EXPECT_FALSE(e.requeued());
}

}  // namespace
}  // namespace retina::coordinator
