// TransUNet's CNN decoder (DecoderCup) and heads. Names follow the reference:
// decoder.conv_more.{0,1}, decoder.blocks.{i}.conv{1,2}.{0,1},
// segmentation_head.0, FinalDecoder.conv1.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "trainer/model/model_config.h"

namespace retina::trainer {

// Bilinear x2 upsampling with align_corners = true (the reference's
// nn.UpsamplingBilinear2d(scale_factor=2)).
torch::Tensor UpsampleBilinear2x(const torch::Tensor& x);

// Conv3x3 (no bias) + BatchNorm (eps 1e-5, momentum 0.1) + ReLU, as a
// Sequential so the names are "<name>.0.*" and "<name>.1.*".
torch::nn::Sequential Conv2dReLU(int in_channels, int out_channels);

// Bilinear x2 upsampling (align_corners = true), concat of the skip, two
// Conv2dReLU.
class DecoderBlockImpl : public torch::nn::Module {
 public:
  DecoderBlockImpl(int in_channels, int out_channels, int skip_channels);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);

 private:
  torch::nn::Sequential conv1{nullptr}, conv2{nullptr};
};
TORCH_MODULE(DecoderBlock);

// Tokens [B, grid^2, hidden] -> features [B, decoder_channels.back(), S, S].
class DecoderCupImpl : public torch::nn::Module {
 public:
  explicit DecoderCupImpl(const TransUNetConfig& config);
  // `skips` deepest first; blocks beyond the skips (channel 0) get none.
  torch::Tensor forward(const torch::Tensor& tokens, const std::vector<torch::Tensor>& skips);

 private:
  torch::nn::Sequential conv_more{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<int> skip_channels_;
};
TORCH_MODULE(DecoderCup);

// The pre-training reconstruction head: conv1 = Conv3x3(16 -> 1, bias),
// linear output predicting the normalised image.
class FinalDecoderImpl : public torch::nn::Module {
 public:
  explicit FinalDecoderImpl(int in_channels);
  torch::Tensor forward(const torch::Tensor& x) { return conv1(x); }

 private:
  torch::nn::Conv2d conv1{nullptr};
};
TORCH_MODULE(FinalDecoder);

}  // namespace retina::trainer
