#include "services/coordinator/attempt_rule.h"

#include "absl/strings/str_cat.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

int FailedAttempts(const v1::Job& job) { return job.attempt() - job.preemptions() - job.grow_stops(); }

AttemptEnd DecideAttemptEnd(const v1::Job& job, AttemptOutcome outcome, const std::string& detail) {
  AttemptEnd end;
  switch (outcome) {
    case AttemptOutcome::kCancelled:
      end.state = v1::CANCELLED;
      end.message = detail.empty() ? "cancelled" : detail;
      end.result = "cancelled";
      break;
    case AttemptOutcome::kPreempted:
      end.state = v1::QUEUED;
      end.message = absl::StrCat("attempt ", job.attempt(), " preempted: ", detail,
                                 "; requeued (resumes from LATEST; not counted against max_restarts)");
      end.preempted = true;
      break;
    case AttemptOutcome::kGrowing:
      end.state = v1::QUEUED;
      end.message = absl::StrCat("attempt ", job.attempt(), " stopped to grow: ", detail,
                                 "; requeued (resumes from LATEST; not counted against max_restarts)");
      end.grow_stop = true;
      break;
    case AttemptOutcome::kFailed:
      if (FailedAttempts(job) <= job.spec().max_restarts()) {
        end.state = v1::QUEUED;
        end.message = absl::StrCat("attempt ", job.attempt(), " failed: ", detail, "; requeued (resumes from LATEST)");
      } else {
        end.state = v1::FAILED;
        end.message = absl::StrCat("attempt ", job.attempt(), " failed: ", detail,
                                   job.spec().max_restarts() > 0 ? "; no restarts left" : "");
        end.result = "failed";
      }
      break;
    case AttemptOutcome::kSucceeded:
      end.state = v1::SUCCEEDED;
      end.message = detail;
      end.result = "succeeded";
      break;
  }
  return end;
}

}  // namespace retina::coordinator
