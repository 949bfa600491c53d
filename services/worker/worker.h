// retina-worker's core: registers this node's slots with the coordinator,
// heartbeats, starts the ranks it is assigned as retina-train processes with
// the torchrun-style environment, forwards rank 0's events, reports exits,
// and stops ranks on request (SIGTERM, grace period, SIGKILL).
//
// One thread (Run) does all of it in a 100 ms loop: RPCs are short unary
// calls with deadlines, so a slow or absent coordinator only delays the loop.
// Ranks outlive a coordinator restart: the worker keeps supervising them,
// re-registers with the tasks it still runs, and finished tasks are reported
// (CompleteTask) until the coordinator acknowledges them.
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "services/worker/rank_process.h"

namespace retina::worker {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::filesystem::path ca;        // TLS root; empty = plaintext
  std::string token;               // the worker token
  std::string worker_id;           // default: <host>
  std::string host;                // MASTER_ADDR others reach this node at
  int cpu_slots = 0;               // used when there are no GPUs
  std::vector<int> gpu_ids;        // CUDA devices (one slot each)
  std::map<std::string, std::string> labels;
  std::filesystem::path store = ".";
  std::filesystem::path trainer = "retina-train";
  // What a serve job's model server authenticates and encrypts with
  // (RETINA_SERVE_CLIENT_TOKENS, _TLS_CERT, _TLS_KEY; docs/serving.md): the
  // coordinator's client-token file and a certificate for this host. Empty: none.
  std::filesystem::path serve_client_tokens, serve_tls_cert, serve_tls_key;
  absl::Duration grace = absl::Seconds(30);  // SIGTERM -> SIGKILL
  std::string metrics_address;
};

// The worker's Prometheus metrics (prefix retina_worker_).
class WorkerMetrics {
 public:
  explicit WorkerMetrics(const std::string& version);
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  prometheus::Gauge* slots_free;
  prometheus::Gauge* slots_used;
  prometheus::Gauge* ranks_running;
  prometheus::Gauge* coordinator_up;
  prometheus::Family<prometheus::Counter>* rank_exits;
  prometheus::Counter* rpc_failures;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
};

class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Create(WorkerOptions options, WorkerMetrics* metrics);
  ~Worker();

  // Runs until `stop` becomes true; then stops every rank (SIGTERM, grace,
  // SIGKILL) and reports them before returning.
  void Run(const std::atomic<bool>& stop);

 private:
  struct Rank {
    int rank = 0;
    std::vector<int> slots;
    std::unique_ptr<RankProcess> process;
  };
  struct Task {
    retina::v1::Assignment assignment;
    std::vector<Rank> ranks;
    std::unique_ptr<EventPipe> events;
    bool stopping = false;
    bool stop_requested = false;  // by the coordinator or shutdown (not a failure)
    absl::Time kill_at = absl::InfiniteFuture();
  };
  using Key = std::pair<std::string, int>;

  Worker(WorkerOptions options, WorkerMetrics* metrics, std::shared_ptr<grpc::Channel> channel);
  bool Register();
  void Heartbeat();
  void Start(const retina::v1::Assignment& a);
  void BeginStop(Task* t, bool requested);
  void Supervise();
  void ForwardEvents(const Key& key, Task* t);
  void FlushCompletions();
  // Counts a failed RPC; `liveness` (register, heartbeat) also sets
  // coordinator_up. Returns s.ok().
  bool NoteRpc(const grpc::Status& s, bool liveness = false);
  std::vector<retina::v1::TaskRef> RunningRefs() const;
  void UpdateGauges();

  const WorkerOptions options_;
  WorkerMetrics* metrics_;
  std::unique_ptr<retina::v1::WorkerService::Stub> stub_;
  bool registered_ = false;
  absl::Duration heartbeat_ = absl::Seconds(1);
  absl::Time next_heartbeat_ = absl::InfinitePast();
  absl::Time next_register_ = absl::InfinitePast();
  std::map<Key, Task> tasks_;
  std::vector<retina::v1::CompleteTaskRequest> completions_;  // not yet acknowledged
  std::map<Key, absl::Time> finished_;  // recently completed: ignore re-sent assignments
};

}  // namespace retina::worker
