// Thin gRPC adapters (callback API) over Coordinator. Each RPC: check the
// bearer token first, call the core, convert its status in one place, count
// the request in retina_grpc_requests_total{method,code}.
#pragma once

#include <memory>

#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "services/coordinator/coordinator.h"
#include "services/rpc_util.h"

namespace retina::coordinator {

class LogFollower;

class JobServiceImpl final : public retina::v1::JobService::CallbackService {
 public:
  // All pointers are borrowed and must outlive the service.
  JobServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics);
  ~JobServiceImpl() override;

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx, const retina::v1::SubmitJobRequest* req,
                                      retina::v1::Job* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const retina::v1::GetJobRequest* req,
                                   retina::v1::Job* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const retina::v1::ListJobsRequest* req,
                                     retina::v1::ListJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx, const retina::v1::CancelJobRequest* req,
                                      retina::v1::Job* resp) override;
  grpc::ServerWriteReactor<retina::v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                          const retina::v1::WatchJobRequest* req) override;
  grpc::ServerUnaryReactor* GetJobMetrics(grpc::CallbackServerContext* ctx,
                                          const retina::v1::GetJobMetricsRequest* req,
                                          retina::v1::JobMetrics* resp) override;
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx, const retina::v1::ListWorkersRequest* req,
                                        retina::v1::ListWorkersResponse* resp) override;
  grpc::ServerWriteReactor<retina::v1::LogChunk>* ReadLogs(grpc::CallbackServerContext* ctx,
                                                          const retina::v1::ReadLogsRequest* req) override;

 private:
  Coordinator* core_;
  const services::Authenticator* auth_;
  CoordinatorMetrics* metrics_;
  std::unique_ptr<LogFollower> follower_;
};

class WorkerServiceImpl final : public retina::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Coordinator* core, const services::Authenticator* auth, CoordinatorMetrics* metrics)
      : core_(core), auth_(auth), metrics_(metrics) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const retina::v1::RegisterWorkerRequest* req,
                                           retina::v1::RegisterWorkerResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx, const retina::v1::HeartbeatRequest* req,
                                      retina::v1::HeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* ReportEvents(grpc::CallbackServerContext* ctx,
                                         const retina::v1::ReportEventsRequest* req,
                                         retina::v1::ReportEventsResponse* resp) override;
  grpc::ServerUnaryReactor* CompleteTask(grpc::CallbackServerContext* ctx,
                                         const retina::v1::CompleteTaskRequest* req,
                                         retina::v1::CompleteTaskResponse* resp) override;

 private:
  Coordinator* core_;
  const services::Authenticator* auth_;
  CoordinatorMetrics* metrics_;
};

}  // namespace retina::coordinator
