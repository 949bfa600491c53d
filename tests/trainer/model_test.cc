// Components of the TransUNet against closed-form values, shapes and counts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "trainer/model/decoder.h"
#include "trainer/model/dropout.h"
#include "trainer/model/resnet_v2.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/transfer.h"
#include "trainer/model/transunet.h"
#include "trainer/model/vit.h"

namespace retina::trainer {
namespace {

using ::testing::HasSubstr;

TransUNetConfig Config(const std::string& name, int size, int classes = 1,
                       ModelHead head = ModelHead::kSegmentation) {
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig(name, size, classes, head);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(StdConv2d, StandardisesPerOutputChannel) {
  StdConv2d conv(2, 2, 1, 1, 0);
  {
    torch::NoGradGuard g;
    // Channel 0: weights (1, 3): mean 2, population var 1 -> (-1, 1)/sqrt(1 + 1e-5).
    // Channel 1: weights (5, 5): var 0 -> (0, 0).
    conv->weight.copy_(torch::tensor({1.f, 3.f, 5.f, 5.f}).view({2, 2, 1, 1}));
  }
  const torch::Tensor w = conv->standardized_weight().flatten();
  const float s = 1.f / std::sqrt(1.f + 1e-5f);
  EXPECT_NEAR(w[0].item<float>(), -s, 1e-6);
  EXPECT_NEAR(w[1].item<float>(), s, 1e-6);
  EXPECT_NEAR(w[2].item<float>(), 0.f, 1e-6);
  // The convolution uses the standardised weight: x = (2, 7) per pixel.
  torch::Tensor x = torch::tensor({2.f, 7.f}).view({1, 2, 1, 1});
  torch::Tensor y = conv(x).flatten();
  EXPECT_NEAR(y[0].item<float>(), 5.f * s, 1e-5);
  EXPECT_NEAR(y[1].item<float>(), 0.f, 1e-6);
}

TEST(PreActBottleneck, GroupNormGroupsAndEps) {
  PreActBottleneck unit(64, 256, 64, 1);  // cin != cout: has downsample + gn_proj
  int found = 0;
  for (const auto& m : unit->named_modules()) {
    auto* gn = m.value()->as<torch::nn::GroupNormImpl>();
    if (gn == nullptr) continue;
    ++found;
    if (m.key() == "gn_proj") {
      EXPECT_EQ(gn->options.num_groups(), 256);  // one group per channel
      EXPECT_DOUBLE_EQ(gn->options.eps(), 1e-5);
    } else {
      EXPECT_EQ(gn->options.num_groups(), 32) << m.key();
      EXPECT_DOUBLE_EQ(gn->options.eps(), 1e-6) << m.key();
    }
  }
  EXPECT_EQ(found, 4);
  PreActBottleneck same(256, 256, 64, 1);  // identity residual: no projection
  EXPECT_EQ(GetStateDict(*same).size(), 9u);
}

TEST(ResNetV2, PoolPadAndSkipSizesAt224) {
  torch::NoGradGuard g;
  ResNetV2 trunk(std::vector<int>{1, 1, 1}, 32, 3);  // sizes do not depend on depth
  ResNetFeatures f = trunk(torch::randn({1, 3, 224, 224}));
  EXPECT_EQ(f.x.sizes(), (std::vector<int64_t>{1, 512, 14, 14}));
  ASSERT_EQ(f.skips.size(), 3u);
  EXPECT_EQ(f.skips[0].sizes(), (std::vector<int64_t>{1, 256, 28, 28}));
  EXPECT_EQ(f.skips[1].sizes(), (std::vector<int64_t>{1, 128, 56, 56}));  // 55 padded to 56
  EXPECT_EQ(f.skips[2].sizes(), (std::vector<int64_t>{1, 32, 112, 112}));
  // The padding is zeros at the bottom row and right column only.
  EXPECT_EQ(f.skips[1].select(2, 55).abs().sum().item<float>(), 0.f);
  EXPECT_EQ(f.skips[1].select(3, 55).abs().sum().item<float>(), 0.f);
  EXPECT_GT(f.skips[1].select(2, 54).abs().sum().item<float>(), 0.f);
}

TEST(UpsampleBilinear2x, AlignCornersTrue) {
  torch::Tensor x = torch::tensor({0.f, 1.f, 2.f, 3.f}).view({1, 1, 2, 2});
  torch::Tensor y = UpsampleBilinear2x(x).squeeze();
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{4, 4}));
  // align_corners=True: corners exact, sample at i * (2-1)/(4-1) = i/3.
  EXPECT_FLOAT_EQ(y[0][0].item<float>(), 0.f);
  EXPECT_FLOAT_EQ(y[3][3].item<float>(), 3.f);
  EXPECT_NEAR(y[0][1].item<float>(), 1.f / 3, 1e-6);
  EXPECT_NEAR(y[1][0].item<float>(), 2.f / 3, 1e-6);
  EXPECT_NEAR(y[1][1].item<float>(), 1.f, 1e-6);  // 2/3 + 1/3
}

TEST(Attention, MatchesSoftmaxFormula) {
  TransUNetConfig c = Config("tiny", 64);
  c.hidden_size = 4;
  c.num_heads = 1;
  Attention attn(c);
  attn->eval();
  torch::NoGradGuard g;
  for (auto& p : attn->named_parameters()) {
    if (p.key().find("weight") != std::string::npos) p.value().copy_(torch::eye(4));
    else p.value().zero_();
  }
  torch::Tensor x = torch::randn({1, 3, 4});
  torch::Tensor expected = torch::softmax(torch::matmul(x, x.transpose(1, 2)) / 2.0, -1).matmul(x);
  EXPECT_TRUE(torch::allclose(attn(x), expected, 1e-5, 1e-6));
}

TEST(Mlp, ExactErfGelu) {
  TransUNetConfig c = Config("tiny", 64);
  c.hidden_size = 5;
  c.mlp_dim = 5;
  Mlp mlp(c);
  mlp->eval();
  torch::NoGradGuard g;
  for (auto& p : mlp->named_parameters()) {
    if (p.key().find("weight") != std::string::npos) p.value().copy_(torch::eye(5));
    else p.value().zero_();
  }
  torch::Tensor x = torch::tensor({-3.f, -1.f, 0.5f, 1.f, 2.5f}).view({1, 1, 5});
  torch::Tensor y = mlp(x).flatten();
  for (int i = 0; i < 5; ++i) {
    const double v = x.flatten()[i].item<float>();
    const double exact = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    EXPECT_NEAR(y[i].item<float>(), exact, 1e-6) << v;  // the tanh form is off by ~1e-3 here
  }
}

TEST(Mlp, ReferenceInitialisation) {
  torch::manual_seed(0);
  Mlp mlp(Config("r50-vit-b16", 224));
  auto params = mlp->named_parameters();
  const torch::Tensor w = params["fc1.weight"];
  const double bound = std::sqrt(6.0 / (768 + 3072));  // xavier-uniform
  EXPECT_LE(w.abs().max().item<float>(), bound);
  EXPECT_GT(w.abs().max().item<float>(), 0.9 * bound);
  EXPECT_LT(params["fc1.bias"].abs().max().item<float>(), 1e-5);  // N(0, 1e-6)
  EXPECT_GT(params["fc1.bias"].abs().max().item<float>(), 0.f);
}

TEST(VisionTransformer, ForwardShapesAndImageSizes) {
  torch::NoGradGuard g;
  for (int size : {32, 64, 96}) {
    VisionTransformer m(Config("tiny", size, 3));
    m->eval();
    EXPECT_EQ(m(torch::randn({2, 1, size, size})).sizes(), (std::vector<int64_t>{2, 3, size, size}));
  }
  VisionTransformer recon(Config("tiny", 64, 1, ModelHead::kReconstruction));
  recon->eval();
  EXPECT_EQ(recon(torch::randn({1, 3, 64, 64})).sizes(), (std::vector<int64_t>{1, 1, 64, 64}));
  EXPECT_THROW(recon(torch::randn({1, 1, 96, 96})), c10::Error);  // built for 64
  EXPECT_FALSE(NamedModelConfig("tiny", 100, 1, ModelHead::kSegmentation).ok());
  EXPECT_FALSE(NamedModelConfig("vit-huge", 224, 1, ModelHead::kSegmentation).ok());
}

TEST(VisionTransformer, ParameterCountsOfTheReference) {
  EXPECT_EQ(CountParameters(*VisionTransformer(Config("r50-vit-b16", 224, 1, ModelHead::kReconstruction))).total,
            105276066);
  EXPECT_EQ(CountParameters(*VisionTransformer(Config("r50-vit-b16", 224, 1))).total, 105275921);
  VisionTransformer seven(Config("r50-vit-b16", 224, 7));
  EXPECT_EQ(CountParameters(*seven).total, 105276791);
  EXPECT_EQ(GetStateDict(*seven).size(), 409u);
  int encoder_tensors = 0;
  int64_t encoder_params = 0;
  for (const auto& [name, t] : GetStateDict(*seven)) {
    if (name.rfind(kFrozenPrefix, 0) == 0) {
      ++encoder_tensors;
      encoder_params += t.numel();
    }
  }
  EXPECT_EQ(encoder_tensors, 194);
  EXPECT_EQ(encoder_params, 85056000);
}

TEST(Transfer, FreezesExactlyTheEncoderAndKeepsDecoderFresh) {
  // Full-width model at a small image size: the encoder is the real one.
  torch::manual_seed(1);
  VisionTransformer pretrained(Config("r50-vit-b16", 32, 1, ModelHead::kReconstruction));
  torch::manual_seed(2);
  VisionTransformer model(Config("r50-vit-b16", 32, 7));
  const StateDict before = GetStateDict(*model);
  size_t dec = 0;
  while (before[dec].first.rfind("decoder.", 0) != 0) ++dec;
  const torch::Tensor fresh_decoder = before[dec].second.clone();
  absl::StatusOr<LoadReport> report = TransferPretrained(*model, GetStateDict(*pretrained), true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->missing.empty());
  EXPECT_FALSE(report->dropped.empty());

  StateDict after = GetStateDict(*model), source = GetStateDict(*pretrained);
  EXPECT_THAT(after[dec].first, HasSubstr("decoder"));
  EXPECT_TRUE(torch::equal(after[dec].second, fresh_decoder));          // not transferred
  EXPECT_FALSE(torch::equal(after[dec].second, source[dec].second));
  EXPECT_TRUE(torch::equal(after[1].second, source[1].second));         // trunk transferred
  model->train();
  torch::Tensor loss = model(torch::randn({2, 1, 32, 32})).square().mean();
  loss.backward();
  int without_grad = 0, frozen_encoder = 0;
  for (const auto& p : model->named_parameters()) {
    if (!p.value().grad().defined()) ++without_grad;
    if (p.key().rfind(kFrozenPrefix, 0) == 0 && !p.value().requires_grad()) ++frozen_encoder;
  }
  EXPECT_EQ(without_grad, 194);
  EXPECT_EQ(frozen_encoder, 194);
}

TEST(LoadStateDict, StrictErrorsListNames) {
  VisionTransformer m(Config("tiny", 64, 3));
  StateDict d = GetStateDict(*VisionTransformer(Config("tiny", 64, 1)));
  const std::string removed = "transformer.embeddings.hybrid_model.body.block1.unit1.conv1.weight";
  d.erase(std::find_if(d.begin(), d.end(), [&](const auto& kv) { return kv.first == removed; }));
  d.emplace_back("decoder.extra.weight", torch::zeros({2}));
  absl::StatusOr<LoadReport> r = LoadStateDict(*m, d);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string msg(r.status().message());
  EXPECT_THAT(msg, HasSubstr("missing 1: transformer.embeddings.hybrid_model.body.block1.unit1.conv1.weight"));
  EXPECT_THAT(msg, HasSubstr("unexpected 1: decoder.extra.weight"));
  EXPECT_THAT(msg, HasSubstr("segmentation_head.0.weight: file [1, 16, 3, 3] vs model [3, 16, 3, 3]"));
  // Strict failure changes nothing; non-strict loads what matches.
  LoadOptions lenient;
  lenient.strict = false;
  r = LoadStateDict(*m, d, lenient);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->missing.size(), 1u);
  EXPECT_EQ(r->mismatched.size(), 2u);  // head weight and bias
}

}  // namespace
}  // namespace retina::trainer

namespace retina::trainer {
namespace {

TEST(HashDropout, KeepRateScaleDeterminismAndThreadIndependence) {
  const torch::Tensor like = torch::empty({3, 1000, 1000});
  const torch::Tensor m = HashDropoutMask(like, 0.1, 42);
  const double keep = (m > 0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(keep, 0.9, 0.001);  // 3e6 draws: sd 1.7e-4
  EXPECT_TRUE(torch::all((m == 0) | (m == static_cast<float>(1 / 0.9))).item<bool>());
  EXPECT_TRUE(torch::equal(m, HashDropoutMask(like, 0.1, 42)));
  EXPECT_FALSE(torch::equal(m, HashDropoutMask(like, 0.1, 43)));
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  EXPECT_TRUE(torch::equal(m, HashDropoutMask(like, 0.1, 42)));
  at::set_num_threads(threads);
  // Neighbouring elements are not correlated.
  const torch::Tensor k = (m > 0).to(torch::kDouble).flatten();
  const double both = (k.slice(0, 1) * k.slice(0, 0, -1)).mean().item<double>();
  EXPECT_NEAR(both, 0.81, 0.002);

  Dropout d(0.1);
  torch::Tensor x = torch::ones({1000});
  d->eval();
  EXPECT_TRUE(torch::equal(d(x), x));
  d->train();
  torch::manual_seed(3);
  const torch::Tensor a = d(x);
  torch::manual_seed(3);
  EXPECT_TRUE(torch::equal(a, d(x)));            // reproducible under manual_seed
  EXPECT_FALSE(torch::equal(a, d(x)));           // fresh mask per call
  EXPECT_NEAR(d(torch::ones({100000})).mean().item<float>(), 1.0, 0.01);  // unbiased
}

TEST(VisionTransformer, ChannelsLastIsNumericallyEquivalent) {
  torch::NoGradGuard g;
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 2, ModelHead::kSegmentation);
  ASSERT_TRUE(c.ok());
  VisionTransformer m(*c);
  m->eval();
  // float64: the layouts must agree to round-off (~1e-15) on any CPU; in
  // float32 the kernels' summation orders differ by ~1e-6 and more.
  m->to(torch::kDouble);
  const torch::Tensor x = torch::randn({2, 1, 64, 64}, torch::kDouble);
  const torch::Tensor a = m(x);
  m->SetChannelsLast(true);
  const torch::Tensor b = m(x);
  EXPECT_TRUE(torch::allclose(a, b, 1e-10, 1e-12)) << (a - b).abs().max().item<double>();
  // The module holds channels-last weights; SerializeStateDict writes them contiguous.
  for (const auto& [name, t] : GetStateDict(*m)) {
    if (t.dim() == 4) {
      EXPECT_TRUE(t.is_contiguous(torch::MemoryFormat::ChannelsLast)) << name;
    }
  }
  const std::vector<char> bytes = SerializeStateDict(GetStateDict(*m));
  EXPECT_GT(bytes.size(), 0u);
}

}  // namespace
}  // namespace retina::trainer
