// RETINA's network: TransUNet R50-ViT-B/16 (METHOD.md section 1), the
// reference's `VisionTransformer` class. Top-level names, in the reference's
// order: transformer, decoder, FinalDecoder (pre-training model only),
// segmentation_head.
//
// forward(x): x is [N, 1 or 3, S, S], normalised; a 1-channel input is
// repeated to 3 channels. Returns [N, classes, S, S] logits for the
// segmentation head, or [N, 1, S, S] for the reconstruction head.
#pragma once

#include <torch/torch.h>

#include "trainer/model/decoder.h"
#include "trainer/model/model_config.h"
#include "trainer/model/vit.h"

namespace retina::trainer {

class VisionTransformerImpl : public torch::nn::Module {
 public:
  explicit VisionTransformerImpl(TransUNetConfig config);
  torch::Tensor forward(torch::Tensor x);
  const TransUNetConfig& config() const { return config_; }

  // Stores 4-D weights and runs convolutions in channels-last (NHWC) layout,
  // which oneDNN convolutions on CPU prefer. Numerically equivalent (float
  // rounding aside); state dicts are unaffected (saved contiguous).
  void SetChannelsLast(bool enabled);

 private:
  TransUNetConfig config_;
  bool channels_last_ = false;
  Transformer transformer{nullptr};
  DecoderCup decoder{nullptr};
  FinalDecoder final_decoder{nullptr};
  torch::nn::Sequential segmentation_head{nullptr};
};
TORCH_MODULE(VisionTransformer);

// Parameter counts: all, trainable (requires_grad) and frozen.
struct ParameterCounts {
  int64_t total = 0;
  int64_t trainable = 0;
  int64_t frozen = 0;
};
ParameterCounts CountParameters(const torch::nn::Module& module);

}  // namespace retina::trainer
