// BatchNorm2d with optional cross-rank statistics (SyncBatchNorm).
//
// Same parameters and buffers as torch::nn::BatchNorm2d (weight, bias,
// running_mean, running_var, num_batches_tracked): state dicts are unchanged.
// With a sum-all-reduce attached (SetBatchNormSync) and in training mode, the
// batch mean/variance are computed over the global batch of all ranks, and
// backward all-reduces the two per-channel sums it needs, as
// torch.nn.SyncBatchNorm does; N ranks with batch b then compute exactly
// what one process with batch N*b computes. Without one, plain BatchNorm2d.
// Every rank must run the same forward/backward (collectives in lock step).
//
// Groups (elastic gangs, sampler.h): the ranks of one forward may form
// `groups` groups of consecutive ranks, each normalising over its own
// members' batches (torch.nn.SyncBatchNorm with process groups). Every rank
// still joins one all-reduce, of a [groups, 2C + 1] tensor in which it fills
// its group's row; the running statistics are then updated once per group,
// in group order, on every rank (so buffers stay equal everywhere). A job of
// full size W and minimum M normalises over groups of M ranks' batches at
// every size: W / M groups at full size, w / M per micro-batch on w ranks,
// the same groups of the same samples in the same order.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

namespace retina::trainer {

// Sums a tensor over ranks in place; throws c10::Error on failure.
using SumAllReduce = std::function<void(torch::Tensor&)>;

struct BatchNormSync {
  SumAllReduce all_reduce;
  int groups = 1;  // groups of ranks in one forward
  int group = 0;   // this rank's, in [0, groups)
};

// eps 1e-5, momentum 0.1, affine, tracking running statistics (PyTorch defaults).
class BatchNormImpl : public torch::nn::Module {
 public:
  explicit BatchNormImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x);
  void SetSync(std::shared_ptr<BatchNormSync> sync) { sync_ = std::move(sync); }

  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  static constexpr double kEps = 1e-5;
  static constexpr double kMomentum = 0.1;
  std::shared_ptr<BatchNormSync> sync_;
};
TORCH_MODULE(BatchNorm);

// Attaches `sync` (or detaches, with nullptr) to every BatchNorm in `module`.
void SetBatchNormSync(torch::nn::Module& module, const std::shared_ptr<BatchNormSync>& sync);
// One group of all ranks.
void SetBatchNormAllReduce(torch::nn::Module& module, const std::shared_ptr<SumAllReduce>& all_reduce);

}  // namespace retina::trainer
