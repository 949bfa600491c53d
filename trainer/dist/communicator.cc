#include "trainer/dist/communicator.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <chrono>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/dist/communicator_mpi.h"
#include "trainer/dist/communicator_nccl.h"
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

// c10d signals timeouts and broken peers with exceptions; turn them into
// statuses that name the rank and the operation.
absl::Status CollectiveError(int rank, const std::string& op, const std::string& what, const std::string& message,
                             std::chrono::milliseconds timeout) {
  const bool timed_out = absl::StrContains(message, "imed out") || absl::StrContains(message, "imeout");
  const std::string text = absl::StrCat("rank ", rank, ": ", op, " '", what, "' ",
                                        timed_out ? absl::StrCat("timed out after ", timeout.count() / 1000.0, " s")
                                                  : "failed",
                                        " (a peer rank died, stalled or is unreachable): ", message);
  return timed_out ? absl::DeadlineExceededError(text) : absl::AbortedError(text);
}

class GlooPending final : public PendingCollective {
 public:
  using WorkPtr = decltype(std::declval<c10d::ProcessGroupGloo&>().barrier());
  GlooPending(WorkPtr work, int rank, std::string op, std::string what, std::chrono::milliseconds timeout)
      : work_(std::move(work)), rank_(rank), op_(std::move(op)), what_(std::move(what)), timeout_(timeout) {}
  absl::Status Wait() override {
    try {
      work_->wait(timeout_);
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return CollectiveError(rank_, op_, what_, Message(e), timeout_);
    }
  }

 private:
  WorkPtr work_;
  int rank_;
  std::string op_, what_;
  std::chrono::milliseconds timeout_;
};

class GlooCommunicator final : public Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const LaunchInfo& launch,
                                                              const CommunicatorOptions& o) {
    auto comm = std::unique_ptr<GlooCommunicator>(new GlooCommunicator(launch.rank, launch.world_size, o.timeout));
    const auto t0 = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(comm->store_, ConnectRendezvous(launch, o.timeout));
    try {
      auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
      if (!launch.gloo_ifname.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(launch.gloo_ifname));
      } else if (!launch.host_addr.empty()) {
        // The address the launcher advertises for this host (a worker's
        // --host): the hostname may resolve to loopback, which the other
        // hosts would then be told to dial.
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(launch.host_addr));
      } else if (launch.master_addr == "127.0.0.1" || launch.master_addr == "localhost") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      comm->pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(comm->store_, launch.rank, launch.world_size, options);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(
          "rank ", launch.rank, ": gloo connection setup (rendezvous at ", launch.master_addr, ":", launch.master_port,
          ") failed after ", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
          " s (timeout ", o.timeout.count() / 1000.0, " s): ", Message(e)));
    }
    return std::unique_ptr<Communicator>(std::move(comm));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "gloo"; }

  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor tensor,
                                                                       const std::string& what) override {
    try {
      std::vector<torch::Tensor> tensors{tensor};
      return std::unique_ptr<PendingCollective>(
          new GlooPending(pg_->allreduce(tensors), rank_, "all-reduce", what, timeout_));
    } catch (const std::exception& e) {
      return CollectiveError(rank_, "all-reduce", what, Message(e), timeout_);
    }
  }

  absl::Status Broadcast(torch::Tensor tensor, int root, const std::string& what) override {
    try {
      std::vector<torch::Tensor> tensors{tensor};
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      return GlooPending(pg_->broadcast(tensors, bo), rank_, "broadcast", what, timeout_).Wait();
    } catch (const std::exception& e) {
      return CollectiveError(rank_, "broadcast", what, Message(e), timeout_);
    }
  }

  absl::Status Barrier(const std::string& what) override {
    try {
      return GlooPending(pg_->barrier(), rank_, "barrier", what, timeout_).Wait();
    } catch (const std::exception& e) {
      return CollectiveError(rank_, "barrier", what, Message(e), timeout_);
    }
  }

 private:
  GlooCommunicator(int rank, int size, std::chrono::milliseconds timeout)
      : rank_(rank), size_(size), timeout_(timeout) {}
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
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
