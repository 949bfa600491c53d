// Dropout whose CPU mask is a counter-based hash instead of a serial
// Bernoulli draw.
//
// Debian's libtorch (no MKL) draws dropout masks element by element from one
// mt19937 (~4.8 ns/element here, 4-5% of a pre-training step). This module
// draws one 64-bit seed per call from libtorch's default generator (so
// torch::manual_seed makes runs reproducible) and derives each element's keep
// bit from a hash of (seed, element index), in parallel: the mask is the same
// for any thread count. Keep probability 1 - p, kept values scaled by
// 1/(1 - p), as torch.nn.Dropout. CUDA tensors use torch::dropout. Identity
// in eval mode or with p = 0.
#pragma once

#include <torch/torch.h>

namespace retina::trainer {

// The mask (values 0 or 1/(1-p)) for `like`'s shape, from `seed`.
torch::Tensor HashDropoutMask(const torch::Tensor& like, double p, uint64_t seed);

class DropoutImpl : public torch::nn::Module {
 public:
  explicit DropoutImpl(double p) : p_(p) {}
  torch::Tensor forward(const torch::Tensor& x);
  double p() const { return p_; }

 private:
  double p_;
};
TORCH_MODULE(Dropout);

}  // namespace retina::trainer
