// The CUDA path (ctest label `gpu`; bench/gpu_check.sh runs these first on
// the GPU machine). Every test skips, saying why, where libtorch sees no CUDA
// device. Tolerances are stated from float arithmetic (they have not yet been
// measured on a GPU: each test prints its figure for the kit's report).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/augment.h"
#include "trainer/data/loader.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/shards.h"
#include "trainer/data/tools/synth.h"
#include "trainer/data/formats/writers.h"
#include "trainer/dist/communicator.h"
#include "trainer/dist/communicator_nccl.h"
#include "trainer/model/model_config.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_CUDA()                                                                                   \
  if (!torch::cuda::is_available())                                                                           \
  GTEST_SKIP() << "no CUDA device visible to this libtorch (" << TorchVersionString()                        \
               << "); the GPU kit runs these on a GPU machine: bench/gpu_check.sh"

const torch::Device kCuda(torch::kCUDA, 0);

VisionTransformer TinyModel(ModelHead head = ModelHead::kSegmentation) {
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 1, head);
  EXPECT_TRUE(c.ok());
  c->dropout_rate = 0;
  torch::manual_seed(7);
  return VisionTransformer(*c);
}

double MaxRel(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kCPU, torch::kDouble), y = b.to(torch::kCPU, torch::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-6)).item<double>();
}

TEST(Gpu, CudaForwardEqualsCpuForwardOnTheSameWeights) {
  SKIP_WITHOUT_CUDA();
  // Full fp32 on both (no TF32): only the order of float32 sums differs,
  // ~1e-6 relative per layer; 1e-4 of the output scale bounds ~30 layers.
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  VisionTransformer cpu = TinyModel(), gpu = TinyModel();
  gpu->to(kCuda);
  cpu->eval();
  gpu->eval();
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({2, 1, 64, 64});
  torch::NoGradGuard no_grad;
  const double rel = MaxRel(gpu(x.to(kCuda)), cpu(x));
  std::printf("CUDA vs CPU forward: max |diff| / max |out| = %.3g\n", rel);
  EXPECT_LT(rel, 1e-4);
}

TEST(Gpu, Bf16AutocastLossStaysWithinABandOfFp32Over20Steps) {
  SKIP_WITHOUT_CUDA();
  // bf16 keeps 8 significant bits (0.4% per rounding); over 20 SGD steps the
  // loss of the same run in bf16 autocast stays within 5% of fp32's.
  VisionTransformer fp32 = TinyModel(ModelHead::kReconstruction), bf16 = TinyModel(ModelHead::kReconstruction);
  fp32->to(kCuda);
  bf16->to(kCuda);
  auto options = torch::optim::SGDOptions(0.003).momentum(0.9).weight_decay(1e-4);
  torch::optim::SGD opt32(fp32->parameters(), options), opt16(bf16->parameters(), options);
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({4, 1, 64, 64}).to(kCuda);
  double worst = 0;
  for (int step = 0; step < 20; ++step) {
    double losses[2];
    for (int k = 0; k < 2; ++k) {
      VisionTransformer& m = k == 0 ? fp32 : bf16;
      torch::optim::SGD& o = k == 0 ? opt32 : opt16;
      o.zero_grad();
      torch::Tensor loss;
      {
        Autocast autocast(torch::kCUDA, k == 1);
        loss = torch::mse_loss(m(x), x).to(torch::kFloat);
      }
      loss.backward();
      o.step();
      losses[k] = loss.item<double>();
    }
    worst = std::max(worst, std::abs(losses[1] - losses[0]) / losses[0]);
  }
  std::printf("bf16 vs fp32 loss over 20 steps: worst relative difference %.3g\n", worst);
  EXPECT_LT(worst, 0.05);
}

class GpuData : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new retina::testing::ScopedTempDir("gpu-");
    fs::create_directories(tmp_->path() / "raw");
    for (int i = 0; i < 8; ++i) {
      SynthOptions o;
      o.shape = {1, 64, 64};
      o.seed = i;
      ASSERT_TRUE(WriteTiff((tmp_->path() / "raw" / absl::StrCat("i", i, ".tif")).string(), Synthesize(o).image, false).ok());
    }
    PackOptions p;
    p.input = (tmp_->path() / "raw").string();
    p.out = tmp_->path() / "em";
    p.size = 64;
    ASSERT_TRUE(PackImages(p).ok());
  }
  static void TearDownTestSuite() { delete tmp_; }
  static retina::testing::ScopedTempDir* tmp_;
};
retina::testing::ScopedTempDir* GpuData::tmp_ = nullptr;

TEST_F(GpuData, PinnedNonBlockingLoaderDeliversTheSameBatches) {
  SKIP_WITHOUT_CUDA();
  absl::StatusOr<std::unique_ptr<ShardedDataset>> data = ShardedDataset::Open(tmp_->path() / "em", false);
  ASSERT_TRUE(data.ok()) << data.status();
  const std::vector<std::vector<int64_t>> batches = {{0, 1, 2, 3}, {7, 5, 6, 4}};
  std::vector<torch::Tensor> got[2];
  for (int pinned = 0; pinned < 2; ++pinned) {
    LoaderOptions lo;
    lo.pin_memory = pinned == 1;
    absl::StatusOr<std::unique_ptr<Loader>> loader = Loader::Create(data->get(), batches, lo);
    ASSERT_TRUE(loader.ok()) << loader.status();
    while (std::optional<RawBatch> b = (*loader)->Next()) {
      ASSERT_TRUE(b->status.ok()) << b->status;
      if (pinned) {
        EXPECT_TRUE(b->images.is_pinned());
      }
      got[pinned].push_back(b->images.to(kCuda, /*non_blocking=*/true).to(torch::kCPU));
    }
  }
  ASSERT_EQ(got[0].size(), batches.size());
  ASSERT_EQ(got[1].size(), batches.size());
  for (size_t i = 0; i < batches.size(); ++i) EXPECT_TRUE(torch::equal(got[0][i], got[1][i])) << "batch " << i;
}

TEST(Gpu, FinetuneAugmentationOnCudaEqualsCpuForTheSameSeeds) {
  SKIP_WITHOUT_CUDA();
  // Parameters are drawn on the CPU from the same generator; the warp runs
  // on the device. Bilinear results agree to float rounding (1e-3 grey
  // levels = 4e-6 of the range); nearest-neighbour masks may differ only
  // where a sample point falls on a pixel boundary (< 0.5% of pixels).
  FinetuneConfig c;  // the paper's recipe, noise and blur off
  SynthOptions o;
  o.shape = {4, 96, 96};
  const SynthVolume v = Synthesize(o);
  const torch::Tensor images = torch::from_blob(const_cast<uint8_t*>(v.image.data.data()), {4, 96, 96}, torch::kByte).clone();
  const torch::Tensor masks = torch::from_blob(const_cast<uint8_t*>(v.mask.data.data()), {4, 96, 96}, torch::kByte).clone();
  const FinetuneAugmenter augment(c, 0.5, 0.25, 64);
  torch::Generator g1 = at::detail::createCPUGenerator(42), g2 = at::detail::createCPUGenerator(42);
  const FinetuneBatch cpu = augment(images, masks, g1);
  const FinetuneBatch gpu = augment(images.to(kCuda), masks.to(kCuda), g2);
  const double grey = (gpu.image.to(torch::kCPU) - cpu.image).abs().max().item<double>() * 0.25 * 255;
  const double mask_diff = gpu.mask.to(torch::kCPU).ne(cpu.mask).to(torch::kDouble).mean().item<double>();
  std::printf("augmentation CUDA vs CPU: images within %.3g grey levels, %.4f%% of mask pixels differ\n", grey,
              100 * mask_diff);
  EXPECT_LT(grey, 1e-3);
  EXPECT_LT(mask_diff, 0.005);
}

TEST(Gpu, NcclCommunicatorAllReducesAndAMissingPeerTimesOut) {
  SKIP_WITHOUT_CUDA();
  LaunchInfo launch;
  CommunicatorOptions co;
  co.backend = "nccl";
  co.cuda = true;
  co.timeout = std::chrono::seconds(5);
  // One rank: init and an all-reduce through NCCL itself (not Local).
  {
    launch.master_port = 29000 + static_cast<int>(::getpid() % 1000);
    absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateNcclCommunicator(launch, co);
    if (absl::IsUnimplemented(comm.status())) GTEST_SKIP() << comm.status().message();
    ASSERT_TRUE(comm.ok()) << comm.status();
    torch::Tensor t = torch::arange(8, torch::TensorOptions().device(kCuda).dtype(torch::kFloat));
    ASSERT_TRUE((*comm)->AllReduceSum(t, "smoke").ok());
    EXPECT_TRUE(torch::equal(t.to(torch::kCPU), torch::arange(8, torch::kFloat)));
  }
  // Two ranks, the peer never comes: init fails by the deadline, naming it.
  launch.world_size = 2;
  launch.master_port += 1;
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateNcclCommunicator(launch, co);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("NCCL with a missing peer: failed after %.1f s of a 5 s timeout: %s\n", waited,
              std::string(comm.status().message()).c_str());
  EXPECT_FALSE(comm.ok());
}

}  // namespace
}  // namespace retina::trainer
