// The CNN trunk of TransUNet's hybrid embedding: ResNetV2 (BiT-style, with
// weight-standardised convolutions and GroupNorm), three stages only.
// Module and parameter names follow the reference (TransUNet's
// vit_seg_modeling_resnet_skip.py): root.{conv,gn}, body.block{1..3}.unit{k}.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace retina::trainer {

// Conv2d whose weight is standardised per output channel before each use:
// w' = (w - mean) / sqrt(var + 1e-5), population variance over (in, kh, kw).
// No bias. Parameter: "weight" [out, in, k, k].
class StdConv2dImpl : public torch::nn::Module {
 public:
  StdConv2dImpl(int in_channels, int out_channels, int kernel, int stride, int padding);
  torch::Tensor forward(const torch::Tensor& x);
  // The standardised weight the convolution uses (exposed for tests).
  torch::Tensor standardized_weight() const;
  void reset_parameters();

  torch::Tensor weight;

 private:
  int stride_;
  int padding_;
};
TORCH_MODULE(StdConv2d);

// Pre-activation bottleneck as in the reference:
//   y = relu(gn1(conv1 x)); y = relu(gn2(conv2 y)); y = gn3(conv3 y)
//   out = relu(residual + y), residual = gn_proj(downsample x) when the shape
//   changes (stride != 1 or cin != cout), else x.
// gn1-3: GroupNorm(32, C, eps 1e-6); gn_proj: GroupNorm(cout, cout, eps 1e-5).
class PreActBottleneckImpl : public torch::nn::Module {
 public:
  PreActBottleneckImpl(int cin, int cout, int cmid, int stride);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::GroupNorm gn1{nullptr}, gn2{nullptr}, gn3{nullptr}, gn_proj{nullptr};
  StdConv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr}, downsample{nullptr};
};
TORCH_MODULE(PreActBottleneck);

// One stage: unit1..unitN, applied in order.
class ResNetStageImpl : public torch::nn::Module {
 public:
  ResNetStageImpl(int units, int cin, int cout, int cmid, int first_stride);
  torch::Tensor forward(torch::Tensor x);

 private:
  std::vector<PreActBottleneck> units_;
};
TORCH_MODULE(ResNetStage);

// The output of the trunk: the deepest feature map and the skips for the
// decoder, deepest first: [block2 (S/8), block1 padded to S/4, root (S/2)].
struct ResNetFeatures {
  torch::Tensor x;
  std::vector<torch::Tensor> skips;
};

class ResNetV2Impl : public torch::nn::Module {
 public:
  ResNetV2Impl(const std::vector<int>& units, int width, int in_channels);
  ResNetFeatures forward(const torch::Tensor& x);

 private:
  torch::nn::Sequential root{nullptr};
  torch::nn::ModuleDict body{nullptr};  // block1..block3 (ResNetStage)
  std::vector<ResNetStage> stages_;
};
TORCH_MODULE(ResNetV2);

}  // namespace retina::trainer
