// Thin gRPC adapters (callback API) over Coordinator. Each RPC: check the
// bearer token first, call the core, convert its status in one place, count
// the request in retina_grpc_requests_total{method,code}.
//
// Unary methods take raw bytes and parse them here: a request that is not a
// valid message then gets INVALID_ARGUMENT naming the message type (gRPC's
// generated handler answers UNIMPLEMENTED with an empty message).
#pragma once

#include <memory>

#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/model_service.grpc.pb.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "services/coordinator/coordinator.h"
#include "services/rpc_util.h"

namespace retina::coordinator {

class LogFollower;

namespace internal {
using JS = retina::v1::JobService;
using JobServiceBase = JS::WithRawCallbackMethod_SubmitJob<JS::WithRawCallbackMethod_GetJob<
    JS::WithRawCallbackMethod_ListJobs<JS::WithRawCallbackMethod_CancelJob<JS::WithCallbackMethod_WatchJob<
        JS::WithRawCallbackMethod_GetJobMetrics<JS::WithRawCallbackMethod_ListWorkers<
            JS::WithCallbackMethod_ReadLogs<JS::Service>>>>>>>>;
using WS = retina::v1::WorkerService;
using WorkerServiceBase = WS::WithRawCallbackMethod_RegisterWorker<WS::WithRawCallbackMethod_Heartbeat<
    WS::WithRawCallbackMethod_ReportEvents<WS::WithRawCallbackMethod_CompleteTask<WS::Service>>>>;
using MS = retina::v1::ModelService;
using ModelServiceBase = MS::WithRawCallbackMethod_RegisterModel<MS::WithRawCallbackMethod_ListModels<
    MS::WithRawCallbackMethod_GetModel<MS::WithRawCallbackMethod_TagModel<MS::WithRawCallbackMethod_DeleteModel<MS::Service>>>>>;
}  // namespace internal

class JobServiceImpl final : public internal::JobServiceBase {
 public:
  // All pointers are borrowed and must outlive the service.
  JobServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics);
  ~JobServiceImpl() override;

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerWriteReactor<retina::v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                          const retina::v1::WatchJobRequest* req) override;
  grpc::ServerUnaryReactor* GetJobMetrics(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerWriteReactor<retina::v1::LogChunk>* ReadLogs(grpc::CallbackServerContext* ctx,
                                                          const retina::v1::ReadLogsRequest* req) override;

 private:
  Coordinator* core_;
  const services::Authenticator* auth_;
  CoordinatorMetrics* metrics_;
  std::unique_ptr<LogFollower> follower_;
};

// The model registry's API (model_service.proto) over Coordinator.
class ModelServiceImpl final : public internal::ModelServiceBase {
 public:
  ModelServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics)
      : core_(core), auth_(auth), metrics_(metrics) {}

  grpc::ServerUnaryReactor* RegisterModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* TagModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;

 private:
  Coordinator* core_;
  const services::Authenticator* auth_;
  CoordinatorMetrics* metrics_;
};

class WorkerServiceImpl final : public internal::WorkerServiceBase {
 public:
  WorkerServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics)
      : core_(core), auth_(auth), metrics_(metrics) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ReportEvents(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* CompleteTask(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req, grpc::ByteBuffer* resp) override;

 private:
  Coordinator* core_;
  const services::Authenticator* auth_;
  CoordinatorMetrics* metrics_;
};

}  // namespace retina::coordinator
