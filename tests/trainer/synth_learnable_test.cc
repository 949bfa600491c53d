// retina-synth data is learnable: the tiny TransUNet, fine-tuned for a few
// hundred steps on synthetic tiles (through the real loader and fine-tuning
// augmentation), segments mitochondria on a held-out synthetic volume far
// better than chance.
#include <gtest/gtest.h>

#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/augment.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/loader.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/sampler.h"
#include "trainer/data/tools/synth.h"
#include "trainer/data/formats/writers.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;

double Iou(const torch::Tensor& pred, const torch::Tensor& truth) {
  const double inter = (pred & truth).sum().item<double>(), uni = (pred | truth).sum().item<double>();
  return uni == 0 ? 1.0 : inter / uni;
}

TEST(SynthLearnable, TinyModelLearnsMitochondria) {
  torch::manual_seed(0);
  retina::testing::ScopedTempDir tmp("learn-");
  // A benchmark folder of synthetic volumes, imported like real data.
  for (const auto& [split, n, seed0] : {std::tuple<std::string, int, int>{"train", 2, 0}, {"test", 1, 100}}) {
    fs::create_directories(tmp.path() / "bench" / split / "images");
    fs::create_directories(tmp.path() / "bench" / split / "masks");
    for (int i = 0; i < n; ++i) {
      SynthOptions o;
      o.shape = {8, 128, 128};
      o.seed = seed0 + i;
      const SynthVolume v = Synthesize(o);
      const std::string name = "v" + std::to_string(i) + ".tif";
      ASSERT_TRUE(WriteTiff((tmp.path() / "bench" / split / "images" / name).string(), v.image, false).ok());
      ASSERT_TRUE(WriteTiff((tmp.path() / "bench" / split / "masks" / name).string(), v.mask, false).ok());
    }
  }
  ImportOptions io;
  io.kind = *LookupImportKind("folder");
  io.input = tmp.path() / "bench";
  io.out = tmp.path() / "datasets" / "synth";
  io.size = 128;
  absl::StatusOr<ImportResult> imported = ImportBenchmark(io);
  ASSERT_TRUE(imported.ok()) << imported.status();
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(io.out, false);
  ASSERT_TRUE(ds.ok());
  const double mean = (*ds)->manifest().mean, std = (*ds)->manifest().std;

  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 1, ModelHead::kSegmentation);
  VisionTransformer model(*c);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(1e-4));
  FinetuneConfig fc;
  fc.foreground_crop_p = 0.8;
  FinetuneAugmenter augment(fc, mean, std, 64);
  torch::Generator gen = at::detail::createCPUGenerator(1);

  // The held-out volume's xy planes at 64 x 64 (2x downsampled), for IoU.
  absl::StatusOr<RawArray> test_image = ReadArray((tmp.path() / "datasets/synth-test/item-00000.h5").string() + ":/image");
  absl::StatusOr<RawArray> test_mask = ReadArray((tmp.path() / "datasets/synth-test/item-00000.h5").string() + ":/mask");
  ASSERT_TRUE(test_image.ok() && test_mask.ok());
  auto down = [](const RawArray& a) {
    return torch::from_blob(const_cast<uint8_t*>(a.bytes.data()), {8, 128, 128}, torch::kByte)
        .slice(1, 0, 128, 2).slice(2, 0, 128, 2).clone();
  };
  const torch::Tensor x_test = (down(*test_image).unsqueeze(1).to(torch::kFloat) / 255 - mean) / std;
  const torch::Tensor y_test = down(*test_mask) == 1;
  auto evaluate = [&] {
    torch::NoGradGuard no_grad;
    model->eval();
    const double iou = Iou(model(x_test).squeeze(1) > 0, y_test);
    model->train();
    return iou;
  };
  const double before = evaluate();

  auto sampler = *DistributedSampler::Create((*ds)->size(), 0, 1, 0);
  for (int epoch = 0; epoch < 40; ++epoch) {
    std::vector<std::vector<int64_t>> batches;
    while (sampler.per_rank() >= 4) batches.push_back(sampler.Next(4));
    auto loader = Loader::Create(ds->get(), batches, LoaderOptions{2, 4, /*with_masks=*/true, false});
    ASSERT_TRUE(loader.ok());
    while (std::optional<RawBatch> b = (*loader)->Next()) {
      const FinetuneBatch fb = augment(b->images, b->masks, gen);
      const torch::Tensor logits = model(fb.image).squeeze(1);
      const torch::Tensor target = (fb.mask == 1).to(torch::kFloat);
      const torch::Tensor p = torch::sigmoid(logits);
      const torch::Tensor dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5);
      const torch::Tensor loss = 0.5 * torch::binary_cross_entropy_with_logits(logits, target) + 0.5 * dice;
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    sampler.NextEpoch();
  }
  const double after = evaluate();
  const double fraction = y_test.to(torch::kDouble).mean().item<double>();
  std::printf("held-out IoU: before %.3f, after %.3f (mitochondria fraction %.3f)\n", before, after, fraction);
  EXPECT_GT(after, 0.5);
  EXPECT_GT(after, before + 0.25);
}

}  // namespace
}  // namespace retina::trainer
