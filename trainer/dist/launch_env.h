// Rank and world discovery: the one place the launcher environment is read.
//
// Precedence (ARCHITECTURE.md "Process model"), highest first:
//   1. explicit flags (--rank/--world-size/--local-rank given to retina-train)
//   2. torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   3. Open MPI: OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK/_LOCAL_SIZE
//   4. PMIx / PMI: PMIX_RANK, PMI_RANK, PMI_SIZE
//   5. Slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE
//   6. a single process
// Rendezvous address: MASTER_ADDR/MASTER_PORT; where they are unset inside a
// Slurm job (a bare `srun retina-train ...`), the first host of
// SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST, SLURM_NODELIST) and port
// 20000 + SLURM_JOB_ID % 20000, as deploy/slurm/retina-slurm.sh derives them.
// Under torchrun, TORCHELASTIC_USE_AGENT_STORE=True says the agent serves
// the store (rank 0 must connect, not bind); TORCHELASTIC_RESTART_COUNT
// names the attempt.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace retina::trainer {

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single";  // flags | torchrun | openmpi | pmi | slurm | single
  bool under_mpi = false;         // started by mpirun/srun with an MPI runtime
  std::string rendezvous_from = "default";  // MASTER_ADDR | SLURM_STEP_NODELIST | ... | default
  bool agent_store = false;       // a torchrun agent serves the rendezvous store
  int agent_restart = 0;          // TORCHELASTIC_RESTART_COUNT
  std::string gloo_ifname;        // GLOO_SOCKET_IFNAME: the interface Gloo binds (empty: chosen from master_addr)
  std::string host_addr;          // RETINA_HOST_ADDR: this host's address as the others reach it (Gloo binds it)
};

// Expands a Slurm hostlist ("node[01-03,7],gpu5,rack[1-2]-n[1-2]") in
// Slurm's order; INVALID_ARGUMENT for unbalanced brackets or bad ranges.
absl::StatusOr<std::vector<std::string>> ExpandHostlist(const std::string& hostlist);

struct LaunchOverrides {
  std::optional<int> rank, world_size, local_rank;
};

// `getenv` is injectable for tests. INVALID_ARGUMENT names the variable when
// a value is malformed or inconsistent (rank >= world size, ...).
absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& overrides,
                                          const std::function<const char*(const char*)>& getenv);
absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& overrides);

}  // namespace retina::trainer
