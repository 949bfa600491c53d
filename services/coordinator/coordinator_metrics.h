// The coordinator's Prometheus metrics (ARCHITECTURE.md "Coordinator"),
// registered once per process and exposed on /metrics by an Exposer owned by
// the binary. Labels stay bounded: per-job series exist only while the job is
// active (DropJob removes them). Thread-safe (prometheus-cpp metrics are).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace retina::coordinator {

class CoordinatorMetrics {
 public:
  explicit CoordinatorMetrics(const std::string& version);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void SetJobCounts(const std::map<std::string, int>& by_state);
  void JobSubmitted() { submitted_->Increment(); }
  void JobFinished(const std::string& result) { finished_->Add({{"result", result}}).Increment(); }
  void AttemptStarted(const std::string& reason) { attempts_->Add({{"reason", reason}}).Increment(); }
  void QueueWait(double seconds) { queue_wait_->Observe(seconds); }
  // A job-database write that did not commit (disk full, locked, I/O error).
  void CommitFailed() { commit_failures_->Increment(); }
  // A worker declared lost: no heartbeat within its lease.
  void LeaseMissed() { lease_misses_->Increment(); }
  // A heartbeat answered without its assignments because the coordinator's
  // state lock stayed busy (its lease was renewed all the same).
  void HeartbeatDeferred() { heartbeats_deferred_->Increment(); }
  // An attempt that ended because its gang failed together, by cause
  // (common/gang_failure.h: a collective timeout, a peer's failure, ...).
  void GangFailed(const std::string& cause) { gang_failures_->Add({{"cause", cause}}).Increment(); }
  // A running job stopped for a higher-priority one (placement.h PlanPreemption).
  void Preempted() { preemptions_->Increment(); }
  // An elastic job placed at another size than its last attempt ("shrink" or "grow").
  void Resized(const std::string& direction) { resizes_->Add({{"direction", direction}}).Increment(); }
  // The model registry (model_registry.h): versions registered now, and each
  // change by operation (register, tag, delete) and result (ok, error).
  void SetModels(int versions) { models_->Set(versions); }
  void ModelChange(const std::string& op, const std::string& result) {
    model_changes_->Add({{"op", op}, {"result", result}}).Increment();
  }
  void SetWorkers(int ready, int lost);
  void SetSlots(int free, int used);
  void GrpcRequest(const std::string& method, const std::string& code) {
    grpc_requests_->Add({{"method", method}, {"code", code}}).Increment();
  }

  // Per running job, from its rank-0 events.
  void TrainStep(const std::string& job, double step, double loss, double images_per_s, double allreduce_s,
                 double data_wait_s);
  // IoU per class index (the "class" label is the index).
  void EvalIou(const std::string& job, const std::map<int, double>& per_class);
  void CheckpointWritten(const std::string& job, double unix_seconds);
  void DropJob(const std::string& job);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* jobs_;
  prometheus::Counter* submitted_;
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Family<prometheus::Counter>* attempts_;
  prometheus::Histogram* queue_wait_;
  prometheus::Counter* commit_failures_;
  prometheus::Counter* lease_misses_;
  prometheus::Counter* heartbeats_deferred_;
  prometheus::Family<prometheus::Counter>* gang_failures_;
  prometheus::Counter* preemptions_;
  prometheus::Family<prometheus::Counter>* resizes_;
  prometheus::Gauge* models_;
  prometheus::Family<prometheus::Counter>* model_changes_;
  prometheus::Family<prometheus::Gauge>* workers_;
  prometheus::Family<prometheus::Gauge>* slots_;
  prometheus::Family<prometheus::Counter>* grpc_requests_;
  prometheus::Family<prometheus::Gauge>* train_step_;
  prometheus::Family<prometheus::Gauge>* train_loss_;
  prometheus::Family<prometheus::Gauge>* train_ips_;
  prometheus::Family<prometheus::Gauge>* allreduce_;
  prometheus::Family<prometheus::Gauge>* data_wait_;
  prometheus::Family<prometheus::Gauge>* eval_iou_;
  prometheus::Family<prometheus::Gauge>* checkpoint_ts_;
  prometheus::Family<prometheus::Gauge>* checkpoint_interval_;

  absl::Mutex mu_;
  std::map<std::string, std::vector<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>>>
      job_series_ ABSL_GUARDED_BY(mu_);
  void Track(const std::string& job, prometheus::Family<prometheus::Gauge>* family, prometheus::Gauge* g)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace retina::coordinator
