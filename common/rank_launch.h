// How a service rank is started: the one contract between every launcher
// (the worker agent, the Slurm executor through deploy/slurm/retina-slurm.sh)
// and `retina-train run`. A flag changed here changes every launcher; the
// script builds the same argv from the environment this record gives it,
// which tests/services/slurm_commands_test.cc checks by running the script.
//
//   retina-train run --config C --store S --job ID --resume auto
//                    [--job-uid U] --confine [--allowed-root R]... [--output-root R]...
//                    [--events fd:3]
//
// with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT (the rendezvous), RETINA_JOB_ID and RETINA_ATTEMPT,
// RETINA_JOB_USER (the job's owner; the worker knows it),
// RETINA_ELASTIC=W:M for an elastic job (its full world size and minimum;
// this attempt's WORLD_SIZE may be smaller), and, where
// the launcher knows it, RETINA_HOST_ADDR: the address other hosts reach this
// rank's host at (a worker's --host), which Gloo then binds.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace retina {

struct RankLaunch {
  // The attempt.
  std::filesystem::path config, store;  // the job file in the store; the store
  std::string job_id, job_uid;
  std::string user;  // the job's owner, where the launcher knows it (RETINA_JOB_USER; a serve job's models answer them)
  int attempt = 1;
  std::vector<std::filesystem::path> allowed_roots, output_roots;  // --confine's roots
  // This rank (the worker knows them; under Slurm the allocation does).
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr;
  int master_port = 0;
  std::string host_addr;  // this rank's host as the others reach it ("": not known)
  int elastic_world_size = 0, elastic_min_world_size = 0;  // an elastic job's W and M (0: not elastic)
  bool events_fd3 = false;  // rank 0 under the worker: events on fd 3

  // `run ...` (without the program), as above.
  std::vector<std::string> RunArgs() const;
  // The part that the service adds to a plain `run --config --store --job
  // --resume auto`: --job-uid, --confine and the roots (what the Slurm
  // executor hands retina-slurm.sh as RETINA_TRAIN_ARGS).
  std::vector<std::string> ServiceArgs() const;
  // The rank's environment (the variables above).
  std::map<std::string, std::string> Env() const;
};

// `s` quoted for a POSIX shell (single quotes; ' as '\'').
std::string ShellQuote(const std::string& s);
// Each argument quoted, joined by spaces: a bash array's contents, read back
// exactly with `eval "a=($text)"`.
std::string ShellQuoteArgs(const std::vector<std::string>& args);

}  // namespace retina
