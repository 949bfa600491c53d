// Pre-training input pipeline throughput: memory-mapped shards -> loader
// threads -> uint8 batches -> augmentation (geometry + corruption +
// normalisation) on the CPU, in images/s, printed beside the model's own
// consumption rate (one training step of r50-vit-b16 measured in this run).
// Exit status 1 when the pipeline delivers fewer than --floor images/s
// (default 1000, the floor for this 2-core CPU). Also the cost of
// the loader's per-sample CRC-32 checks: passes with and without them,
// alternated, best of each, printed as a ratio.
//
//   data_pipeline_bench [--dataset DIR] [--images 2048] [--batch 16] [--floor 1000] [--no-model] [--device cuda]
// With --device cuda (the GPU kit): pinned batches copied non-blocking, the
// augmentation on the GPU, and the model's consumption measured there at
// batch 32 in bf16 autocast.
// Without --dataset it writes a temporary dataset of random 224x224 images.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <string>

#include "common/cli.h"
#include "absl/strings/numbers.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/augment.h"
#include "trainer/data/loader.h"
#include "trainer/data/sampler.h"
#include "trainer/data/shards.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace {
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A dataset of `images` random 224x224 images in shards of 1024.
absl::Status MakeDataset(const fs::path& dir, int64_t images) {
  RETURN_IF_ERROR(retina::CreateDirectories(dir));
  retina::DatasetManifest m;
  m.name = "bench";
  m.height = m.width = 224;
  m.mean = 0.5;
  m.std = 0.29;
  for (int64_t first = 0; first < images; first += 1024) {
    retina::trainer::ShardContents c;
    c.height = c.width = 224;
    const int64_t n = std::min<int64_t>(1024, images - first);
    const torch::Tensor pixels = torch::randint(0, 256, {n, 224, 224}, torch::kByte);
    c.images.assign(pixels.data_ptr<uint8_t>(), pixels.data_ptr<uint8_t>() + pixels.numel());
    for (int64_t i = 0; i < n; ++i) c.names.push_back(std::to_string(first + i));
    char name[32];
    std::snprintf(name, sizeof(name), "shard-%05zu.h5", m.shards.size());
    ASSIGN_OR_RETURN(retina::ShardInfo info, retina::trainer::WriteShard(dir / name, c));
    m.shards.push_back(info);
    m.count += n;
  }
  return retina::WriteFileAtomic(dir / retina::DatasetManifest::kFileName, m.ToJson());
}

}  // namespace

int main(int argc, char** argv) {
  using namespace retina::trainer;
  std::string dataset;
  int images = 2048, batch = 16;
  double floor = 1000;
  bool model = true;
  std::string device_name = "cpu";
  retina::Cli cli("data_pipeline_bench", "Loader + augmentation throughput against the model step's.");
  CLI::App& app = cli.app();
  app.add_option("--dataset", dataset, "a packed dataset (default: a synthetic one)");
  app.add_option("--images", images, "images to load")->check(retina::kPositiveInt);
  app.add_option("--batch", batch, "batch size")->check(retina::kPositiveInt);
  app.add_option("--floor", floor, "fail below this many images/s")->check(retina::kNonNegativeNumber);
  app.add_flag("!--no-model", model, "skip the model-step reference");
  app.add_option("--device", device_name, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  if (std::optional<int> rc = cli.Parse(argc, argv)) return *rc;
  const retina::ThreadPlan plan = ConfigureTorchThreads(1);
  absl::StatusOr<DevicePlan> device_plan = PlanDevice(device_name, "auto", 0);
  if (!device_plan.ok()) {
    std::fprintf(stderr, "%s\n", std::string(device_plan.status().message()).c_str());
    return 3;
  }
  const torch::Device device = device_plan->device;
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  fs::path dir = dataset;
  fs::path temp;
  if (dataset.empty()) {
    temp = fs::temp_directory_path() / retina::UniqueTempName("retina-bench-");
    dir = temp / "bench";
    if (absl::Status s = MakeDataset(dir, images); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(dir, /*verify=*/false);
  if (!ds.ok()) {
    std::fprintf(stderr, "%s\n", std::string(ds.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<DistributedSampler> sampler = DistributedSampler::Create((*ds)->size(), 0, 1, 0);
  std::vector<std::vector<int64_t>> batches;
  while (sampler->per_rank() >= batch) batches.push_back(sampler->Next(batch));
  PretrainAugmenter augment(retina::PretrainAugmentConfig{}, (*ds)->manifest().mean, (*ds)->manifest().std, 224);
  torch::Generator gen = at::detail::createCPUGenerator(0);

  // One pass over the data, loader threads + augmentation on this thread.
  auto pass = [&](bool check, double* wait, bool with_augment = true) {
    LoaderOptions lo;
    lo.threads = 2;
    lo.check_samples = check;
    lo.pin_memory = device.is_cuda();
    auto loader = Loader::Create(ds->get(), batches, lo);
    const auto t0 = Clock::now();
    int64_t seen = 0;
    while (std::optional<RawBatch> b = (*loader)->Next()) {
      if (!b->status.ok()) {
        std::fprintf(stderr, "%s\n", std::string(b->status.message()).c_str());
        std::exit(1);
      }
      if (with_augment) {
        seen += augment(b->images.to(device, /*non_blocking=*/true), gen).input.size(0);
      } else {
        seen += b->images.size(0);
      }
    }
    sync();
    *wait = (*loader)->wait_seconds();
    return seen / Since(t0);
  };
  double rate = 0, unchecked = 0, wait = 0, unused = 0;
  for (int round = 0; round < 2; ++round) {
    unchecked = std::max(unchecked, pass(false, &unused));
    rate = std::max(rate, pass(true, &wait));
  }
  double bare = 0, bare_unchecked = 0;  // the loader alone: where the checks are not hidden by augmentation
  for (int round = 0; round < 2; ++round) {
    bare_unchecked = std::max(bare_unchecked, pass(false, &unused, false));
    bare = std::max(bare, pass(true, &unused, false));
  }
  const int64_t seen = static_cast<int64_t>(batches.size()) * batch;
  std::printf("threads %d; pipeline: %lld images per pass, %.0f images/s with sample checks (loader wait %.2f s)\n",
              plan.threads, static_cast<long long>(seen), rate, wait);
  std::printf("sample CRC-32 checks: %.0f vs %.0f images/s without = %.1f%% slower (best of 2 alternated passes each)\n",
              rate, unchecked, 100.0 * (unchecked / rate - 1.0));
  std::printf("loader alone (no augmentation): %.0f vs %.0f images/s without checks = %.1f%% slower\n", bare,
              bare_unchecked, 100.0 * (bare_unchecked / bare - 1.0));

  if (model) {
    absl::StatusOr<TransUNetConfig> c = NamedModelConfig("r50-vit-b16", 224, 1, ModelHead::kReconstruction);
    VisionTransformer net(*c);
    net->to(device);
    net->SetChannelsLast(true);
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.003).momentum(0.9).weight_decay(1e-4));
    const int64_t model_batch = device.is_cuda() ? 32 : 4;
    const torch::Tensor x = torch::randn({model_batch, 1, 224, 224}, torch::TensorOptions().device(device));
    auto step = [&] {
      opt.zero_grad();
      torch::Tensor loss;
      {
        Autocast autocast(*device_plan);
        loss = torch::mse_loss(net(x), x).to(torch::kFloat);
      }
      loss.backward();
      opt.step();
    };
    step();
    sync();
    const auto t1 = Clock::now();
    for (int i = 0; i < (device.is_cuda() ? 5 : 1); ++i) step();
    sync();
    const double model_rate = model_batch * (device.is_cuda() ? 5 : 1) / Since(t1);
    std::printf("model consumes %.2f images/s on %s: pipeline / model = %.2fx\n", model_rate,
                device_plan->describe.c_str(), rate / model_rate);
    // At steady state the checks run on loader threads ahead of the step; even
    // if they were on the critical path they would add this share of a step:
    const double check_s = std::max(0.0, 1.0 / rate - 1.0 / unchecked);
    std::printf("checks per image %.1f us = %.3f%% of the model's time per image\n", check_s * 1e6,
                100.0 * check_s * model_rate);
  }
  if (!temp.empty()) fs::remove_all(temp);
  if (rate < floor) {
    std::printf("FAIL: below the floor of %.0f images/s\n", floor);
    return 1;
  }
  return 0;
}
