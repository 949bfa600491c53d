// retina-serve's gRPC face: PredictionService over the serving core
// (trainer/serving/serving_core.h), with the coordinator's authentication and
// Prometheus metrics (docs/serving.md "Metrics").
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "retina/v1/prediction_service.grpc.pb.h"
#include "services/rpc_util.h"
#include "trainer/serving/serving_core.h"

namespace retina::serve {

// Every series is labelled by model (a handful per server) at most.
class ServeMetrics : public trainer::serving::BatchObserver {
 public:
  explicit ServeMetrics(const std::string& version);
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void Request(const std::string& model, const std::string& code, double seconds);
  void BatchRun(const std::string& model, int64_t windows, double seconds) override;
  void QueueDepth(int64_t windows) override { queue_->Set(static_cast<double>(windows)); }
  void Busy(bool running) override { busy_->Set(running ? 1 : 0); }
  void Dropped(const std::string& model, const char* why) override;
  // The pool's counters, copied after every load or refresh.
  void Models(int64_t served, int64_t loads, int64_t refusals);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Histogram>* batch_;
  prometheus::Family<prometheus::Counter>* windows_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* dropped_;
  prometheus::Gauge* queue_;
  prometheus::Gauge* busy_;
  prometheus::Gauge* models_;
  prometheus::Counter* loads_;
  prometheus::Counter* refusals_;
  int64_t loads_seen_ = 0, refusals_seen_ = 0;
};

class PredictionServiceImpl final : public v1::PredictionService::Service {
 public:
  PredictionServiceImpl(trainer::serving::ServingCore* core, trainer::serving::ModelPool* models,
                        const services::Authenticator* auth, ServeMetrics* metrics);

  // UNAVAILABLE until the models are loaded.
  void SetReady(bool ready) { ready_.store(ready); }

  grpc::Status Predict(grpc::ServerContext* context, const v1::PredictRequest* request,
                       v1::PredictResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

 private:
  trainer::serving::ServingCore* core_;
  trainer::serving::ModelPool* models_;
  const services::Authenticator* auth_;
  ServeMetrics* metrics_;
  std::atomic<bool> ready_{false};
};

}  // namespace retina::serve
