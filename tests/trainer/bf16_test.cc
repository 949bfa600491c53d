// bf16 autocast on the CPU (runtime.precision: bf16): training tracks fp32
// within a measured band, inference agrees with fp32. These run on every CPU:
// autocast itself needs no bf16 units (without them oneDNN emulates, slower,
// with the same roundings), so the numbers hold wherever the plan allows bf16.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "trainer/engine/bf16_probe.h"
#include "trainer/prediction/inference.h"
#include "trainer/model/model_config.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"

namespace retina::trainer {
namespace {

VisionTransformer TinyModel(ModelHead head) {
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, head == ModelHead::kSegmentation ? 2 : 1, head);
  EXPECT_TRUE(c.ok()) << c.status();
  c->dropout_rate = 0;
  torch::manual_seed(7);
  return VisionTransformer(*c);
}

TEST(CpuBf16Autocast, TrainingLossTracksFp32Over20Steps) {
  // The same model, data and SGD recipe in fp32 and in bf16 autocast (fp32
  // weights, the loss in fp32). bf16 keeps 8 significant bits (2^-9 = 0.2%
  // relative rounding per value); the two losses differed by at most 0.20%
  // over these 20 steps (libtorch 1.13 and 2.6, AMD EPYC with avx512_bf16). The bound
  // of 3% leaves room for other CPUs' and versions' kernels and is what the
  // GPU test allows for its longer chain (5%). A run that does not use bf16
  // (autocast off) or keeps bf16 master weights fails the checks below.
  // Where this machine's CPU bf16 kernels break training (seen once with
  // Debian 13's 2.6), the probe must say so, and the Trainer then refuses
  // bf16 with it.
  if (const absl::Status probe = ProbeCpuBf16Training(); !probe.ok()) {
    EXPECT_EQ(probe.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(probe.message()), ::testing::HasSubstr("runtime.precision"));
    GTEST_SKIP() << "CPU bf16 training refused on this libtorch: " << probe.message();
  }
  VisionTransformer fp32 = TinyModel(ModelHead::kReconstruction), bf16 = TinyModel(ModelHead::kReconstruction);
  auto options = torch::optim::SGDOptions(0.003).momentum(0.9).weight_decay(1e-4);
  torch::optim::SGD opt32(fp32->parameters(), options), opt16(bf16->parameters(), options);
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({4, 1, 64, 64});
  double worst = 0, first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    double losses[2];
    for (int k = 0; k < 2; ++k) {
      VisionTransformer& m = k == 0 ? fp32 : bf16;
      torch::optim::SGD& o = k == 0 ? opt32 : opt16;
      o.zero_grad();
      torch::Tensor out;
      {
        Autocast autocast(torch::kCPU, k == 1);
        out = m(x);
        if (k == 1) {
          EXPECT_EQ(out.scalar_type(), torch::kBFloat16);  // the model did run in bf16
        }
      }
      torch::Tensor loss = torch::mse_loss(out.to(torch::kFloat), x);
      loss.backward();
      o.step();
      losses[k] = loss.item<double>();
    }
    if (step == 0) first = losses[1];
    last = losses[1];
    worst = std::max(worst, std::abs(losses[1] - losses[0]) / losses[0]);
  }
  for (const torch::Tensor& p : bf16->parameters()) ASSERT_EQ(p.scalar_type(), torch::kFloat);  // fp32 master weights
  std::printf("CPU bf16 vs fp32 loss over 20 steps: worst relative difference %.3g (bf16 loss %.4f -> %.4f)\n", worst,
              first, last);
  EXPECT_LT(worst, 0.03);
  EXPECT_LT(last, first);  // and it learns
}

TEST(CpuBf16Autocast, InferenceAgreesWithFp32) {
  // Window logits of a segmentation model in bf16 autocast against fp32:
  // measured max |diff| / max |logit| 0.68% on libtorch 1.13 and 0.72% on
  // Debian 13's 2.6 here, 6.8% with 2.6 on another EPYC VM (the one whose
  // bf16 training went NaN), labels equal on every pixel on all three;
  // bounds 15% and 98% of pixels (this random model's logits sit near 0,
  // the hardest case for argmax).
  VisionTransformer model = TinyModel(ModelHead::kSegmentation);
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({2, 1, 64, 64});
  const torch::Tensor a = ModelForward(model, false)(x), b = ModelForward(model, true)(x);
  EXPECT_EQ(b.scalar_type(), torch::kFloat);  // fp32 logits out of a bf16 forward
  const double rel = ((a - b).abs().max() / a.abs().max()).item<double>();
  const double agree = (a.argmax(1) == b.argmax(1)).to(torch::kDouble).mean().item<double>();
  std::printf("CPU bf16 vs fp32 inference: max |diff| / max |logit| %.3g, labels agree on %.4f of pixels\n", rel, agree);
  EXPECT_LT(rel, 0.15);
  EXPECT_GT(agree, 0.98);
  EXPECT_GT(rel, 0);  // it did run in bf16
}

}  // namespace
}  // namespace retina::trainer
