#include "trainer/dist/communicator_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/dist/gang_monitor.h"
#include "trainer/dist/rendezvous.h"

namespace retina::trainer {
namespace {

// Every CUDA and NCCL call is checked here, and only here.
absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}
absl::Status NcclStatus(ncclResult_t r, const char* what, int rank) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat("rank ", rank, ": ", what, ": ", ncclGetErrorString(r)));
}
#define RETINA_CUDA(call) \
  do { if (absl::Status _s = CudaStatus((call), #call); !_s.ok()) return _s; } while (0)

absl::StatusOr<ncclDataType_t> NcclType(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kHalf: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kLong: return ncclInt64;
    case torch::kInt: return ncclInt32;
    case torch::kByte: return ncclUint8;
    default: return absl::UnimplementedError("NCCL backend: unsupported dtype");
  }
}

class NcclCommunicator;

class NcclPending final : public PendingCollective {
 public:
  NcclPending(NcclCommunicator* comm, cudaEvent_t done, uint64_t seq) : comm_(comm), done_(done), seq_(seq) {}
  ~NcclPending() override { cudaEventDestroy(done_); }
  absl::Status Wait() override;

 private:
  NcclCommunicator* comm_;
  cudaEvent_t done_;
  uint64_t seq_;
};

class NcclCommunicator final : public Communicator {
 public:
  ~NcclCommunicator() override {
    if (comm_ != nullptr) (aborted_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_));
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(const LaunchInfo& launch, const CommunicatorOptions& o) {
    int count = 0;
    RETINA_CUDA(cudaGetDeviceCount(&count));
    if (count == 0) return absl::FailedPreconditionError("NCCL backend: no CUDA device");
    RETINA_CUDA(cudaSetDevice(launch.local_rank % count));
    auto comm = std::unique_ptr<NcclCommunicator>(new NcclCommunicator(launch.rank, launch.world_size, o.timeout));
    ncclUniqueId id;
    try {
      ASSIGN_OR_RETURN(comm->store_, ConnectRendezvous(launch, o.timeout));
      // Kept for the communicator's life: rank 0 serves it, and a peer may
      // still be reading the id when rank 0 has moved on to ncclCommInitRank.
      c10d::Store* store = comm->store_.get();
      if (launch.rank == 0) {
        if (absl::Status s = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId", 0); !s.ok()) return s;
        store->set("retina/nccl-unique-id", std::vector<uint8_t>(reinterpret_cast<uint8_t*>(&id),
                                                                reinterpret_cast<uint8_t*>(&id) + sizeof(id)));
      } else {
        const std::vector<uint8_t> bytes = store->get("retina/nccl-unique-id");
        if (bytes.size() != sizeof(id)) return absl::DataLossError("NCCL unique id of the wrong size in the store");
        std::memcpy(&id, bytes.data(), sizeof(id));
      }
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("rank ", launch.rank, ": NCCL rendezvous at ", launch.master_addr, ":",
                                                 launch.master_port, " failed: ", e.what()));
    }
    if (absl::Status s = NcclStatus(ncclCommInitRank(&comm->comm_, launch.world_size, id, launch.rank),
                                    "ncclCommInitRank", launch.rank); !s.ok()) {
      return s;
    }
    RETINA_CUDA(cudaStreamCreateWithFlags(&comm->stream_, cudaStreamNonBlocking));
    ASSIGN_OR_RETURN(comm->monitor_, GangMonitor::Start(launch));
    return std::unique_ptr<Communicator>(std::move(comm));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor t, const std::string& what) override {
    return Launch(t, what, "all-reduce", [&](ncclDataType_t type) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, ncclSum, comm_, stream_);
    });
  }
  absl::Status Broadcast(torch::Tensor t, int root, const std::string& what) override {
    auto op = Launch(t, what, "broadcast", [&](ncclDataType_t type) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), type, root, comm_, stream_);
    });
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }
  absl::Status Barrier(const std::string& what) override {
    if (!barrier_.defined()) barrier_ = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA));
    return AllReduceSum(barrier_, what);
  }

  void PostFailure(const absl::Status& why) override { monitor_->PostFailure(std::string(why.message())); }

  // Polls `done` until the deadline or another rank's posted failure;
  // aborts the communicator on failure, explained by the gang monitor.
  absl::Status Await(cudaEvent_t done, uint64_t seq) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + timeout_;
    for (;;) {
      const cudaError_t q = cudaEventQuery(done);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) return CudaStatus(q, "cudaEventQuery");
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      const bool timed_out = std::chrono::steady_clock::now() > deadline;
      if (async != ncclSuccess || timed_out || !monitor_->PeerFailure().empty()) {
        aborted_ = true;
        ncclCommAbort(comm_);
        comm_ = nullptr;
        monitor_->recorder().End(seq, false);
        return monitor_->Explain(seq, timed_out, async != ncclSuccess ? ncclGetErrorString(async) : "",
                                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    monitor_->recorder().End(seq, true);
    // Later work on the default stream sees the result.
    RETINA_CUDA(cudaStreamWaitEvent(nullptr, done, 0));
    return absl::OkStatus();
  }

 private:
  NcclCommunicator(int rank, int size, std::chrono::milliseconds timeout) : rank_(rank), size_(size), timeout_(timeout) {}

  template <class F>
  absl::StatusOr<std::unique_ptr<PendingCollective>> Launch(const torch::Tensor& t, const std::string& what,
                                                            const char* op, F&& call) {
    if (comm_ == nullptr) return absl::FailedPreconditionError(absl::StrCat("rank ", rank_, ": NCCL communicator aborted"));
    if (!t.is_cuda() || !t.is_contiguous()) {
      return absl::InvalidArgumentError(absl::StrCat("NCCL ", op, " '", what, "': needs a contiguous CUDA tensor"));
    }
    absl::StatusOr<ncclDataType_t> type = NcclType(t);
    if (!type.ok()) return type.status();
    cudaEvent_t ready, done;
    RETINA_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    RETINA_CUDA(cudaEventRecord(ready, nullptr));  // work queued so far on the default stream
    RETINA_CUDA(cudaStreamWaitEvent(stream_, ready, 0));
    cudaEventDestroy(ready);
    if (absl::Status s = NcclStatus(call(*type), op, rank_); !s.ok()) return s;
    RETINA_CUDA(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    RETINA_CUDA(cudaEventRecord(done, stream_));
    const uint64_t seq = monitor_->recorder().Begin(op, what, static_cast<int64_t>(t.numel() * t.element_size()));
    return std::unique_ptr<PendingCollective>(new NcclPending(this, done, seq));
  }

  int rank_, size_;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  c10::intrusive_ptr<c10d::Store> store_;
  cudaStream_t stream_ = nullptr;
  bool aborted_ = false;
  torch::Tensor barrier_;
  std::unique_ptr<GangMonitor> monitor_;
};

absl::Status NcclPending::Wait() { return comm_->Await(done_, seq_); }

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const LaunchInfo& launch,
                                                                     const CommunicatorOptions& o) {
  return NcclCommunicator::Create(launch, o);
}

}  // namespace retina::trainer
