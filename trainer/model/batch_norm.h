// BatchNorm2d with optional cross-rank statistics (SyncBatchNorm).
//
// Same parameters and buffers as torch::nn::BatchNorm2d (weight, bias,
// running_mean, running_var, num_batches_tracked): state dicts are unchanged.
// With a sum-all-reduce attached (SetAllReduce) and in training mode, the
// batch mean/variance are computed over the global batch of all ranks, and
// backward all-reduces the two per-channel sums it needs, as
// torch.nn.SyncBatchNorm does; N ranks with batch b then compute exactly
// what one process with batch N*b computes. Without one, plain BatchNorm2d.
// Every rank must run the same forward/backward (collectives in lock step).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

namespace retina::trainer {

// Sums a tensor over ranks in place; throws c10::Error on failure.
using SumAllReduce = std::function<void(torch::Tensor&)>;

// eps 1e-5, momentum 0.1, affine, tracking running statistics (PyTorch defaults).
class BatchNormImpl : public torch::nn::Module {
 public:
  explicit BatchNormImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x);
  void SetAllReduce(std::shared_ptr<SumAllReduce> all_reduce) { all_reduce_ = std::move(all_reduce); }

  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  static constexpr double kEps = 1e-5;
  static constexpr double kMomentum = 0.1;
  std::shared_ptr<SumAllReduce> all_reduce_;
};
TORCH_MODULE(BatchNorm);

// Attaches `all_reduce` (or detaches, with nullptr) to every BatchNorm in `module`.
void SetBatchNormAllReduce(torch::nn::Module& module, const std::shared_ptr<SumAllReduce>& all_reduce);

}  // namespace retina::trainer
