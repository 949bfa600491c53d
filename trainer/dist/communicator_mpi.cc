#include "trainer/dist/communicator_mpi.h"

#include <mpi.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"

namespace retina::trainer {
namespace {

absl::StatusOr<MPI_Datatype> MpiType(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return MPI_FLOAT;
    case torch::kDouble: return MPI_DOUBLE;
    case torch::kLong: return MPI_INT64_T;
    case torch::kInt: return MPI_INT32_T;
    case torch::kByte: return MPI_UINT8_T;
    default: return absl::UnimplementedError(absl::StrCat("MPI backend: unsupported dtype ", c10::toString(t.scalar_type())));
  }
}

class MpiPending final : public PendingCollective {
 public:
  MpiPending(MPI_Request request, int rank, std::string op, std::string what, std::chrono::milliseconds timeout)
      : request_(request), rank_(rank), op_(std::move(op)), what_(std::move(what)), timeout_(timeout) {}
  absl::Status Wait() override {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    auto pause = std::chrono::microseconds(1);
    for (;;) {
      int done = 0;
      if (MPI_Test(&request_, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        return absl::AbortedError(absl::StrCat("rank ", rank_, ": ", op_, " '", what_, "' failed in MPI"));
      }
      if (done) return absl::OkStatus();
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("rank ", rank_, ": ", op_, " '", what_, "' timed out after ",
                                                        timeout_.count() / 1000.0, " s (a peer rank died or stalled)"));
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

 private:
  MPI_Request request_;
  int rank_;
  std::string op_, what_;
  std::chrono::milliseconds timeout_;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(std::chrono::milliseconds timeout, bool owns_init) : timeout_(timeout), owns_init_(owns_init) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_init_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor t, const std::string& what) override {
    absl::StatusOr<MPI_Datatype> type = MpiType(t);
    if (!type.ok()) return type.status();
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "MPI all-reduce needs a contiguous CPU tensor");
    MPI_Request request;
    MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), *type, MPI_SUM, MPI_COMM_WORLD, &request);
    return std::unique_ptr<PendingCollective>(new MpiPending(request, rank_, "all-reduce", what, timeout_));
  }
  absl::Status Broadcast(torch::Tensor t, int root, const std::string& what) override {
    absl::StatusOr<MPI_Datatype> type = MpiType(t);
    if (!type.ok()) return type.status();
    MPI_Request request;
    MPI_Ibcast(t.data_ptr(), static_cast<int>(t.numel()), *type, root, MPI_COMM_WORLD, &request);
    return MpiPending(request, rank_, "broadcast", what, timeout_).Wait();
  }
  absl::Status Barrier(const std::string& what) override {
    MPI_Request request;
    MPI_Ibarrier(MPI_COMM_WORLD, &request);
    return MpiPending(request, rank_, "barrier", what, timeout_).Wait();
  }

 private:
  std::chrono::milliseconds timeout_;
  bool owns_init_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(const LaunchInfo& launch,
                                                                    const CommunicatorOptions& o) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      return absl::UnavailableError("MPI_Init_thread failed (is this process started by mpirun/srun?)");
    }
  }
  auto comm = std::make_unique<MpiCommunicator>(o.timeout, !initialized);
  if (comm->rank() != launch.rank || comm->size() != launch.world_size) {
    return absl::FailedPreconditionError(absl::StrCat("MPI says rank ", comm->rank(), " of ", comm->size(),
                                                      " but the launcher environment says ", launch.rank, " of ",
                                                      launch.world_size, " (from ", launch.source, ")"));
  }
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace retina::trainer
