#include "trainer/dist/launch_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina::trainer {
namespace {

using Env = std::function<const char*(const char*)>;

// Reads an integer variable; nullopt when unset.
absl::StatusOr<std::optional<int>> Int(const Env& env, const char* name) {
  const char* v = env(name);
  if (v == nullptr || *v == '\0') return std::optional<int>();
  int out;
  if (!absl::SimpleAtoi(v, &out) || out < 0) {
    return absl::InvalidArgumentError(absl::StrCat("environment ", name, "='", v, "' is not a non-negative integer"));
  }
  return std::optional<int>(out);
}

struct Scheme {
  const char* source;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
  bool mpi;
};

constexpr Scheme kSchemes[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", false},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", true},
    {"pmi", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", true},
};

}  // namespace

absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& o, const Env& env) {
  LaunchInfo info;
  const char* rank_without_size = nullptr;  // e.g. PMIX_RANK under `srun --mpi=pmix`: Slurm's variables follow
  bool found = false;
  for (const Scheme& s : kSchemes) {
    ASSIGN_OR_RETURN(std::optional<int> rank, Int(env, s.rank));
    if (!rank) continue;
    ASSIGN_OR_RETURN(std::optional<int> size, Int(env, s.size));
    if (!size) {
      if (rank_without_size == nullptr) rank_without_size = s.rank;
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<int> local_rank, Int(env, s.local_rank));
    ASSIGN_OR_RETURN(std::optional<int> local_size, Int(env, s.local_size));
    found = true;
    info.rank = *rank;
    info.world_size = *size;
    info.local_rank = local_rank.value_or(0);
    info.local_world_size = local_size.value_or(1);
    info.source = s.source;
    info.under_mpi = s.mpi;
    break;
  }
  if (!found && rank_without_size != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(rank_without_size, " is set but no world size variable is"));
  }
  if (o.rank || o.world_size || o.local_rank) {
    info.source = "flags";
    if (o.rank) info.rank = *o.rank;
    if (o.world_size) info.world_size = *o.world_size;
    if (o.local_rank) info.local_rank = *o.local_rank;
  }
  if (const char* addr = env("MASTER_ADDR"); addr != nullptr && *addr != '\0') info.master_addr = addr;
  ASSIGN_OR_RETURN(std::optional<int> port, Int(env, "MASTER_PORT"));
  if (port) info.master_port = *port;
  if (info.world_size < 1 || info.rank >= info.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", info.rank, " is outside world size ", info.world_size,
                                                   " (from ", info.source, ")"));
  }
  if (info.local_world_size < 1 || info.local_rank >= info.local_world_size) {
    info.local_world_size = std::max(info.local_world_size, info.local_rank + 1);
  }
  if (info.master_port < 1 || info.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MASTER_PORT=", info.master_port, " is not a TCP port"));
  }
  return info;
}

absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& overrides) {
  return DiscoverLaunch(overrides, [](const char* name) { return std::getenv(name); });
}

}  // namespace retina::trainer
