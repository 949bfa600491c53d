#include "trainer/model/transunet.h"

namespace retina::trainer {

VisionTransformerImpl::VisionTransformerImpl(TransUNetConfig config) : config_(std::move(config)) {
  transformer = register_module("transformer", Transformer(config_));
  decoder = register_module("decoder", DecoderCup(config_));
  const int last = config_.decoder_channels.back();
  if (config_.head == ModelHead::kReconstruction) {
    final_decoder = register_module("FinalDecoder", FinalDecoder(last));
  }
  // SegmentationHead(in, classes, kernel 3): Sequential(conv, Identity).
  const int classes = config_.head == ModelHead::kReconstruction ? 1 : config_.num_classes;
  segmentation_head = register_module(
      "segmentation_head",
      torch::nn::Sequential(
          torch::nn::Conv2d(torch::nn::Conv2dOptions(last, classes, 3).padding(1)),
          torch::nn::Identity()));
}

void VisionTransformerImpl::SetChannelsLast(bool enabled) {
  channels_last_ = enabled;
  const auto format = enabled ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  torch::NoGradGuard no_grad;
  for (torch::Tensor& p : parameters()) {
    if (p.dim() != 4) continue;
    p.set_data(p.data().contiguous(format));
    p.mutable_grad() = torch::Tensor();  // a stale grad would keep the old layout
  }
}

torch::Tensor VisionTransformerImpl::forward(torch::Tensor x) {
  if (x.size(1) == 1) x = x.repeat({1, 3, 1, 1});
  if (channels_last_) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  ResNetFeatures f = transformer(x);
  torch::Tensor y = decoder(f.x, f.skips);
  return final_decoder ? final_decoder(y) : segmentation_head->forward(y);
}

ParameterCounts CountParameters(const torch::nn::Module& module) {
  ParameterCounts c;
  for (const torch::Tensor& p : module.parameters()) {
    if (!p.defined()) continue;
    c.total += p.numel();
    (p.requires_grad() ? c.trainable : c.frozen) += p.numel();
  }
  return c;
}

}  // namespace retina::trainer
