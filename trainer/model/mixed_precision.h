// The one precision rule of the model's layers under autocast.
#pragma once

#include <torch/torch.h>

namespace retina::trainer {

// `x` in the dtype of `param`: normalisations (GroupNorm, LayerNorm,
// BatchNorm) and the attention softmax run in their parameters' precision,
// so under bf16 autocast they take fp32 inputs, as CUDA's autocast lists
// group_norm, layer_norm and softmax (libtorch 1.13's CPU autocast leaves
// them on mixed dtypes, and group_norm and layer_norm then fail). The next
// convolution or matmul casts back down. A no-op in fp32 and fp64 runs.
inline torch::Tensor ToParamDtype(const torch::Tensor& x, const torch::Tensor& param) {
  return x.scalar_type() == param.scalar_type() ? x : x.to(param.scalar_type());
}

}  // namespace retina::trainer
