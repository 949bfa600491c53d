#include "services/coordinator/coordinator_metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/gang_failure.h"

namespace retina::coordinator {
namespace {

template <class Builder>
auto& Build(Builder builder, const char* name, const char* help, prometheus::Registry& r) {
  return builder.Name(name).Help(help).Register(r);
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  Build(prometheus::BuildGauge(), "retina_build_info", "Build of the running binary (value 1)", r)
      .Add({{"version", version}, {"component", "coordinator"}})
      .Set(1);
  jobs_ = &Build(prometheus::BuildGauge(), "retina_jobs", "Jobs by state", r);
  submitted_ = &Build(prometheus::BuildCounter(), "retina_jobs_submitted_total", "Jobs accepted by SubmitJob", r).Add({});
  finished_ = &Build(prometheus::BuildCounter(), "retina_jobs_finished_total", "Jobs that reached a terminal state", r);
  attempts_ = &Build(prometheus::BuildCounter(), "retina_job_attempts_total",
                     "Attempts scheduled, by why (first, requeue_failed, requeue_worker_lost, ...)", r);
  queue_wait_ = &Build(prometheus::BuildHistogram(), "retina_queue_wait_seconds",
                       "Time from QUEUED to SCHEDULED per attempt", r)
                     .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900,
                                                                      3600, 14400});
  commit_failures_ = &Build(prometheus::BuildCounter(), "retina_db_commit_failures_total",
                            "Job-database writes that did not commit (the change was not applied)", r).Add({});
  lease_misses_ = &Build(prometheus::BuildCounter(), "retina_worker_lease_misses_total",
                         "Workers declared lost because no heartbeat arrived within the lease", r).Add({});
  heartbeats_deferred_ = &Build(prometheus::BuildCounter(), "retina_heartbeats_deferred_total",
                                "Heartbeats answered without assignments while the state lock was busy", r).Add({});
  gang_failures_ = &Build(prometheus::BuildCounter(), "retina_gang_failures_total",
                          "Attempts that failed because their gang of ranks failed together, by cause "
                          "(collective_timeout, peer_failed, connection_lost, rendezvous_timeout, store_unreachable, peer_unreachable)",
                          r);
  for (GangFailure cause : kAllGangFailures) gang_failures_->Add({{"cause", std::string(GangFailureName(cause))}});
  preemptions_ = &Build(prometheus::BuildCounter(), "retina_preemptions_total",
                        "Running jobs stopped (checkpoint, requeue) for a higher-priority job", r).Add({});
  resizes_ = &Build(prometheus::BuildCounter(), "retina_resizes_total",
                    "Elastic jobs placed at another size than their last attempt, by direction (shrink, grow)", r);
  for (const char* d : {"shrink", "grow"}) resizes_->Add({{"direction", d}});
  workers_ = &Build(prometheus::BuildGauge(), "retina_workers", "Workers by state", r);
  slots_ = &Build(prometheus::BuildGauge(), "retina_slots", "Slots of ready workers by state", r);
  models_ = &Build(prometheus::BuildGauge(), "retina_models", "Model versions in the registry", r).Add({});
  model_changes_ = &Build(prometheus::BuildCounter(), "retina_model_changes_total",
                          "Model registry changes by operation (register, tag, delete) and result (ok, error)", r);
  grpc_requests_ = &Build(prometheus::BuildCounter(), "retina_grpc_requests_total", "RPCs by method and status code", r);
  train_step_ = &Build(prometheus::BuildGauge(), "retina_train_step", "Last step of a running job", r);
  train_loss_ = &Build(prometheus::BuildGauge(), "retina_train_loss", "Last mean loss of a running job", r);
  train_ips_ = &Build(prometheus::BuildGauge(), "retina_train_images_per_second", "Training throughput", r);
  allreduce_ = &Build(prometheus::BuildGauge(), "retina_allreduce_seconds",
                      "All-reduce time not hidden behind backward, last step", r);
  data_wait_ = &Build(prometheus::BuildGauge(), "retina_data_wait_seconds", "Time the step waited for data, last step", r);
  eval_iou_ = &Build(prometheus::BuildGauge(), "retina_eval_iou", "Last validation/evaluation IoU per class", r);
  checkpoint_ts_ = &Build(prometheus::BuildGauge(), "retina_checkpoint_last_success_timestamp_seconds",
                          "Unix time of the last committed checkpoint", r);
  checkpoint_interval_ = &Build(prometheus::BuildGauge(), "retina_checkpoint_interval_seconds",
                                "Seconds between the job's last two committed checkpoints", r);
  for (const char* s : {"QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}) {
    jobs_->Add({{"state", s}}).Set(0);
  }
  SetWorkers(0, 0);
  SetSlots(0, 0);
}

void CoordinatorMetrics::SetJobCounts(const std::map<std::string, int>& by_state) {
  for (const auto& [state, n] : by_state) jobs_->Add({{"state", state}}).Set(n);
}

void CoordinatorMetrics::SetWorkers(int ready, int lost) {
  workers_->Add({{"state", "ready"}}).Set(ready);
  workers_->Add({{"state", "lost"}}).Set(lost);
}

void CoordinatorMetrics::SetSlots(int free, int used) {
  slots_->Add({{"state", "free"}}).Set(free);
  slots_->Add({{"state", "used"}}).Set(used);
}

void CoordinatorMetrics::Track(const std::string& job, prometheus::Family<prometheus::Gauge>* family,
                               prometheus::Gauge* g) {
  auto& v = job_series_[job];
  for (const auto& [f, known] : v) {
    if (known == g) return;
  }
  v.emplace_back(family, g);
}

void CoordinatorMetrics::TrainStep(const std::string& job, double step, double loss, double images_per_s,
                                   double allreduce_s, double data_wait_s) {
  absl::MutexLock lock(&mu_);
  const std::pair<prometheus::Family<prometheus::Gauge>*, double> values[] = {
      {train_step_, step}, {train_loss_, loss}, {train_ips_, images_per_s}, {allreduce_, allreduce_s},
      {data_wait_, data_wait_s}};
  for (const auto& [family, value] : values) {
    prometheus::Gauge* g = &family->Add({{"job_id", job}});
    g->Set(value);
    Track(job, family, g);
  }
}

void CoordinatorMetrics::EvalIou(const std::string& job, const std::map<int, double>& per_class) {
  absl::MutexLock lock(&mu_);
  for (const auto& [cls, iou] : per_class) {
    prometheus::Gauge* g = &eval_iou_->Add({{"job_id", job}, {"class", absl::StrCat(cls)}});
    g->Set(iou);
    Track(job, eval_iou_, g);
  }
}

void CoordinatorMetrics::CheckpointWritten(const std::string& job, double unix_seconds) {
  absl::MutexLock lock(&mu_);
  prometheus::Gauge* g = &checkpoint_ts_->Add({{"job_id", job}});
  const double previous = g->Value();  // 0 for a new series
  g->Set(unix_seconds);
  Track(job, checkpoint_ts_, g);
  if (previous > 0 && unix_seconds > previous) {
    prometheus::Gauge* interval = &checkpoint_interval_->Add({{"job_id", job}});
    interval->Set(unix_seconds - previous);
    Track(job, checkpoint_interval_, interval);
  }
}

void CoordinatorMetrics::DropJob(const std::string& job) {
  absl::MutexLock lock(&mu_);
  auto it = job_series_.find(job);
  if (it == job_series_.end()) return;
  for (const auto& [family, g] : it->second) family->Remove(g);
  job_series_.erase(it);
}

}  // namespace retina::coordinator
