// The one rule that decides what an ended attempt means, for every executor
// (the worker agents and Slurm): a cancel requested ends the job CANCELLED;
// a failed attempt requeues while restarts are left (attempt <= max_restarts,
// resumed from LATEST) and is FAILED after that; anything else SUCCEEDED.
#pragma once

#include <string>

#include "retina/v1/job_service.pb.h"

namespace retina::coordinator {

enum class AttemptOutcome { kSucceeded, kFailed, kCancelled };

struct AttemptEnd {
  retina::v1::JobState state = retina::v1::JOB_STATE_UNSPECIFIED;
  std::string message;
  std::string result;  // for the metrics: "succeeded", "failed", "cancelled"; empty when requeued
  bool requeued() const { return state == retina::v1::QUEUED; }
};

// `detail` says why (a failure's cause, a cancel's origin); `job` is the job
// as committed, at the attempt that ended.
AttemptEnd DecideAttemptEnd(const retina::v1::Job& job, AttemptOutcome outcome, const std::string& detail);

}  // namespace retina::coordinator
