// Data-parallel equivalence: 2 Gloo ranks with batch 4 each (SyncBatchNorm,
// bucketed reducer) end with the same parameters as 1 process with batch 8.
// Also: a rank that never shows up makes the other fail within the timeout,
// naming itself and the operation.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/trainer/python_peer.h"
#include "trainer/dist/communicator.h"
#include "trainer/dist/launch_env.h"
#include "trainer/model/state_dict.h"

namespace retina::trainer {
namespace {

using ::testing::HasSubstr;

int FreePort() {
  std::mt19937 rng(static_cast<unsigned>(::getpid()) ^ static_cast<unsigned>(std::time(nullptr)));
  return 20000 + static_cast<int>(rng() % 20000);
}

absl::StatusOr<LaunchInfo> Discover(const std::map<std::string, std::string>& vars, LaunchOverrides o = {}) {
  return DiscoverLaunch(o, [&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnv, PrecedenceAndSlurmUnderPmix) {
  absl::StatusOr<LaunchInfo> single = Discover({});
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->source, "single");
  EXPECT_EQ(single->world_size, 1);
  // torchrun beats Open MPI beats Slurm; flags beat everything.
  const std::map<std::string, std::string> all = {
      {"RANK", "1"}, {"WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"},
      {"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "31000"}};
  absl::StatusOr<LaunchInfo> t = Discover(all);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->source, "torchrun");
  EXPECT_EQ(t->rank, 1);
  EXPECT_EQ(t->master_addr, "node7");
  EXPECT_EQ(t->master_port, 31000);
  LaunchOverrides flags;
  flags.rank = 0;
  EXPECT_EQ(Discover(all, flags)->source, "flags");
  // `srun --mpi=pmix` sets PMIX_RANK but no PMI_SIZE: Slurm's variables give the world.
  absl::StatusOr<LaunchInfo> s = Discover({{"PMIX_RANK", "1"}, {"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"},
                                           {"SLURM_LOCALID", "1"}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->source, "slurm");
  EXPECT_EQ(s->rank, 1);
  EXPECT_EQ(s->world_size, 2);
  EXPECT_TRUE(s->under_mpi);
  EXPECT_THAT(Discover({{"PMIX_RANK", "1"}}).status().message(), HasSubstr("PMIX_RANK is set but no world size"));
  EXPECT_THAT(Discover({{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "2"}}).status().message(),
              HasSubstr("SLURM_PROCID='x'"));
  EXPECT_THAT(Discover({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).status().message(), HasSubstr("outside world size 4"));
}

std::string Worker() { return std::string(RETINA_TEST_BINARY_DIR) + "/dist_worker"; }

// Worst relative difference between two state dicts (tensors of scale >= 1e-3;
// near-zero ones must agree to 1e-8 absolute).
double Compare(const std::string& single, const std::string& multi) {
  absl::StatusOr<StateDict> a = ReadStateDictFile(single), b = ReadStateDictFile(multi);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok() || a->size() != b->size()) {
    ADD_FAILURE() << "state dicts missing or of different lengths";
    return 1.0;
  }
  double worst = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    const torch::Tensor x = (*a)[i].second.to(torch::kDouble), y = (*b)[i].second.to(torch::kDouble);
    if (x.numel() == 0) continue;
    const double scale = x.abs().max().item<double>(), diff = (x - y).abs().max().item<double>();
    if (scale < 1e-3) {  // near-zero tensors (fresh biases): relative differences are meaningless
      EXPECT_LT(diff, 1e-8) << (*a)[i].first;
      continue;
    }
    worst = std::max(worst, diff / scale);
    EXPECT_LT(diff / scale, 1e-5) << (*a)[i].first;
  }
  return worst;
}

TEST(DataParallel, TwoGlooRanksEqualOneProcessWithTheWholeBatch) {
  retina::testing::ScopedTempDir tmp("dist-");
  const std::string single = (tmp.path() / "single.pt").string(), multi = (tmp.path() / "multi.pt").string();
  ASSERT_EQ(std::system((Worker() + " " + single + " 3 > /dev/null").c_str()), 0);
  const int port = FreePort();
  const std::string env = absl::StrCat("WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=", port, " ");
  const std::string cmd = absl::StrCat("(", env, "RANK=1 ", Worker(), " ", multi, " 3 & ", env, "RANK=0 ", Worker(),
                                       " ", multi, " 3; r0=$?; wait $!; r1=$?; exit $((r0 + r1)))");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const double worst = Compare(single, multi);
  std::printf("gloo: worst relative parameter difference, 2 ranks vs 1 process: %.3g\n", worst);
}

TEST(DataParallel, TwoMpiRanksUnderMpirunEqualOneProcess) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not found (apt install openmpi-bin)";
  retina::testing::ScopedTempDir tmp("dist-");
  const std::string single = (tmp.path() / "single.pt").string(), multi = (tmp.path() / "multi.pt").string();
  ASSERT_EQ(std::system((Worker() + " " + single + " 3 > /dev/null").c_str()), 0);
  // Root in CI containers needs OpenMPI's explicit consent.
  const std::string cmd = absl::StrCat(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RETINA_TEST_BACKEND=mpi "
      "mpirun -np 2 --oversubscribe --bind-to none ", Worker(), " ", multi, " 3 > /dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const double worst = Compare(single, multi);
  std::printf("mpi: worst relative parameter difference, 2 ranks vs 1 process: %.3g\n", worst);
}

TEST(DataParallel, AMissingPeerFailsWithinTheTimeoutNamingRankAndOperation) {
  retina::testing::ScopedTempDir tmp("dist-");
  const auto t0 = std::chrono::steady_clock::now();
  const std::string cmd = absl::StrCat("RETINA_TEST_TIMEOUT_MS=3000 WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=", FreePort(), " ",
                                       Worker(), " ", (tmp.path() / "x.pt").string(), " 1 2>&1");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_THAT(out, HasSubstr("rank 0"));
  EXPECT_THAT(out, HasSubstr("3 s"));
  EXPECT_LT(seconds, 15) << out;  // the worker's timeout is 3 s
}

}  // namespace
}  // namespace retina::trainer

namespace retina::trainer {
namespace {

// The NCCL backend is built (against /usr/local/cuda) but this machine may have
// no GPU: it must then say so plainly instead of crashing or hanging.
TEST(DataParallel, NcclWithoutAGpuSaysSo) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present: covered by the gpu-labelled runs";
  LaunchInfo launch;
  launch.world_size = 2;
  launch.rank = 0;
  launch.master_port = 20000 + ::getpid() % 20000;
  CommunicatorOptions o;
  o.backend = "nccl";
  o.timeout = std::chrono::milliseconds(2000);
  absl::StatusOr<std::unique_ptr<Communicator>> c = CreateCommunicator(launch, o);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              ::testing::AnyOf(HasSubstr("cudaGetDeviceCount"), HasSubstr("no CUDA device"), HasSubstr("no NCCL")));
}

}  // namespace
}  // namespace retina::trainer
