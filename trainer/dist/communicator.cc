#include "trainer/dist/communicator.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/fault_injection.h"
#include "common/gang_failure.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "trainer/dist/communicator_mpi.h"
#include "trainer/dist/communicator_nccl.h"
#include "trainer/dist/gang_monitor.h"
#include "trainer/dist/rendezvous.h"

namespace retina::trainer {
namespace {

class Done final : public PendingCollective {
 public:
  absl::Status Wait() override { return absl::OkStatus(); }
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor, const std::string&) override {
    return std::unique_ptr<PendingCollective>(new Done());
  }
  absl::Status Broadcast(torch::Tensor, int, const std::string&) override { return absl::OkStatus(); }
  absl::Status Barrier(const std::string&) override { return absl::OkStatus(); }
};

// The message of an exception, without libtorch's C++ backtrace.
std::string Message(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

// Waits in slices of at most a second so that another rank's posted failure
// ends the wait at once (gang_monitor.h); the whole wait is bounded by the
// collective timeout, and whatever ends it is explained by the monitor.
class GlooPending final : public PendingCollective {
 public:
  using WorkPtr = decltype(std::declval<c10d::ProcessGroupGloo&>().barrier());
  GlooPending(WorkPtr work, GangMonitor* monitor, uint64_t seq, std::chrono::milliseconds timeout,
              std::atomic<bool>* abandoned)
      : work_(std::move(work)), monitor_(monitor), seq_(seq), timeout_(timeout), abandoned_(abandoned) {}
  absl::Status Wait() override {
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + timeout_;
    auto waited = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      try {
        work_->wait(std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(1000)));
        monitor_->recorder().End(seq_, true);
        return absl::OkStatus();
      } catch (const std::exception& e) {
        if (work_->isCompleted()) {  // Gloo's own error: its timeout, or a peer's connection closed
          monitor_->recorder().End(seq_, false);
          const std::string message = Message(e);
          const bool timed_out = absl::StrContains(message, "imed out") || absl::StrContains(message, "imeout");
          return monitor_->Explain(seq_, timed_out, message, waited());
        }
      }
      // The slice ended and the collective has not.
      const bool peer_failed = !monitor_->PeerFailure().empty();
      if (peer_failed || std::chrono::steady_clock::now() >= deadline) {
        monitor_->recorder().End(seq_, false);
        abandoned_->store(true);  // Gloo's thread is still inside this collective
        return monitor_->Explain(seq_, !peer_failed, "", waited());
      }
    }
  }

 private:
  WorkPtr work_;
  GangMonitor* monitor_;
  uint64_t seq_;
  std::chrono::milliseconds timeout_;
  std::atomic<bool>* abandoned_;
};

class GlooCommunicator final : public Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const LaunchInfo& launch,
                                                              const CommunicatorOptions& o) {
    auto comm = std::unique_ptr<GlooCommunicator>(new GlooCommunicator(launch.rank, launch.world_size, o.timeout));
    ASSIGN_OR_RETURN(comm->store_, ConnectRendezvous(launch, o.timeout));
    // The monitor first: a rank that cannot connect its peers tells the
    // others, whose own connecting is then abandoned at once.
    ASSIGN_OR_RETURN(comm->monitor_, GangMonitor::Start(launch));
    c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options;
    std::string bound;  // what this rank binds, for the errors: "eth1 (GLOO_SOCKET_IFNAME) [198.18.0.103]"
    try {
      options = c10d::ProcessGroupGloo::Options::create(o.timeout);
      if (!launch.gloo_ifname.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(launch.gloo_ifname));
        bound = absl::StrCat(launch.gloo_ifname, " (GLOO_SOCKET_IFNAME)");
      } else if (!launch.host_addr.empty()) {
        // The address the launcher advertises for this host (a worker's
        // --host): the hostname may resolve to loopback, which the other
        // hosts would then be told to dial.
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(launch.host_addr));
        bound = "RETINA_HOST_ADDR";
      } else if (launch.master_addr == "127.0.0.1" || launch.master_addr == "localhost") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        bound = "loopback (MASTER_ADDR is local)";
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        bound = "the hostname's address";
      }
      absl::StrAppend(&bound, " ", options->devices.back()->str());
    } catch (const std::exception& e) {
      const absl::Status s = absl::InvalidArgumentError(absl::StrCat(
          "rank ", launch.rank, ": cannot bind Gloo to ",
          launch.gloo_ifname.empty() ? launch.host_addr : "GLOO_SOCKET_IFNAME=" + launch.gloo_ifname, ": ", Message(e)));
      comm->monitor_->PostFailure(std::string(s.message()));
      return s;
    }
    RETURN_IF_ERROR(comm->ConnectMesh(launch, options, bound));
    return std::unique_ptr<Communicator>(std::move(comm));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "gloo"; }

  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor tensor,
                                                                       const std::string& what) override {
    return Issue("all-reduce", what, Bytes(tensor), [&] {
      std::vector<torch::Tensor> tensors{tensor};
      return pg_->allreduce(tensors);
    });
  }

  absl::Status Broadcast(torch::Tensor tensor, int root, const std::string& what) override {
    ASSIGN_OR_RETURN(std::unique_ptr<PendingCollective> op, Issue("broadcast", what, Bytes(tensor), [&] {
                       std::vector<torch::Tensor> tensors{tensor};
                       c10d::BroadcastOptions bo;
                       bo.rootRank = root;
                       return pg_->broadcast(tensors, bo);
                     }));
    return op->Wait();
  }

  absl::Status Barrier(const std::string& what) override {
    ASSIGN_OR_RETURN(std::unique_ptr<PendingCollective> op, Issue("barrier", what, 0, [&] { return pg_->barrier(); }));
    return op->Wait();
  }

  void PostFailure(const absl::Status& why) override { monitor_->PostFailure(std::string(why.message())); }

  ~GlooCommunicator() override {
    monitor_.reset();
    // A collective abandoned mid-flight (a peer failed, or the deadline
    // passed first) still occupies Gloo's worker thread, which the process
    // group's destructor would join: leave it to the process's exit instead
    // of waiting out Gloo's own timeout.
    if (abandoned_.load()) (void)pg_.release();
  }

 private:
  GlooCommunicator(int rank, int size, std::chrono::milliseconds timeout)
      : rank_(rank), size_(size), timeout_(timeout) {}
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  std::unique_ptr<GangMonitor> monitor_;
  std::atomic<bool> abandoned_{false};

  // RETINA_FAULTS=collective.stall_at=N[,collective.stall_rank=R]: this
  // rank stops before issuing collective #N (common/fault_injection.h).
  void StallIfInjected() {
    static const std::optional<int64_t> at = FaultValue(Fault::kCollectiveStallAt);
    static const std::optional<int64_t> only = FaultValue(Fault::kCollectiveStallRank);
    if (!at || (only && *only != rank_)) return;
    const std::optional<CollectiveRecord> last = monitor_->recorder().Last();
    if (static_cast<int64_t>(last ? last->seq + 1 : 1) != *at) return;
    RETINA_LOG(Warning) << "rank " << rank_ << ": RETINA_FAULTS: stalling before collective #" << *at;
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }

  // Builds the process group (Gloo connects every pair) on a thread of its
  // own, so that another rank's posted failure ends the wait at once; that
  // thread is then left to the process's exit. A failure to connect names
  // what this rank bound and is posted for the others.
  absl::Status ConnectMesh(const LaunchInfo& launch, c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options,
                           const std::string& bound) {
    struct Outcome {
      absl::Mutex mu;
      bool done = false;
      c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
      std::string error;
    };
    auto outcome = std::make_shared<Outcome>();
    const auto t0 = std::chrono::steady_clock::now();
    std::thread builder([outcome, store = store_, options, rank = launch.rank, size = launch.world_size] {
      c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
      std::string error;
      try {
        pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
      } catch (const std::exception& e) {
        error = Message(e);
      }
      absl::MutexLock lock(&outcome->mu);
      outcome->pg = std::move(pg);
      outcome->error = std::move(error);
      outcome->done = true;
    });
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    while (true) {
      {
        absl::MutexLock lock(&outcome->mu);
        if (outcome->mu.AwaitWithTimeout(absl::Condition(&outcome->done), absl::Milliseconds(100))) break;
      }
      if (const std::string peer = monitor_->PeerFailure(); !peer.empty()) {
        builder.detach();  // still inside Gloo's connect; the process exits with this error
        return absl::AbortedError(absl::StrCat(GangFailureTag(GangFailure::kPeerFailed), "rank ", launch.rank, " on ",
                                               monitor_->host(), ": connecting the Gloo mesh (bound ", bound,
                                               ") abandoned after ", absl::StrFormat("%.1f", elapsed()), " s: ", peer));
      }
    }
    builder.join();
    if (outcome->error.empty()) {
      pg_ = std::move(outcome->pg);
      return absl::OkStatus();
    }
    const absl::Status s = absl::UnavailableError(absl::StrCat(
        GangFailureTag(GangFailure::kPeerUnreachable), "rank ", launch.rank, " on ", monitor_->host(), ": Gloo bound ",
        bound, " and could not connect its peers after ", absl::StrFormat("%.1f", elapsed()), " s (timeout ",
        timeout_.count() / 1000.0, " s; rendezvous ", launch.master_addr, ":", launch.master_port, "): ", outcome->error,
        ": every rank's Gloo address must be reachable from the other hosts (choose the interface with "
        "GLOO_SOCKET_IFNAME, or the address with RETINA_HOST_ADDR / the worker's --host)"));
    monitor_->PostFailure(std::string(s.message()));
    return s;
  }

  static int64_t Bytes(const torch::Tensor& t) { return static_cast<int64_t>(t.numel() * t.element_size()); }

  // Records the collective, issues it; a failure to issue is explained too.
  template <class IssueFn>
  absl::StatusOr<std::unique_ptr<PendingCollective>> Issue(const char* kind, const std::string& what, int64_t bytes,
                                                           IssueFn issue) {
    StallIfInjected();
    const uint64_t seq = monitor_->recorder().Begin(kind, what, bytes);
    try {
      return std::unique_ptr<PendingCollective>(new GlooPending(issue(), monitor_.get(), seq, timeout_, &abandoned_));
    } catch (const std::exception& e) {
      monitor_->recorder().End(seq, false);
      return monitor_->Explain(seq, false, Message(e), 0);
    }
  }
};

}  // namespace

absl::Status Communicator::AllReduceSum(torch::Tensor tensor, const std::string& what) {
  ASSIGN_OR_RETURN(std::unique_ptr<PendingCollective> op, AllReduceSumAsync(std::move(tensor), what));
  return op->Wait();
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const LaunchInfo& launch,
                                                                 const CommunicatorOptions& o) {
  if (launch.world_size == 1 || o.backend == "local") {
    return std::unique_ptr<Communicator>(new LocalCommunicator());
  }
  std::string backend = o.backend;
  // auto: NCCL for CUDA tensors; MPI when mpirun/srun started us; else Gloo.
  if (backend == "auto") backend = o.cuda ? "nccl" : (launch.under_mpi ? "mpi" : "gloo");
  if (backend == "gloo") return GlooCommunicator::Create(launch, o);
  if (backend == "mpi") return CreateMpiCommunicator(launch, o);
  if (backend == "nccl") return CreateNcclCommunicator(launch, o);
  return absl::InvalidArgumentError(absl::StrCat("dist.backend: unknown backend '", backend, "'"));
}

}  // namespace retina::trainer
