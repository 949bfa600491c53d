// A DDP-style gradient reducer.
//
// Protocol per step (the rank step protocol):
//   1. PrepareForBackward() clears the bucket state.
//   2. During backward, each trainable parameter's gradient hook copies the
//      gradient into its bucket's flat buffer. Buckets hold parameters in
//      reverse registration order (the order backward produces gradients),
//      ~bucket_bytes each. When a bucket is full it is all-reduced
//      asynchronously, strictly in bucket order (every rank issues the same
//      collectives in the same order), overlapping the rest of backward.
//   3. FinishBackward() launches what is left (buckets of parameters that got
//      no gradient this step: zeros, their .grad stays undefined as in
//      PyTorch), waits for all buckets, and writes sum / world into each
//      parameter's .grad (keeping its memory layout). The time spent waiting
//      there is the communication NOT hidden behind backward.
// Gradient accumulation (elastic gangs): the micro-batches before the last
// run backward without the reducer (PrepareForBackward not called: .grad
// accumulates locally); the last one calls PrepareForBackward(true), and each
// hook then reduces its gradient plus the .grad accumulated so far.
// Frozen parameters (requires_grad false) are skipped.
// Threading: hooks run on autograd's thread, which for CPU graphs is the
// caller of backward(); the reducer is not used concurrently.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/dist/communicator.h"

namespace retina::trainer {

// Broadcasts rank 0's parameters and buffers to every rank.
absl::Status BroadcastModuleState(torch::nn::Module& module, Communicator& comm);

class GradientReducer {
 public:
  GradientReducer(torch::nn::Module& module, Communicator* comm, int64_t bucket_bytes = 25 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // `accumulated`: add each parameter's current .grad (earlier micro-batches).
  void PrepareForBackward(bool accumulated = false);
  absl::Status FinishBackward();

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Seconds FinishBackward spent waiting for communication (last step).
  double exposed_seconds() const { return exposed_seconds_; }

 private:
  struct Slot {
    torch::Tensor param;
    int bucket = 0;
    int64_t offset = 0;
    bool ready = false;
  };
  struct Bucket {
    torch::Tensor flat;
    int pending = 0;  // slots not yet ready
    int size = 0;
    std::unique_ptr<PendingCollective> op;
    absl::Status launch_status;
  };
  void OnGradient(int slot, const torch::Tensor& grad);
  void LaunchReadyBuckets();
  void Launch(int b);

  Communicator* comm_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  int next_launch_ = 0;
  bool active_ = false;
  bool accumulated_ = false;
  double exposed_seconds_ = 0;
};

}  // namespace retina::trainer
