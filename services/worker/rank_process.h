// One trainer rank as a child process (RAII: a still-running child is killed
// and reaped when the handle is destroyed). Its stdout and stderr go to a log
// file; with an events pipe its fd 3 is the write end (the rank is started
// with --events fd:3). The child gets PR_SET_PDEATHSIG(SIGTERM): if the
// worker dies, its ranks checkpoint and stop instead of running unsupervised.
// Spawn must be called from a thread that lives as long as the worker (the
// death signal follows the forking thread).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace retina::worker {

// Ranks of an earlier attempt of the job `job_uid` (Job.uid, unique across
// stores and databases) still alive on this host: the orphans of a killed
// worker (PR_SET_PDEATHSIG gave them SIGTERM, and they may still be
// finishing a step and a checkpoint that the newer attempt's fence makes
// moot). Found by `--job-uid UID` in their command line and RETINA_ATTEMPT
// in their environment (common/rank_launch.h; readable for this user's
// processes), in this process's network namespace (what "this host" is
// where hosts share a kernel: namespaces, containers), SIGKILLed, and
// waited for (up to 5 s). Returns their pids;
// none for an empty uid. A worker calls it before it starts `attempt`, so
// two attempts of a job never run at once on one host.
std::vector<pid_t> KillEarlierAttempts(const std::string& job_uid, int attempt);

class RankProcess {
 public:
  // Starts argv[0] with `argv`, the worker's environment plus `env`.
  static absl::StatusOr<std::unique_ptr<RankProcess>> Spawn(const std::vector<std::string>& argv,
                                                            const std::map<std::string, std::string>& env,
                                                            const std::filesystem::path& log_path,
                                                            int events_write_fd);
  ~RankProcess();
  RankProcess(const RankProcess&) = delete;
  RankProcess& operator=(const RankProcess&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // True once the process has exited; `exit_code()` is then its status
  // (128 + signal number when killed by a signal). Never blocks.
  bool Poll();
  bool exited() const { return exited_; }
  int exit_code() const { return exit_code_; }

 private:
  explicit RankProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool exited_ = false;
  int exit_code_ = -1;
};

// A pipe whose read end is non-blocking and owned here (closed on
// destruction); the write end is closed by CloseWriteEnd after spawning.
class EventPipe {
 public:
  static absl::StatusOr<std::unique_ptr<EventPipe>> Create();
  ~EventPipe();
  int write_fd() const { return write_fd_.get(); }
  void CloseWriteEnd();
  // Appends complete lines read so far to `lines`; keeps a partial tail.
  void ReadLines(std::vector<std::string>* lines);

 private:
  EventPipe(int r, int w) : read_fd_(r), write_fd_(w) {}
  UniqueFd read_fd_;
  UniqueFd write_fd_;
  std::string partial_;
};

}  // namespace retina::worker
