// All-reduce benchmark, also a correctness test (nccl-tests style): every
// rank contributes rank+1, so the exact sum is W(W+1)/2 in every element; a
// wrong value exits 1.
//   - bus bandwidth vs message size (4 KiB .. 64 MiB) for the backend the
//     launcher implies (run it under mpirun for MPI, or as torchrun-style
//     ranks for Gloo; --backend overrides);
//   - our bucketed reducer (25 MB buckets, launched from gradient hooks during
//     a real backward) vs one raw all-reduce of the same bytes: the ratio.
// Bus bandwidth = bytes * 2 (W - 1) / W / time, as nccl-tests reports it.
//
//   mpirun -np 2 allreduce_bench --backend mpi
//   (RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29600 allreduce_bench --backend gloo &
//    RANK=1 ... allreduce_bench --backend gloo)
#include <chrono>
#include <cstdio>
#include <string>

#include "common/cli.h"
#include "trainer/dist/communicator.h"
#include "trainer/dist/reducer.h"

using namespace retina::trainer;
using Clock = std::chrono::steady_clock;

namespace {
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Many 1M-float parameters: a stand-in for a model's gradients.
struct Params : torch::nn::Module {
  explicit Params(int n) {
    for (int i = 0; i < n; ++i) params.push_back(register_parameter("p" + std::to_string(i), torch::ones({1 << 20})));
  }
  std::vector<torch::Tensor> params;
};
}  // namespace

int main(int argc, char** argv) {
  CommunicatorOptions o;
  o.timeout = std::chrono::milliseconds(120000);
  retina::Cli cli("allreduce_bench", "All-reduce bus bandwidth from 4 KiB to 64 MiB (run with 2+ ranks).");
  cli.app().add_option("--backend", o.backend, "auto | nccl | mpi | gloo")->check(CLI::IsMember({"auto", "nccl", "mpi", "gloo"}));
  if (std::optional<int> rc = cli.Parse(argc, argv)) return *rc;
  at::set_num_threads(1);
  absl::StatusOr<LaunchInfo> launch = DiscoverLaunch({});
  if (!launch.ok() || launch->world_size < 2) {
    std::fprintf(stderr, "run with 2+ ranks (mpirun -np 2 ... or RANK/WORLD_SIZE/MASTER_*): %s\n",
                 launch.ok() ? "world size is 1" : std::string(launch.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(*launch, o);
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", std::string(comm.status().message()).c_str());
    return 1;
  }
  Communicator& c = **comm;
  const int w = c.size();
  const float expected = w * (w + 1) / 2.0f;
  if (c.rank() == 0) std::printf("backend %s, %d ranks\n%12s %10s %12s\n", c.backend().c_str(), w, "bytes", "time_us", "busbw_GB/s");
  for (int64_t bytes = 4096; bytes <= (64 << 20); bytes *= 4) {
    torch::Tensor t = torch::empty({bytes / 4});
    const int reps = bytes < (1 << 20) ? 50 : 5;
    double best = 1e30;
    for (int r = 0; r < reps + 1; ++r) {
      t.fill_(static_cast<float>(c.rank() + 1));
      if (!c.Barrier("bench").ok()) return 1;
      const auto t0 = Clock::now();
      if (absl::Status s = c.AllReduceSum(t, "bench"); !s.ok()) {
        std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
        return 1;
      }
      if (r > 0) best = std::min(best, Seconds(t0));
      if (!torch::all(t == expected).item<bool>()) {
        std::fprintf(stderr, "rank %d: wrong all-reduce result at %lld bytes\n", c.rank(), static_cast<long long>(bytes));
        return 1;
      }
    }
    if (c.rank() == 0) {
      std::printf("%12lld %10.1f %12.3f\n", static_cast<long long>(bytes), best * 1e6, bytes * 2.0 * (w - 1) / w / best / 1e9);
    }
  }
  // Reducer vs one raw all-reduce of the same bytes (100 MiB of gradients).
  Params m(25);
  GradientReducer reducer(m, &c);
  double raw = 1e30, bucketed = 1e30, backward_only = 1e30;
  torch::Tensor flat = torch::empty({25 << 20});
  for (int r = 0; r < 4; ++r) {
    (void)c.Barrier("bench");
    auto t0 = Clock::now();
    (void)c.AllReduceSum(flat, "raw");
    if (r > 0) raw = std::min(raw, Seconds(t0));
    // The same backward with the reducer idle (its hooks return at once).
    for (auto& p : m.params) p.mutable_grad() = torch::Tensor();
    t0 = Clock::now();
    torch::Tensor idle = torch::zeros({});
    for (auto& p : m.params) idle = idle + (p * static_cast<float>(c.rank() + 1)).sum();
    idle.backward();
    if (r > 0) backward_only = std::min(backward_only, Seconds(t0));
    for (auto& p : m.params) p.mutable_grad() = torch::Tensor();
    (void)c.Barrier("bench");
    t0 = Clock::now();
    reducer.PrepareForBackward();
    torch::Tensor loss = torch::zeros({});
    for (auto& p : m.params) loss = loss + (p * static_cast<float>(c.rank() + 1)).sum();
    loss.backward();
    if (absl::Status s = reducer.FinishBackward(); !s.ok()) return 1;
    if (r > 0) bucketed = std::min(bucketed, Seconds(t0));
    for (auto& p : m.params) {
      if (!torch::all(p.grad() == expected / w).item<bool>()) {
        std::fprintf(stderr, "rank %d: wrong averaged gradient\n", c.rank());
        return 1;
      }
    }
  }
  if (c.rank() == 0) {
    std::printf("100 MiB of gradients: raw all-reduce %.1f ms; backward alone %.1f ms; backward with the bucketed "
                "reducer (%d buckets) %.1f ms\n  reducer / raw all-reduce = %.2f; reducer / (backward + raw) = %.2f "
                "(< 1: communication overlapped backward)\n",
                raw * 1e3, backward_only * 1e3, reducer.num_buckets(), bucketed * 1e3, bucketed / raw,
                bucketed / (backward_only + raw));
  }
  return 0;
}
