// Peak resident memory of orthoplane prediction on a large volume, streamed in
// z-slabs under a memory budget, against the same prediction with the whole
// volume in one slab (the reference, run in a second child process so that
// each peak is its own). Both read the input from an HDF5 file plane by plane
// and write labels to HDF5, and their labels must be identical.
//
// The model is a 1x1 convolution: memory does not depend on the model beyond
// its activations (one batch of windows), and a real model would make the
// 2-core run take hours. Speed of r50-vit-b16 is bench/infer_bench.sh's job.
//
//   orthoplane_memory_bench [--shape 200,2048,2048] [--budget-mb 512] [--window 224] [--overlap 0.5]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "common/cli.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/prediction/inference.h"
#include "trainer/runtime/threads.h"

namespace {
namespace fs = std::filesystem;
using retina::trainer::PlaneReader;
using retina::trainer::PlaneWriter;

struct Options {
  std::array<int64_t, 3> shape{200, 2048, 2048};
  int64_t budget_mb = 512;
  int64_t window = 224;
  double overlap = 0.5;
};

absl::Status MakeVolume(const std::string& path, const std::array<int64_t, 3>& shape) {
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneWriter> w,
                   retina::trainer::OpenPlaneWriter(path, shape, {1, 1, 1}, true, 0));
  std::mt19937 rng(0);
  std::vector<uint8_t> plane(shape[1] * shape[2]);
  for (int64_t z = 0; z < shape[0]; ++z) {
    for (uint8_t& v : plane) v = static_cast<uint8_t>(rng() >> 24);
    RETURN_IF_ERROR(w->Append(1, plane.data(), nullptr, 0));
  }
  return w->Finish();
}

// In a child: predict `input` with slabs fitting `budget`, write `out`; prints
// one line and exits 0 on success.
int Child(const Options& o, const std::string& input, const std::string& out, int64_t budget_bytes) {
  retina::trainer::ConfigureTorchThreads(2);
  torch::manual_seed(0);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(1, 1, 1));
  torch::NoGradGuard no_grad;
  const retina::trainer::WindowForward forward = [&](const torch::Tensor& x) { return conv(x); };
  auto in = retina::trainer::OpenPlaneReader(input, retina::trainer::IntensityScaling::kRequireUInt8);
  if (!in.ok()) return std::fprintf(stderr, "%s\n", in.status().ToString().c_str()), 1;
  retina::trainer::SlidingWindowOptions so;
  so.window = o.window;
  so.overlap = o.overlap;
  so.batch = 8;
  const auto mode = retina::trainer::VolumeMode::kOrthoplane;
  const int64_t slab = retina::trainer::SlabPlanesForBudget((*in)->shape(), 1, mode, so, budget_bytes);
  auto w = retina::trainer::OpenPlaneWriter(out, (*in)->shape(), (*in)->spacing(), true, 0);
  if (!w.ok()) return std::fprintf(stderr, "%s\n", w.status().ToString().c_str()), 1;
  const auto t0 = std::chrono::steady_clock::now();
  auto stats = retina::trainer::PredictVolumeStreaming(forward, **in, 0.5, 0.25, mode, so, slab, false, **w, nullptr);
  if (!stats.ok()) return std::fprintf(stderr, "%s\n", stats.status().ToString().c_str()), 1;
  if (absl::Status s = (*w)->Finish(); !s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  %lld slab(s) of %lld planes, %lld windows, %.1f s\n", static_cast<long long>(stats->slabs),
              static_cast<long long>(stats->slab_planes), static_cast<long long>(stats->windows), seconds);
  std::fflush(stdout);
  return 0;
}

// Runs Child in a fork; returns its peak RSS in MiB, or -1.
double PeakMiB(const Options& o, const std::string& input, const std::string& out, int64_t budget_bytes) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) _exit(Child(o, input, out, budget_bytes));
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return usage.ru_maxrss / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  retina::Cli cli("orthoplane_memory_bench", "Peak memory of streamed orthoplane inference against the whole volume.");
  CLI::App& app = cli.app();
  app.add_option("--shape", o.shape, "volume z,y,x")->delimiter(',')->check(retina::kPositiveInt);
  app.add_option("--budget-mb", o.budget_mb, "slab budget")->check(retina::kPositiveInt);
  app.add_option("--window", o.window, "window side")->check(retina::kPositiveInt);
  app.add_option("--overlap", o.overlap, "window overlap")->check(CLI::Range(0.0, 0.95));
  if (std::optional<int> rc = cli.Parse(argc, argv)) return *rc;
  const fs::path dir = fs::temp_directory_path() / retina::UniqueTempName("retina-ortho-bench-");
  fs::create_directories(dir);
  const std::string input = (dir / "in.h5").string();
  const double volume_mib = static_cast<double>(o.shape[0]) * o.shape[1] * o.shape[2] / (1 << 20);
  std::printf("orthoplane on %lldx%lldx%lld uint8 (%.0f MiB), window %lld, overlap %.2f\n",
              static_cast<long long>(o.shape[0]), static_cast<long long>(o.shape[1]),
              static_cast<long long>(o.shape[2]), volume_mib, static_cast<long long>(o.window), o.overlap);
  int rc = 0;
  if (absl::Status s = MakeVolume(input, o.shape); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    rc = 1;
  } else {
    std::printf("streamed, budget %lld MiB:\n", static_cast<long long>(o.budget_mb));
    const double streamed = PeakMiB(o, input + ":/labels", (dir / "a.h5").string(), o.budget_mb << 20);
    std::printf("whole volume in one slab (reference):\n");
    const double whole = PeakMiB(o, input + ":/labels", (dir / "b.h5").string(), int64_t{1} << 50);
    auto a = retina::trainer::ReadHdf5((dir / "a.h5").string(), "/labels");
    auto b = retina::trainer::ReadHdf5((dir / "b.h5").string(), "/labels");
    const bool same = a.ok() && b.ok() && a->bytes == b->bytes;
    if (a.ok() && b.ok() && !same) {
      int64_t n = 0, first = -1;
      for (size_t i = 0; i < a->bytes.size(); ++i) {
        if (a->bytes[i] != b->bytes[i] && n++ == 0) first = static_cast<int64_t>(i);
      }
      std::printf("%lld voxels differ, the first at z=%lld\n", static_cast<long long>(n),
                  static_cast<long long>(first / (o.shape[1] * o.shape[2])));
    }
    std::printf("peak RSS: streamed %.0f MiB, whole %.0f MiB (ratio %.2f; volume %.0f MiB); labels %s\n", streamed,
                whole, streamed / whole, volume_mib, same ? "identical" : "DIFFER");
    rc = streamed > 0 && whole > 0 && same ? 0 : 1;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
