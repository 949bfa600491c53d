#include "trainer/model/decoder.h"

#include "trainer/model/batch_norm.h"

namespace retina::trainer {

torch::nn::Sequential Conv2dReLU(int in_channels, int out_channels) {
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 3).padding(1).bias(false)),
      BatchNorm(out_channels),
      torch::nn::ReLU());
}

torch::Tensor UpsampleBilinear2x(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .scale_factor(std::vector<double>{2.0, 2.0})
                               .mode(torch::kBilinear)
                               .align_corners(true));
}

DecoderBlockImpl::DecoderBlockImpl(int in_channels, int out_channels, int skip_channels) {
  conv1 = register_module("conv1", Conv2dReLU(in_channels + skip_channels, out_channels));
  conv2 = register_module("conv2", Conv2dReLU(out_channels, out_channels));
}

torch::Tensor DecoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  torch::Tensor y = UpsampleBilinear2x(x);
  if (skip.defined()) y = torch::cat({y, skip}, 1);
  return conv2->forward(conv1->forward(y));
}

DecoderCupImpl::DecoderCupImpl(const TransUNetConfig& c) : skip_channels_(c.skip_channels) {
  conv_more = register_module("conv_more", Conv2dReLU(c.hidden_size, c.head_channels));
  blocks = register_module("blocks", torch::nn::ModuleList());
  int in = c.head_channels;
  for (size_t i = 0; i < c.decoder_channels.size(); ++i) {
    blocks->push_back(DecoderBlock(in, c.decoder_channels[i], c.skip_channels[i]));
    in = c.decoder_channels[i];
  }
}

torch::Tensor DecoderCupImpl::forward(const torch::Tensor& tokens,
                                      const std::vector<torch::Tensor>& skips) {
  const int64_t b = tokens.size(0), n = tokens.size(1), hidden = tokens.size(2);
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n))));
  torch::Tensor x = tokens.permute({0, 2, 1}).contiguous().view({b, hidden, side, side});
  x = conv_more->forward(x);
  for (size_t i = 0; i < blocks->size(); ++i) {
    const bool has_skip = skip_channels_[i] > 0 && i < skips.size();
    x = blocks[i]->as<DecoderBlock>()->forward(x, has_skip ? skips[i] : torch::Tensor());
  }
  return x;
}

FinalDecoderImpl::FinalDecoderImpl(int in_channels) {
  conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, 1, 3).padding(1)));
}

}  // namespace retina::trainer
