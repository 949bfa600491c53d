// Infer jobs (kind: infer) on one volume, in one run:
//   1. voxels/s at 1 rank and at 2 Gloo ranks (one thread each), each a
//      `retina-train run` process; the scaling ratio v(2) / (2 v(1));
//   2. the overhead of prediction over the model alone: the 1-rank job's
//      prediction time (windowing, padding, accumulation, reading, writing
//      the OME-Zarr, the pyramid) against a pure batched forward pass over
//      the same number of windows in this process (one thread);
//   3. each rank's peak RSS (wait4) against infer.memory_mb (the model and
//      libtorch come on top of the budget);
//   4. with --precision bf16: a 1-rank job with runtime.precision: bf16 and
//      the pure forward under bf16 autocast, each as a ratio to fp32's in
//      this run (skipped, saying why, on a CPU without bf16 units);
//   5. with --uncertainty: a 1-rank job that also writes the uncertainty map
//      (infer.uncertainty: entropy), its prediction time as a ratio to the
//      labels-only job's in this run.
// The model is a randomly initialised named config (no training needed for
// timing); the volume random uint8.
//
//   predict_bench [--model tiny] [--image-size 64] [--shape 32,512,512] [--mode stack] [--chunks 8,256,256]
//                 [--memory-mb 256] [--precision fp32|bf16] [--uncertainty]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "trainer/data/formats/writers.h"
#include "trainer/prediction/inference.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace {
namespace fs = std::filesystem;
using namespace retina::trainer;
using retina::CreateDirectories;
using retina::ReadFile;
using retina::UniqueTempName;
using retina::WriteFileAtomic;
using retina::DeviceKind;
using retina::Precision;

struct Options {
  std::string model = "tiny";
  int image_size = 64;
  std::vector<int64_t> shape{32, 512, 512};
  std::vector<int64_t> chunks{8, 256, 256};
  std::string mode = "stack";
  int memory_mb = 256;
  std::string precision = "fp32";
  bool uncertainty = false;
};

struct RankRun {
  int status = 0;
  double peak_rss_mib = 0;
};

// Runs retina-train for `world` ranks; each rank's exit status and peak RSS.
std::vector<RankRun> RunJob(const fs::path& store, const fs::path& config, const std::string& job, int world,
                            int port) {
  const std::string train = (fs::path(RETINA_BINARY_ROOT) / "trainer/retina-train").string();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string log = (store / absl::StrCat(job, "-", r, ".log")).string();
      freopen(log.c_str(), "w", stdout);
      freopen(log.c_str(), "a", stderr);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      setenv("OMP_NUM_THREADS", "1", 1);
      const std::string w = std::to_string(world), rank = std::to_string(r);
      execl(train.c_str(), train.c_str(), "run", "--config", config.c_str(), "--store", store.c_str(), "--job",
            job.c_str(), "--world-size", w.c_str(), "--rank", rank.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<RankRun> out;
  for (pid_t p : pids) {
    int status = 0;
    struct rusage ru {};
    wait4(p, &status, 0, &ru);
    out.push_back({WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), ru.ru_maxrss / 1024.0});
  }
  return out;
}

absl::StatusOr<int> Run(const Options& o) {
  if (o.shape.size() != 3 || o.chunks.size() != 3) return absl::InvalidArgumentError("--shape/--chunks: z,y,x");
  const fs::path store = fs::temp_directory_path() / UniqueTempName("predict-bench-");
  RETURN_IF_ERROR(CreateDirectories(store / "model"));
  // The model: random weights of the named config, with a normalisation.
  torch::manual_seed(0);
  ASSIGN_OR_RETURN(TransUNetConfig mc, NamedModelConfig(o.model, o.image_size, 2, ModelHead::kSegmentation));
  VisionTransformer model(mc);
  RETURN_IF_ERROR(SaveStateDictFile(GetStateDict(*model), store / "model/model.pt"));
  retina::CheckpointState state;
  state.kind = "finetune";
  state.model = o.model;
  state.image_size = o.image_size;
  state.classes = 2;
  state.mean = 0.5;
  state.std = 0.25;
  RETURN_IF_ERROR(WriteFileAtomic(store / "model/state.json", retina::EncodeCheckpointState(state)));
  // The volume.
  const std::array<int64_t, 3> shape{o.shape[0], o.shape[1], o.shape[2]};
  {
    ASSIGN_OR_RETURN(std::unique_ptr<PlaneWriter> w,
                     OpenPlaneWriter((store / "volume.tif").string(), shape, {1, 1, 1}, false, 0));
    std::mt19937 rng(1);
    std::vector<uint8_t> plane(static_cast<size_t>(shape[1] * shape[2]));
    for (int64_t z = 0; z < shape[0]; ++z) {
      for (uint8_t& v : plane) v = static_cast<uint8_t>(rng() >> 24);
      RETURN_IF_ERROR(w->Append(1, plane.data(), nullptr, 0));
    }
    RETURN_IF_ERROR(w->Finish());
  }
  const fs::path config = store / "infer.yaml", config16 = store / "infer-bf16.yaml";
  const fs::path config_u = store / "infer-uncertainty.yaml";
  bool bf16 = o.precision == "bf16";
  if (bf16) {
    if (absl::StatusOr<DevicePlan> plan = PlanDevice(DeviceKind::kCpu, Precision::kBf16, 0); !plan.ok()) {
      std::printf("bf16: not measured: %s\n", std::string(plan.status().message()).c_str());
      bf16 = false;
    }
  }
  for (const auto& [path, precision, extra] : {std::tuple{config, "fp32", ""}, std::tuple{config16, "bf16", ""},
                                                std::tuple{config_u, "fp32", ", uncertainty: entropy"}}) {
    RETURN_IF_ERROR(WriteFileAtomic(
        path, absl::StrCat("kind: infer\nruntime: {threads: 1, precision: ", precision,
                           "}\ninfer: {weights: model/model.pt, inputs: [volume.tif], mode: ", o.mode, ", chunks: [",
                           absl::StrJoin(o.chunks, ", "), "], memory_mb: ", o.memory_mb, extra, "}\n")));
  }
  const int port = 29000 + getpid() % 1000;
  double vps[5] = {0, 0, 0, 0, 0}, seconds1 = 0, seconds_u = 0;  // [3]: 1 rank in bf16, [4]: with the map
  std::vector<double> rss[5];
  std::vector<int> worlds{1, 2};
  if (bf16) worlds.push_back(3);
  if (o.uncertainty) worlds.push_back(4);
  for (int slot : worlds) {
    const int world = slot >= 3 ? 1 : slot;
    const std::string job = slot == 3 ? "bf16" : slot == 4 ? "uncertainty" : absl::StrCat("w", world);
    const std::vector<RankRun> runs =
        RunJob(store, slot == 3 ? config16 : slot == 4 ? config_u : config, job, world, port + slot);
    for (const RankRun& r : runs) {
      if (r.status != 0) {
        return absl::InternalError(absl::StrCat(job, " failed (exit ", r.status, "); see ", store.string(), "/", job,
                                                "-0.log"));
      }
      rss[slot].push_back(r.peak_rss_mib);
    }
    ASSIGN_OR_RETURN(std::string text, ReadFile(store / "jobs" / job / "predictions.json"));
    const nlohmann::json j = nlohmann::json::parse(text);
    vps[slot] = j.at("voxels_per_s").get<double>();
    if (slot == 1) seconds1 = j.at("seconds").get<double>();
    if (slot == 4) seconds_u = j.at("seconds").get<double>();
  }
  // The model alone: as many windows as the 1-rank job ran, in its batches.
  ConfigureTorchThreads(1, 1);
  const int64_t win = o.image_size;
  const int64_t per_plane = static_cast<int64_t>(WindowOrigins(std::max(shape[1], win), win, 0.7).size() *
                                                 WindowOrigins(std::max(shape[2], win), win, 0.7).size());
  const int64_t windows = per_plane * shape[0] * (o.mode == "orthoplane" ? 3 : 1);  // orthoplane: a lower bound
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor batch = torch::randn({4, 1, win, win});
  model(batch);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < windows; done += 4) model(batch.slice(0, 0, std::min<int64_t>(4, windows - done)));
  const double forward_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double forward16_s = 0;
  if (bf16) {
    Autocast autocast(torch::kCPU, true);
    model(batch);  // warm-up
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t done = 0; done < windows; done += 4) model(batch.slice(0, 0, std::min<int64_t>(4, windows - done)));
    forward16_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }

  std::printf("predict_bench: %s %d, %s, volume %lldx%lldx%lld, chunks %s, budget %d MiB, one thread per rank\n",
              o.model.c_str(), o.image_size, o.mode.c_str(), static_cast<long long>(shape[0]),
              static_cast<long long>(shape[1]), static_cast<long long>(shape[2]), absl::StrJoin(o.chunks, ",").c_str(),
              o.memory_mb);
  std::printf("  1 rank : %10.0f voxels/s  (prediction %.2f s)\n", vps[1], seconds1);
  std::printf("  2 ranks: %10.0f voxels/s\n", vps[2]);
  std::printf("  scaling ratio v(2) / (2 v(1)) = %.3f   (goal >= 0.9)\n", vps[2] / (2 * vps[1]));
  std::printf("  pure forward of %lld windows: %.2f s; prediction / forward = %.3f   (goal <= 1.15)\n",
              static_cast<long long>(windows), forward_s, seconds1 / forward_s);
  std::printf("  peak RSS per rank: 1 rank %.0f MiB; 2 ranks %.0f, %.0f MiB (budget %d MiB + model and libtorch)\n",
              rss[1][0], rss[2][0], rss[2][1], o.memory_mb);
  if (bf16) {
    std::printf("  bf16, 1 rank: %10.0f voxels/s = x%.2f fp32's; pure forward %.2f s = x%.2f fp32's speed\n", vps[3],
                vps[3] / vps[1], forward16_s, forward_s / forward16_s);
  }
  if (o.uncertainty) {
    std::printf("  with the uncertainty map, 1 rank: %.2f s = x%.3f the labels-only prediction's time\n", seconds_u,
                seconds_u / seconds1);
  }
  std::error_code ec;
  fs::remove_all(store, ec);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  retina::Cli cli("predict_bench", "Infer jobs: scaling over ranks, overhead over the model's forward, memory.");
  Options o;
  CLI::App& app = cli.app();
  app.add_option("--model", o.model, "named model config");
  app.add_option("--image-size", o.image_size, "window side")->check(retina::kPositiveInt);
  app.add_option("--shape", o.shape, "volume z,y,x")->delimiter(',')->expected(3);
  app.add_option("--chunks", o.chunks, "chunk z,y,x")->delimiter(',')->expected(3);
  app.add_option("--mode", o.mode, "stack | orthoplane")->check(CLI::IsMember({"stack", "2d", "orthoplane"}));
  app.add_option("--memory-mb", o.memory_mb, "infer.memory_mb")->check(retina::kPositiveInt);
  app.add_option("--precision", o.precision, "fp32, or bf16 as well (its ratio to fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_flag("--uncertainty", o.uncertainty, "also time a job writing the uncertainty map (its ratio to labels only)");
  cli.Root([&]() { return Run(o); });
  return cli.Run(argc, argv);
}
