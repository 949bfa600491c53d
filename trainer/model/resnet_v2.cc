#include "trainer/model/resnet_v2.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "trainer/model/mixed_precision.h"

namespace retina::trainer {

StdConv2dImpl::StdConv2dImpl(int in_channels, int out_channels, int kernel, int stride,
                             int padding)
    : stride_(stride), padding_(padding) {
  weight = register_parameter("weight",
                              torch::empty({out_channels, in_channels, kernel, kernel}));
  reset_parameters();
}

void StdConv2dImpl::reset_parameters() {
  // PyTorch's Conv2d default: kaiming_uniform(a = sqrt(5)) = U(+-1/sqrt(fan_in)).
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

torch::Tensor StdConv2dImpl::standardized_weight() const {
  auto [var, mean] = torch::var_mean(weight, {1, 2, 3}, /*unbiased=*/false, /*keepdim=*/true);
  return (weight - mean) / torch::sqrt(var + 1e-5);
}

torch::Tensor StdConv2dImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(x, standardized_weight(), /*bias=*/{}, stride_, padding_);
}

PreActBottleneckImpl::PreActBottleneckImpl(int cin, int cout, int cmid, int stride) {
  using torch::nn::GroupNormOptions;
  // Registration order = the reference's state-dict order.
  gn1 = register_module("gn1", torch::nn::GroupNorm(GroupNormOptions(32, cmid).eps(1e-6)));
  conv1 = register_module("conv1", StdConv2d(cin, cmid, 1, 1, 0));
  gn2 = register_module("gn2", torch::nn::GroupNorm(GroupNormOptions(32, cmid).eps(1e-6)));
  conv2 = register_module("conv2", StdConv2d(cmid, cmid, 3, stride, 1));
  gn3 = register_module("gn3", torch::nn::GroupNorm(GroupNormOptions(32, cout).eps(1e-6)));
  conv3 = register_module("conv3", StdConv2d(cmid, cout, 1, 1, 0));
  if (stride != 1 || cin != cout) {
    downsample = register_module("downsample", StdConv2d(cin, cout, 1, stride, 0));
    gn_proj = register_module("gn_proj", torch::nn::GroupNorm(GroupNormOptions(cout, cout)));
  }
}

torch::Tensor PreActBottleneckImpl::forward(const torch::Tensor& x) {
  auto norm = [](torch::nn::GroupNorm& gn, const torch::Tensor& t) { return gn(ToParamDtype(t, gn->weight)); };
  torch::Tensor residual = downsample ? norm(gn_proj, downsample(x)) : x;
  torch::Tensor y = torch::relu(norm(gn1, conv1(x)));
  y = torch::relu(norm(gn2, conv2(y)));
  y = norm(gn3, conv3(y));
  return torch::relu(residual + y);
}

ResNetV2Impl::ResNetV2Impl(const std::vector<int>& units, int width, int in_channels) {
  TORCH_CHECK(units.size() == 3, "ResNetV2 here has exactly 3 stages");
  root = torch::nn::Sequential();
  root->push_back("conv", StdConv2d(in_channels, width, 7, 2, 3));
  root->push_back("gn", torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, width).eps(1e-6)));
  root->push_back("relu", torch::nn::ReLU());
  register_module("root", root);

  body = register_module("body", torch::nn::ModuleDict());
  int cin = width;
  for (size_t b = 0; b < units.size(); ++b) {
    const int cout = (width * 4) << b;  // 256, 512, 1024 at width 64
    const int cmid = width << b;        // 64, 128, 256
    stages_.push_back(ResNetStage(units[b], cin, cout, cmid, b == 0 ? 1 : 2));
    body->update(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{
        {"block" + std::to_string(b + 1), stages_.back().ptr()}});
    cin = cout;
  }
}

ResNetStageImpl::ResNetStageImpl(int units, int cin, int cout, int cmid, int first_stride) {
  for (int u = 1; u <= units; ++u) {
    units_.push_back(register_module(
        "unit" + std::to_string(u),
        PreActBottleneck(u == 1 ? cin : cout, cout, cmid, u == 1 ? first_stride : 1)));
  }
}

torch::Tensor ResNetStageImpl::forward(torch::Tensor x) {
  for (auto& unit : units_) x = unit(x);
  return x;
}

ResNetFeatures ResNetV2Impl::forward(const torch::Tensor& input) {
  const int64_t in_size = input.size(2);
  ResNetFeatures out;
  // root: conv, gn, relu (the norm in its parameters' precision).
  torch::Tensor x = root[0]->as<StdConv2d>()->forward(input);
  torch::nn::GroupNormImpl* gn = root[1]->as<torch::nn::GroupNorm>();
  x = torch::relu(gn->forward(ToParamDtype(x, gn->weight)));
  out.skips.push_back(x);
  x = torch::max_pool2d(x, /*kernel_size=*/3, /*stride=*/2, /*padding=*/0);
  for (size_t i = 0; i + 1 < stages_.size(); ++i) {
    x = stages_[i](x);
    // The reference zero-pads the block output bottom/right to S/4 (resp.
    // S/8) for the skip only: 55 -> 56 at S = 224.
    const int64_t right = in_size / 4 / static_cast<int64_t>(i + 1);
    const int64_t pad = right - x.size(2);
    TORCH_CHECK(pad >= 0 && pad < 3, "unexpected feature size ", x.size(2), " (want ", right, ")");
    out.skips.push_back(pad == 0 ? x : torch::constant_pad_nd(x, {0, pad, 0, pad}, 0));
  }
  out.x = stages_.back()(x);
  std::reverse(out.skips.begin(), out.skips.end());
  return out;
}

}  // namespace retina::trainer
