// Collective communication between trainer ranks, behind one interface.
//
// Every collective has a deadline (the job's runtime.collective_timeout_s):
// a timed-out collective or a dead peer fails with an error naming this rank
// and the operation (DEADLINE_EXCEEDED, or ABORTED for a broken connection),
// never a silent hang. Gloo and NCCL keep a flight recorder of collectives
// and a gang monitor (gang_monitor.h): a timeout names the rank(s) that
// never arrived and their hosts, and a rank that fails (PostFailure) ends
// the others' waits at once with its cause. Collectives must be issued in the same order on every
// rank. One thread drives a communicator (the training loop, and autograd's
// backward thread through the reducer, never both at once).
//
// Backends: Local (world of 1), Gloo (libtorch's c10d ProcessGroupGloo over a
// TCP store at MASTER_ADDR:MASTER_PORT; CPU tensors), and, where built, MPI
// and NCCL.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/dist/launch_env.h"

namespace retina::trainer {

// An in-flight collective. Wait() returns its outcome (once).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual absl::Status Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // Sums `tensor` over ranks in place. `what` names the operation in errors.
  virtual absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor tensor,
                                                                               const std::string& what) = 0;
  absl::Status AllReduceSum(torch::Tensor tensor, const std::string& what);
  // Copies `root`'s tensor to every rank, in place.
  virtual absl::Status Broadcast(torch::Tensor tensor, int root, const std::string& what) = 0;
  virtual absl::Status Barrier(const std::string& what) = 0;
  // This rank is failing for `why`: tell the others, so that their waits end
  // now with its cause (gang_monitor.h). Best effort, bounded.
  virtual void PostFailure(const absl::Status& why) { (void)why; }
};

struct CommunicatorOptions {
  std::string backend = "auto";  // auto | gloo | mpi | nccl | local
  std::chrono::milliseconds timeout{600000};
  bool cuda = false;             // tensors live on CUDA (auto picks NCCL)
};

// Creates the backend for `launch`. World size 1 always gets Local.
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const LaunchInfo& launch,
                                                                 const CommunicatorOptions& options);

}  // namespace retina::trainer
