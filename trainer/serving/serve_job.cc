#include "trainer/serving/serve_job.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/job_identity.h"
#include "common/path_policy.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/engine/event_log.h"

namespace retina::trainer::serving {

absl::StatusOr<ServedModelSpec> ParseModelFlag(const std::string& text, const std::string& field) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", text, "' is not NAME=WEIGHTS"));
  }
  ServedModelSpec spec;
  spec.name = text.substr(0, eq);
  spec.weights = text.substr(eq + 1);
  return spec;
}

ServeJob::~ServeJob() = default;

absl::StatusOr<std::unique_ptr<ServeJob>> ServeJob::Start(const ServeJobOptions& o) {
  std::unique_ptr<ServeJob> job(new ServeJob());
  ASSIGN_OR_RETURN(std::string text, ReadFile(o.config), o.config.string());
  ASSIGN_OR_RETURN(job->config_, ParseJobConfig(text, o.config.string()));
  if (job->config_.kind != JobKind::kServe) {
    return absl::InvalidArgumentError(absl::StrCat(o.config.string(), ": kind is '", JobKindName(job->config_.kind),
                                                   "'; retina-serve run runs kind: serve jobs"));
  }
  const PathPolicy policy(o.store, o.allowed_roots, o.output_roots);
  if (o.confine) RETURN_IF_ERROR(policy.CheckConfig(job->config_, o.job_id));
  for (size_t i = 0; i < job->config_.serve.models.size(); ++i) {
    ASSIGN_OR_RETURN(ServedModelSpec spec,
                     ParseModelFlag(job->config_.serve.models[i], absl::StrCat("serve.models[", i, "]")));
    if (o.confine) spec.weights = policy.WeightsPath(spec.weights).string();
    spec.owner = o.user;
    spec.max_batch = job->config_.serve.max_batch;
    spec.max_delay_ms = job->config_.serve.max_delay_ms;
    job->models_.push_back(std::move(spec));
  }
  const StoreLayout layout(o.store);
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.job_id, "--job"));
  RETURN_IF_ERROR(CheckJobOwner(layout, o.job_id, o.job_uid, /*claim=*/true));
  RETURN_IF_ERROR(ClaimAttempt(layout, o.job_id, o.attempt));
  ASSIGN_OR_RETURN(job->events_, EventLog::Open(layout.EventsPath(o.job_id), o.events));
  return job;
}

void ServeJob::Serving(const std::string& address) {
  ServingEvent e;
  e.address = address;
  for (const ServedModelSpec& m : models_) e.models.push_back(m.name);
  events_->Write(e);
}

void ServeJob::Stopped(bool by_signal) {
  if (by_signal) {
    events_->Write(PreemptedEvent{0});
  } else {
    events_->Write(DoneEvent{});
  }
}

}  // namespace retina::trainer::serving
