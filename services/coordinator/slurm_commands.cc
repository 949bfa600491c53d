#include "services/coordinator/slurm_commands.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/exec_image.h"
#include "common/rank_launch.h"

namespace retina::coordinator {
namespace {

std::string Tool(const SlurmOptions& o, const char* name) {
  return o.bin_dir.empty() ? std::string(name) : (std::filesystem::path(o.bin_dir) / name).string();
}

}  // namespace

RankLaunch LaunchOf(const SlurmAttempt& a) {
  RankLaunch l;
  l.config = a.config;
  l.store = a.store;
  l.job_id = a.job_id;
  l.job_uid = a.job_uid;
  l.attempt = a.attempt;
  l.allowed_roots = a.allowed_roots;
  l.output_roots = a.output_roots;
  l.world_size = a.world_size;
  if (a.min_world_size > 0 && a.min_world_size < a.world_size) {
    l.elastic_world_size = a.world_size;
    l.elastic_min_world_size = a.min_world_size;
  }
  return l;
}

std::string SlurmJobName(const std::string& job_id, int attempt) { return absl::StrCat("retina-", job_id, "-", attempt); }

bool ParseSlurmJobName(const std::string& name, std::string* job_id, int* attempt) {
  if (name.rfind("retina-", 0) != 0) return false;
  const size_t dash = name.rfind('-');
  if (dash <= 7 || !absl::SimpleAtoi(name.substr(dash + 1), attempt)) return false;
  *job_id = name.substr(7, dash - 7);
  return !job_id->empty();
}

SlurmCommand SbatchCommand(const SlurmOptions& o, const SlurmAttempt& a) {
  SlurmCommand c;
  const std::filesystem::path logs = a.store / "jobs" / a.job_id / "logs";
  c.argv = {Tool(o, "sbatch"), "--parsable", "--job-name=" + SlurmJobName(a.job_id, a.attempt),
            absl::StrCat("--ntasks=", a.world_size),
            a.gpu ? absl::StrCat("--gpus-per-task=", a.slots_per_rank) : absl::StrCat("--cpus-per-task=", a.slots_per_rank),
            "--requeue", "--signal=B:USR1@300", "--open-mode=append",
            "--output=" + (logs / "slurm-%j.out").string(), "--chdir=" + a.store.string()};
  auto pick = [&](const char* label, const std::string& fallback) {
    auto it = a.labels.find(label);
    return it != a.labels.end() ? it->second : fallback;
  };
  for (const auto& [flag, value] : {std::pair<std::string, std::string>{"--partition", pick("slurm.partition", o.partition)},
                                    {"--account", pick("slurm.account", o.account)},
                                    {"--qos", pick("slurm.qos", o.qos)},
                                    {"--time", pick("slurm.time", o.time_limit)}}) {
    if (!value.empty()) c.argv.push_back(flag + "=" + value);
  }
  c.argv.insert(c.argv.end(), o.extra_args.begin(), o.extra_args.end());
  // A wrapper that execs the script from its shared path, so that srun on
  // every node finds it (sbatch runs a spooled copy of a batch script).
  c.argv.push_back("--wrap=exec bash " + ShellQuote(o.script.string()) + " " + ShellQuote(a.config.string()));
  // The script builds `run --config --store --job --resume auto` from the
  // allocation and appends these (common/rank_launch.h), shell-quoted so a
  // root with spaces or quotes arrives as one argument.
  c.env = {{"RETINA_STORE", a.store.string()},
           {"RETINA_JOB_ID", a.job_id},
           {"RETINA_ATTEMPT_BASE", std::to_string(a.attempt - 1)},
           {"RETINA_TRAIN_ARGS", ShellQuoteArgs(LaunchOf(a).ServiceArgs())},
           {"RETINA_LAUNCHER", o.launcher}};
  if (!o.trainer_dir.empty()) c.env["RETINA_BIN"] = o.trainer_dir;
  const std::map<std::string, std::string> rank_env = LaunchOf(a).Env();
  if (auto it = rank_env.find("RETINA_ELASTIC"); it != rank_env.end()) c.env[it->first] = it->second;
  return c;
}

std::vector<SlurmJobInfo> ParseScontrolJobs(const std::string& text) {
  std::vector<SlurmJobInfo> jobs;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    SlurmJobInfo j;
    for (absl::string_view token : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      const size_t eq = token.find('=');
      if (eq == absl::string_view::npos) continue;
      const absl::string_view key = token.substr(0, eq), value = token.substr(eq + 1);
      if (key == "JobId") j.slurm_id = std::string(value);
      if (key == "JobName") j.name = std::string(value);
      if (key == "JobState") j.state = std::string(value);
      if (key == "Reason") j.reason = std::string(value);
      if (key == "Restarts") (void)absl::SimpleAtoi(value, &j.restarts);
      if (key == "ExitCode") {
        const std::vector<std::string> parts = absl::StrSplit(value, ':');
        if (parts.size() == 2) {
          (void)absl::SimpleAtoi(parts[0], &j.exit_code);
          (void)absl::SimpleAtoi(parts[1], &j.exit_signal);
        }
      }
    }
    if (!j.slurm_id.empty() && !j.state.empty()) jobs.push_back(std::move(j));
  }
  return jobs;
}

SlurmPhase MapSlurmState(const std::string& state) {
  if (state == "RUNNING" || state == "COMPLETING" || state == "STAGE_OUT" || state == "SIGNALING") {
    return SlurmPhase::kRunning;
  }
  if (state == "COMPLETED") return SlurmPhase::kSucceeded;
  if (state == "CANCELLED") return SlurmPhase::kCancelled;
  if (state == "FAILED" || state == "TIMEOUT" || state == "NODE_FAIL" || state == "OUT_OF_MEMORY" ||
      state == "BOOT_FAIL" || state == "DEADLINE" || state == "PREEMPTED" || state == "SPECIAL_EXIT") {
    return SlurmPhase::kFailed;
  }
  return SlurmPhase::kPending;  // PENDING, CONFIGURING, REQUEUED, REQUEUE_FED, REQUEUE_HOLD, RESIZING, SUSPENDED
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::map<std::string, std::string>& env, absl::Duration timeout) {
  if (argv.empty()) return absl::InvalidArgumentError("RunCommand: empty argv");
  const ExecImage image(argv, env);  // built before fork
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::setpgid(0, 0);
    ::execvpe(image.file(), image.argv(), image.envp());
    _exit(127);
  }
  ::close(fds[1]);
  CommandResult r;
  const absl::Time deadline = absl::Now() + timeout;
  bool timed_out = false;
  char buf[4096];
  while (true) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) {
      timed_out = true;
      ::kill(-pid, SIGKILL);
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) {
      if (r.output.size() < (1u << 24)) r.output.append(buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // EOF: the command closed its output
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(argv[0], ": no answer within ", absl::FormatDuration(timeout)));
  }
  if (r.exit_code == 127 && r.output.empty()) {
    return absl::NotFoundError(absl::StrCat(argv[0], ": cannot be run (not installed, or not on PATH)"));
  }
  return r;
}

namespace {

class CommandSlurmClient : public SlurmClient {
 public:
  explicit CommandSlurmClient(SlurmOptions o) : o_(std::move(o)) {}

  absl::StatusOr<std::string> Submit(const SlurmAttempt& a) override {
    const SlurmCommand cmd = SbatchCommand(o_, a);
    absl::StatusOr<CommandResult> r = RunCommand(cmd.argv, cmd.env, o_.command_timeout);
    if (!r.ok()) return r.status();
    const std::string out(absl::StripAsciiWhitespace(r->output));
    if (r->exit_code != 0) return absl::FailedPreconditionError(absl::StrCat("sbatch: ", out));
    return out.substr(0, out.find(';'));  // --parsable: "<id>" or "<id>;<cluster>"
  }

  absl::StatusOr<std::vector<SlurmJobInfo>> List() override {
    absl::StatusOr<CommandResult> r = RunCommand({Tool(o_, "scontrol"), "show", "job", "-o"}, {}, o_.command_timeout);
    if (!r.ok()) return r.status();
    if (r->exit_code != 0) return absl::UnavailableError(absl::StrCat("exit ", r->exit_code, ": ", r->output));
    return ParseScontrolJobs(r->output);
  }

  absl::Status Cancel(const std::string& slurm_id) override {
    absl::StatusOr<CommandResult> r = RunCommand({Tool(o_, "scancel"), slurm_id}, {}, o_.command_timeout);
    if (!r.ok()) return r.status();
    return r->exit_code == 0 ? absl::OkStatus() : absl::UnavailableError(r->output);
  }

 private:
  const SlurmOptions o_;
};

}  // namespace

std::unique_ptr<SlurmClient> NewCommandSlurmClient(SlurmOptions options) {
  return std::make_unique<CommandSlurmClient>(std::move(options));
}

}  // namespace retina::coordinator
