// The one rule that decides what an ended attempt means, for every executor
// (the worker agents and Slurm): a cancel requested ends the job CANCELLED;
// a failed attempt requeues while restarts are left (failed attempts, that
// is attempts less preemptions, <= max_restarts; resumed from LATEST) and is
// FAILED after that; a preempted attempt (stopped for a higher-priority job)
// always requeues and counts no restart; so does an elastic job's attempt
// stopped to grow back to more ranks; anything else SUCCEEDED.
#pragma once

#include <string>

#include "retina/v1/job_service.pb.h"

namespace retina::coordinator {

enum class AttemptOutcome { kSucceeded, kFailed, kCancelled, kPreempted, kGrowing };

struct AttemptEnd {
  retina::v1::JobState state = retina::v1::JOB_STATE_UNSPECIFIED;
  std::string message;
  std::string result;  // for the metrics: "succeeded", "failed", "cancelled"; empty when requeued
  bool preempted = false;  // the job's preemptions count goes up by one
  bool grow_stop = false;  // the job's grow_stops count goes up by one
  bool requeued() const { return state == retina::v1::QUEUED; }
};

// `detail` says why (a failure's cause, a cancel's origin); `job` is the job
// as committed, at the attempt that ended.
// Attempts that failed: attempts less preemptions and grow stops.
int FailedAttempts(const retina::v1::Job& job);
AttemptEnd DecideAttemptEnd(const retina::v1::Job& job, AttemptOutcome outcome, const std::string& detail);

}  // namespace retina::coordinator
