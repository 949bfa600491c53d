// Slurm's side of the Slurm executor (slurm_executor.h; docs/hpc.md, "The
// service on top of Slurm"): the parts without coordinator state. The sbatch
// command line, the parsing of scontrol's output, the mapping of Slurm's job
// states to ours, and SlurmClient, the three things the executor asks of
// Slurm (submit, list, cancel), run as commands with a timeout.
//
// Slurm job names are `retina-<job id>-<attempt>`: after a coordinator restart
// (or a crash between `sbatch` and the commit of its id) the coordinator finds
// its Slurm jobs by name and re-attaches.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rank_launch.h"

namespace retina::coordinator {

struct SlurmOptions {
  std::filesystem::path script;     // deploy/slurm/retina-slurm.sh (the sbatch script)
  std::string bin_dir;              // where sbatch, scontrol, scancel are ("" = PATH)
  std::string trainer_dir;          // RETINA_BIN for the ranks: the folder of retina-train
  std::string launcher = "srun";    // RETINA_LAUNCHER: srun | mpirun
  std::string partition, account, qos, time_limit;  // defaults; a job's labels slurm.<key> override
  std::vector<std::string> extra_args;              // more sbatch arguments, as given
  absl::Duration poll = absl::Seconds(2);           // scontrol polling (backs off to max_poll when idle)
  absl::Duration max_poll = absl::Seconds(30);
  absl::Duration command_timeout = absl::Seconds(30);
};

// What one attempt needs from Slurm.
struct SlurmAttempt {
  std::string job_id, job_uid;
  int attempt = 1;
  int world_size = 1, slots_per_rank = 1;
  // An elastic job's minimum (0: not elastic). Slurm allocates a fixed
  // --ntasks, so the attempt runs at world_size; RETINA_ELASTIC still gives
  // the ranks the job's BatchNorm groups (docs/service.md "Elastic jobs").
  int min_world_size = 0;
  bool gpu = false;
  std::filesystem::path config, store;             // the job file in the store; the store
  std::vector<std::filesystem::path> allowed_roots;
  std::vector<std::filesystem::path> output_roots;
  std::map<std::string, std::string> labels;       // slurm.partition, slurm.account, slurm.qos, slurm.time
};

// The launch record of the attempt's ranks (common/rank_launch.h); the
// per-rank fields are the allocation's, set by retina-slurm.sh.
RankLaunch LaunchOf(const SlurmAttempt& a);

std::string SlurmJobName(const std::string& job_id, int attempt);
// (job id, attempt) of a name SlurmJobName made; false for any other name.
bool ParseSlurmJobName(const std::string& name, std::string* job_id, int* attempt);

// The sbatch command: one task per rank (--ntasks world_size,
// --cpus-per-task slots_per_rank, or --gpus-per-task for GPU slots),
// --requeue --signal=B:USR1@300 --open-mode=append, the job's name, output in
// the job's log folder, partition/account/QoS/time from the labels or the
// options, then the script and the job file; the environment the script and
// its ranks read (RETINA_STORE, RETINA_JOB_ID, RETINA_ATTEMPT_BASE,
// RETINA_TRAIN_ARGS with --job-uid, --confine and the allowed roots, ...).
struct SlurmCommand {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
};
SlurmCommand SbatchCommand(const SlurmOptions& o, const SlurmAttempt& a);

// One Slurm job as `scontrol show job -o` prints it.
struct SlurmJobInfo {
  std::string slurm_id, name, state, reason;
  int exit_code = 0, exit_signal = 0, restarts = 0;
};
// Every job of `scontrol show job -o` output (one per line); lines that are
// not jobs (e.g. "No jobs in the system") are skipped.
std::vector<SlurmJobInfo> ParseScontrolJobs(const std::string& text);

// Our view of a Slurm state.
enum class SlurmPhase {
  kPending,    // PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, SUSPENDED...: SCHEDULED
  kRunning,    // RUNNING, COMPLETING
  kSucceeded,  // COMPLETED
  kCancelled,  // CANCELLED
  kFailed,     // FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, PREEMPTED (ended)
};
SlurmPhase MapSlurmState(const std::string& state);

// Runs a command (argv[0] looked up on PATH), with `env` added, stdin from
// /dev/null; its stdout and stderr together. Killed after `timeout`.
struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;
};
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::map<std::string, std::string>& env, absl::Duration timeout);

// What the executor asks of Slurm. Calls may be slow (seconds) and are made
// without the coordinator's state lock; tests drive the executor with an
// in-memory Slurm (tests/services/fake_slurm.h).
class SlurmClient {
 public:
  virtual ~SlurmClient() = default;
  // Submits an attempt (sbatch --parsable): its Slurm job id. An error
  // carries Slurm's refusal (FAILED_PRECONDITION: a bad partition, account,
  // limits), or says there was no answer (DEADLINE_EXCEEDED, UNAVAILABLE:
  // Slurm may have queued it).
  virtual absl::StatusOr<std::string> Submit(const SlurmAttempt& attempt) = 0;
  // Every job Slurm knows (scontrol show job -o); an error when Slurm does
  // not answer.
  virtual absl::StatusOr<std::vector<SlurmJobInfo>> List() = 0;
  virtual absl::Status Cancel(const std::string& slurm_id) = 0;  // scancel
};

// The client that runs sbatch, scontrol and scancel (from options.bin_dir).
std::unique_ptr<SlurmClient> NewCommandSlurmClient(SlurmOptions options);

}  // namespace retina::coordinator
