#include "trainer/data/augment.h"

#include <gtest/gtest.h>

#include <set>

#include "common/job_config.h"

namespace retina::trainer {
namespace {

PretrainAugmentConfig NoAugmentation() {
  PretrainAugmentConfig c;
  c.hflip_p = c.vflip_p = c.rotate_p = c.brightness_contrast_p = c.noise_p = c.blur_p = c.dropout_p = 0;
  c.crop_scale = {1, 1};  // the resized crop always applies; make it the whole image
  c.crop_ratio = {1, 1};
  return c;
}

GeometryParams Geometry(int64_t b, bool h, bool v, float angle, std::array<float, 4> crop) {
  GeometryParams p;
  p.hflip = torch::full({b}, h, torch::kBool);
  p.vflip = torch::full({b}, v, torch::kBool);
  p.angle_deg = torch::full({b}, angle);
  p.crop = torch::tensor({crop[0], crop[1], crop[2], crop[3]}).repeat({b, 1});
  return p;
}

torch::Tensor Warp(const torch::Tensor& img, const GeometryParams& p, int64_t out) {
  const torch::Tensor x = img.unsqueeze(0).unsqueeze(0).to(torch::kFloat);
  return WarpBatch(x, GeometryMatrices(p, img.size(0), img.size(1), out, out), out, out, false).squeeze();
}

TEST(Geometry, IdentityFlipsRotationAndCropAreExact) {
  const torch::Tensor img = torch::randint(0, 256, {32, 32}, torch::kByte).to(torch::kFloat);
  // affine_grid's float round-off moves samples by < 0.01 grey levels.
  EXPECT_TRUE(torch::allclose(Warp(img, Geometry(1, false, false, 0, {0, 0, 32, 32}), 32), img, 0, 1e-2));
  EXPECT_TRUE(torch::allclose(Warp(img, Geometry(1, true, false, 0, {0, 0, 32, 32}), 32), img.flip({1}), 0, 1e-2));
  EXPECT_TRUE(torch::allclose(Warp(img, Geometry(1, false, true, 0, {0, 0, 32, 32}), 32), img.flip({0}), 0, 1e-2));
  // cv2's positive angle is counter-clockwise, like np.rot90(k=1).
  EXPECT_TRUE(torch::allclose(Warp(img, Geometry(1, false, false, 90, {0, 0, 32, 32}), 32), torch::rot90(img, 1, {0, 1}),
                              0, 1e-2));
  const torch::Tensor big = torch::randint(0, 256, {48, 40}, torch::kByte).to(torch::kFloat);
  EXPECT_TRUE(torch::allclose(Warp(big, Geometry(1, false, false, 0, {7, 5, 32, 32}), 32),
                              big.slice(0, 5, 37).slice(1, 7, 39), 0, 1e-2));
  // Nearest-neighbour warping keeps label values in the label set.
  const torch::Tensor labels = torch::randint(0, 3, {1, 1, 32, 32}).to(torch::kFloat);
  GeometryParams p = Geometry(1, true, false, 33, {3, 2, 20, 25});
  const torch::Tensor warped = WarpBatch(labels, GeometryMatrices(p, 32, 32, 32, 32), 32, 32, /*nearest=*/true);
  EXPECT_TRUE(torch::all((warped == 0) | (warped == 1) | (warped == 2)).item<bool>());
}

TEST(Pretrain, CorruptionTouchesOnlyTheInputAndNormalises) {
  const torch::Tensor raw = torch::randint(1, 256, {4, 32, 32}, torch::kByte);
  torch::Generator gen = at::detail::createCPUGenerator(1);
  PretrainAugmenter none(NoAugmentation(), 0.5, 0.25, 32);
  PretrainBatch b = none(raw, gen);
  EXPECT_TRUE(torch::allclose(b.target.squeeze(1), (raw.to(torch::kFloat) / 255 - 0.5) / 0.25, 0, 1e-4));
  EXPECT_TRUE(torch::equal(b.input, b.target));

  PretrainAugmentConfig holes = NoAugmentation();
  holes.dropout_p = 1;
  PretrainAugmenter drop(holes, 0.0, 1.0, 32);
  gen = at::detail::createCPUGenerator(2);
  b = drop(raw, gen);
  EXPECT_TRUE(torch::allclose(b.target.squeeze(1), raw.to(torch::kFloat) / 255, 0, 1e-4));  // target untouched
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t n = b.corruption.holes[i].item<int64_t>();
    ASSERT_GE(n, 1);
    ASSERT_LE(n, 32);
    torch::Tensor covered = torch::zeros({32, 32}, torch::kBool);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t y = b.corruption.hole_yx[i][k][0].item<int64_t>(), x = b.corruption.hole_yx[i][k][1].item<int64_t>();
      ASSERT_LE(y + 16, 32);
      ASSERT_LE(x + 16, 32);
      covered.slice(0, y, y + 16).slice(1, x, x + 16).fill_(true);
    }
    const torch::Tensor in = b.input[i][0], tg = b.target[i][0];
    EXPECT_TRUE(torch::all(in.masked_select(covered) == 0).item<bool>()) << "a hole pixel is not 0";
    EXPECT_TRUE(torch::equal(in.masked_select(~covered), tg.masked_select(~covered))) << "outside the holes changed";
  }
}

TEST(Pretrain, BrightnessContrastAndBlurFollowTheirFormulas) {
  PretrainAugmentConfig c = NoAugmentation();
  PretrainAugmenter aug(c, 0, 1, 16);
  const torch::Tensor grey = torch::full({1, 1, 16, 16}, 100.0f);
  CorruptionParams p = aug.SampleCorruption(1, 16, 16, *std::make_unique<torch::Generator>(at::detail::createCPUGenerator(0)));
  p.alpha.fill_(1.2f);
  p.beta.fill_(-30.0f);
  EXPECT_NEAR(aug.Corrupt(grey, p, nullptr)[0][0][3][3].item<float>(), 90.0f, 1e-4);  // 1.2 * 100 - 30
  p.beta.fill_(200.0f);
  EXPECT_NEAR(aug.Corrupt(grey, p, nullptr)[0][0][3][3].item<float>(), 255.0f, 1e-4);  // clipped
  // Blur kernels: sum 1, sigma = 0.3((k-1)/2 - 1) + 0.8; constant images stay constant.
  for (int k : {3, 5, 7}) {
    const torch::Tensor g = GaussianKernel1d(k);
    EXPECT_NEAR(g.sum().item<float>(), 1.0f, 1e-6);
    const double sigma = 0.3 * ((k - 1) / 2.0 - 1) + 0.8;
    EXPECT_NEAR(g[0].item<float>() / g[(k - 1) / 2].item<float>(), std::exp(-((k - 1) / 2.0) * ((k - 1) / 2.0) / (2 * sigma * sigma)), 1e-5);
  }
  p.alpha.fill_(1);
  p.beta.fill_(0);
  p.blur_kernel.fill_(7);
  EXPECT_TRUE(torch::allclose(aug.Corrupt(grey, p, nullptr), grey, 1e-4, 1e-4));
  // On an impulse, the blur reproduces the kernel's outer product.
  torch::Tensor impulse = torch::zeros({1, 1, 16, 16});
  impulse[0][0][8][8] = 1;
  p.blur_kernel.fill_(5);
  const torch::Tensor g5 = GaussianKernel1d(5);
  EXPECT_TRUE(torch::allclose(aug.Corrupt(impulse, p, nullptr)[0][0].slice(0, 6, 11).slice(1, 6, 11),
                              torch::outer(g5, g5), 1e-5, 1e-6));
}

TEST(Pretrain, ParameterStatisticsMatchTheMethod) {
  PretrainAugmentConfig c;  // METHOD.md defaults
  PretrainAugmenter aug(c, 0.57287007, 0.12740536, 224);
  torch::Generator gen = at::detail::createCPUGenerator(123);
  constexpr int64_t kN = 20000;
  const GeometryParams g = aug.SampleGeometry(kN, 224, 224, gen);
  const CorruptionParams p = aug.SampleCorruption(kN, 224, 224, gen);
  auto rate = [](const torch::Tensor& t) { return t.to(torch::kDouble).mean().item<double>(); };
  constexpr double kTol = 0.015;  // ~4 standard deviations at p = 0.5, n = 20000
  EXPECT_NEAR(rate(g.hflip), 0.5, kTol);
  EXPECT_NEAR(rate(g.vflip), 0.5, kTol);
  EXPECT_NEAR(rate(g.angle_deg != 0), 0.5, kTol);
  EXPECT_LE(g.angle_deg.abs().max().item<float>(), 90.0f);
  EXPECT_GT(g.angle_deg.abs().max().item<float>(), 85.0f);
  const torch::Tensor area = g.crop.select(1, 2) * g.crop.select(1, 3) / (224.0 * 224.0);
  EXPECT_GE(area.min().item<float>(), 0.07f);  // 0.08 up to rounding of the sides
  EXPECT_LE(area.max().item<float>(), 1.0f);
  const torch::Tensor aspect = g.crop.select(1, 2) / g.crop.select(1, 3);
  EXPECT_GE(aspect.min().item<float>(), 0.45f);
  EXPECT_LE(aspect.max().item<float>(), 1.6f);
  EXPECT_TRUE(torch::all(g.crop.select(1, 0) + g.crop.select(1, 2) <= 224).item<bool>());
  EXPECT_NEAR(rate(p.bc_apply), 0.5, kTol);
  EXPECT_NEAR(rate(p.noise_apply), 0.5, kTol);
  const torch::Tensor var = p.noise_sigma.masked_select(p.noise_apply).square();
  EXPECT_GE(var.min().item<float>(), 400.0f - 1e-2);
  EXPECT_LE(var.max().item<float>(), 1200.0f + 1e-2);
  const torch::Tensor k = p.blur_kernel;
  EXPECT_NEAR(rate(k > 0), 0.5, kTol);
  EXPECT_NEAR(rate(k == 3) / rate(k > 0), 0.2, 0.02);
  EXPECT_NEAR(rate(k == 5) / rate(k > 0), 0.4, 0.025);
  EXPECT_NEAR(rate(p.holes > 0), 0.5, kTol);
  const torch::Tensor holes = p.holes.masked_select(p.holes > 0);
  EXPECT_EQ(holes.min().item<int64_t>(), 1);
  EXPECT_EQ(holes.max().item<int64_t>(), 32);
  EXPECT_NEAR(holes.to(torch::kDouble).mean().item<double>(), 16.5, 0.3);
  EXPECT_NEAR(rate(p.alpha.masked_select(p.bc_apply) - 1), 0.0, 0.01);
  EXPECT_LE((p.alpha - 1).abs().max().item<float>(), 0.3f + 1e-6);
  EXPECT_LE(p.beta.abs().max().item<float>(), 0.3f * 255 + 1e-3);
}

TEST(Pretrain, ReproducibleForASeed) {
  const torch::Tensor raw = torch::randint(0, 256, {3, 40, 40}, torch::kByte);
  PretrainAugmenter aug(PretrainAugmentConfig{}, 0.5, 0.2, 32);
  torch::Generator a = at::detail::createCPUGenerator(9), b = at::detail::createCPUGenerator(9);
  const PretrainBatch x = aug(raw, a), y = aug(raw, b);
  EXPECT_TRUE(torch::equal(x.input, y.input));
  EXPECT_TRUE(torch::equal(x.target, y.target));
  const PretrainBatch z = aug(raw, a);  // the generator moved on
  EXPECT_FALSE(torch::equal(x.input, z.input));
  EXPECT_EQ(x.input.sizes(), (std::vector<int64_t>{3, 1, 32, 32}));
}

}  // namespace
}  // namespace retina::trainer

namespace retina::trainer {
namespace {

FinetuneConfig Plain() {
  FinetuneConfig c;
  c.brightness_contrast_p = 0;
  c.noise_blur = false;
  return c;
}

TEST(Finetune, ImageAndMaskShareTheGeometryAndLabelsStayLabels) {
  // Blocky labels 0..2 on 8x8 blocks; image = 60 * label + 40.
  torch::Tensor mask = torch::randint(0, 3, {6, 8, 8}, torch::kByte).repeat_interleave(8, 1).repeat_interleave(8, 2);
  const torch::Tensor image = (mask.to(torch::kInt) * 60 + 40).to(torch::kByte);
  FinetuneAugmenter aug(Plain(), 0.0, 1.0, 64);
  torch::Generator gen = at::detail::createCPUGenerator(5);
  const FinetuneBatch b = aug(image, mask, gen);
  ASSERT_EQ(b.mask.sizes(), (std::vector<int64_t>{6, 64, 64}));
  EXPECT_TRUE(torch::all((b.mask >= 0) & (b.mask <= 2)).item<bool>());
  // Where the image is (close to) a pure level, the mask holds the matching label.
  const torch::Tensor grey = b.image.squeeze(1) * 255;
  const torch::Tensor expected_label = ((grey - 40) / 60).round();
  const torch::Tensor pure = ((grey - 40) / 60 - expected_label).abs() < 0.01;
  const double agree = (b.mask == expected_label.to(torch::kLong)).masked_select(pure).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(pure.to(torch::kDouble).mean().item<double>(), 0.5);
  EXPECT_GT(agree, 0.99);
}

TEST(Finetune, ForegroundCropFindsSmallObjectsAndSmallInputsArePadded) {
  torch::Tensor mask = torch::zeros({200, 256, 256}, torch::kByte);
  mask.slice(1, 200, 206).slice(2, 30, 36).fill_(1);  // one 6x6 object
  const torch::Tensor image = torch::full({200, 256, 256}, 128, torch::kByte);
  auto hit_rate = [&](double p) {
    FinetuneConfig c = Plain();
    c.foreground_crop_p = p;
    c.rotate_p = 0;
    FinetuneAugmenter aug(c, 0.5, 0.2, 224);
    torch::Generator gen = at::detail::createCPUGenerator(3);
    const GeometryParams g = aug.SampleGeometry(mask, gen);
    // Does each crop window contain the object?
    const torch::Tensor x0 = g.crop.select(1, 0), y0 = g.crop.select(1, 1), cw = g.crop.select(1, 2), ch = g.crop.select(1, 3);
    return ((x0 <= 30) & (x0 + cw >= 36) & (y0 <= 200) & (y0 + ch >= 206)).to(torch::kDouble).mean().item<double>();
  };
  EXPECT_GT(hit_rate(1.0), 0.95);
  EXPECT_LT(hit_rate(0.0), hit_rate(1.0) - 0.3);

  FinetuneAugmenter aug(Plain(), 0.0, 1.0, 224);
  torch::Generator gen = at::detail::createCPUGenerator(1);
  const FinetuneBatch b = aug(torch::full({2, 100, 150}, 7, torch::kByte), torch::ones({2, 100, 150}, torch::kByte), gen);
  EXPECT_EQ(b.image.sizes(), (std::vector<int64_t>{2, 1, 224, 224}));
  EXPECT_TRUE(torch::all(b.mask == 1).item<bool>());  // reflect padding repeats the mask too
}

// The recipe as data (issue 20): plain crops and 90-degree rotations are
// exact resamplings of the input; flips and noise/blur follow their keys.
TEST(Finetune, PlainCropsRot90FlipsAndBlurFollowTheirKeys) {
  // Distinct values per pixel: a 96x96 image whose pixel (y, x) holds (y * 96 + x) % 251.
  const torch::Tensor ramp = (torch::arange(96 * 96, torch::kInt) % 251).to(torch::kByte).view({1, 96, 96});
  const torch::Tensor image = ramp.repeat({16, 1, 1});
  const torch::Tensor mask = image.clone();
  FinetuneConfig c = Plain();
  c.crop = CropKind::kRandom;
  c.rotate_p = 0;
  c.hflip_p = c.vflip_p = 0;
  FinetuneAugmenter plain(c, 0.0, 1.0, 64);
  torch::Generator gen = at::detail::createCPUGenerator(9);
  const FinetuneBatch b = plain(image, mask, gen);
  const auto crop = b.geometry.crop.accessor<float, 2>();
  std::set<std::pair<int, int>> origins;
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(crop[i][2], 64);
    EXPECT_EQ(crop[i][3], 64);
    const int x0 = static_cast<int>(crop[i][0]), y0 = static_cast<int>(crop[i][1]);
    origins.insert({x0, y0});
    const torch::Tensor want = mask[i].slice(0, y0, y0 + 64).slice(1, x0, x0 + 64).to(torch::kLong);
    EXPECT_TRUE(torch::equal(b.mask[i], want)) << "a plain crop is the input window itself, sample " << i;
    EXPECT_LT((b.image[i][0] * 255 - want.to(torch::kFloat)).abs().max().item<float>(), 1e-2);
  }
  EXPECT_GT(origins.size(), 8u) << "crops at random places";

  c.rotate90_p = 1.0;
  FinetuneAugmenter rot(c, 0.0, 1.0, 64);
  gen = at::detail::createCPUGenerator(9);
  const FinetuneBatch r = rot(image, mask, gen);
  std::set<int> quarter_turns;
  for (int64_t i = 0; i < 16; ++i) {
    const float angle = r.geometry.angle_deg[i].item<float>();
    const int k = static_cast<int>(std::lround(angle / 90.0f));
    EXPECT_FLOAT_EQ(angle, 90.0f * k);
    quarter_turns.insert(k);
    const auto cr = r.geometry.crop.accessor<float, 2>();
    const torch::Tensor window = mask[i].slice(0, cr[i][1], cr[i][1] + 64).slice(1, cr[i][0], cr[i][0] + 64).to(torch::kLong);
    // cv2's positive angle turns counter-clockwise: torch.rot90 with k quarter turns.
    bool any = false;
    for (int turns = 0; turns < 4; ++turns) any |= torch::equal(r.mask[i], torch::rot90(window, turns, {0, 1}));
    EXPECT_TRUE(any) << "a k x 90 rotation is a lossless permutation of the window, sample " << i;
    EXPECT_TRUE(torch::equal(r.mask[i], torch::rot90(window, k, {0, 1})) ||
                torch::equal(r.mask[i], torch::rot90(window, -k, {0, 1})));
  }
  EXPECT_EQ(quarter_turns.size(), 4u) << "k ~ U{0..3}";

  // Flip probabilities and the blur kernel range are the keys' values.
  FinetuneConfig f = Plain();
  f.hflip_p = 1.0;
  f.vflip_p = 0.0;
  FinetuneAugmenter flips(f, 0.0, 1.0, 64);
  gen = at::detail::createCPUGenerator(2);
  const GeometryParams g = flips.SampleGeometry(mask, gen);
  EXPECT_TRUE(torch::all(g.hflip).item<bool>());
  EXPECT_FALSE(torch::any(g.vflip).item<bool>());
  f.brightness_contrast_p = 0;
  f.blur_p = 1.0;
  f.blur_limit = 3;
  const torch::Tensor noisy = torch::randint(0, 256, {32, 64, 64}, torch::kByte);
  gen = at::detail::createCPUGenerator(4);
  FinetuneConfig none = f;
  none.blur_p = 0;
  const FinetuneBatch blurred = FinetuneAugmenter(f, 0.0, 1.0, 64)(noisy, noisy, gen);
  gen = at::detail::createCPUGenerator(4);
  const FinetuneBatch sharp = FinetuneAugmenter(none, 0.0, 1.0, 64)(noisy, noisy, gen);
  EXPECT_LT(blurred.image.std().item<float>(), 0.8f * sharp.image.std().item<float>()) << "blur_p 1 blurs";
}

TEST(Finetune, RecipeKeysParseWithThePapersDefaultsAndAreChecked) {
  absl::StatusOr<JobConfig> d = ParseJobConfig("kind: finetune\ndata: {dataset: x}\n", "t.yaml");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->finetune.crop, CropKind::kResized);
  EXPECT_EQ(d->finetune.crop_scale, (std::vector<double>{0.08, 1.0}));
  EXPECT_EQ(d->finetune.crop_ratio, (std::vector<double>{0.5, 1.5}));
  EXPECT_EQ(d->finetune.hflip_p, 0.5);
  EXPECT_EQ(d->finetune.rotate90_p, 0.0);
  EXPECT_EQ(d->finetune.blur_limit, 7);
  for (const auto& [yaml, field] : std::vector<std::pair<std::string, std::string>>{
           {"{crop: squash}", "finetune.crop"}, {"{crop_scale: [0.9, 0.1]}", "finetune.crop_scale"},
           {"{pad_to: 32}", "finetune.pad_to"}}) {
    absl::StatusOr<JobConfig> bad =
        ParseJobConfig("kind: finetune\ndata: {dataset: x}\nfinetune: " + yaml + "\n", "t.yaml");
    ASSERT_FALSE(bad.ok()) << yaml;
    EXPECT_NE(std::string(bad.status().message()).find(field), std::string::npos) << bad.status().message();
  }
}

}  // namespace
}  // namespace retina::trainer
