#include "services/worker/rank_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/exec_image.h"

namespace retina::worker {

absl::StatusOr<std::unique_ptr<RankProcess>> RankProcess::Spawn(const std::vector<std::string>& argv,
                                                                const std::map<std::string, std::string>& env,
                                                                const std::filesystem::path& log_path,
                                                                int events_write_fd) {
  std::error_code ec;
  std::filesystem::create_directories(log_path.parent_path(), ec);
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(log_path.string(), ": cannot open the rank log: ", std::strerror(errno)));
  }
  // Everything the child needs is built before fork (no allocation after it).
  const ExecImage image(argv, env);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(126);  // the worker died before prctl
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the worker blocks SIGTERM; ranks must not
    ::setpgid(0, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    if (events_write_fd == 3) {
      ::fcntl(3, F_SETFD, 0);  // dup2 onto itself would keep FD_CLOEXEC
    } else if (events_write_fd >= 0) {
      ::dup2(events_write_fd, 3);
    } else {
      ::close(3);
    }
    for (int fd = 4; fd < 1024; ++fd) ::close(fd);
    ::execve(image.file(), image.argv(), image.envp());
    const char msg[] = "retina-worker: exec of the trainer failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  return std::unique_ptr<RankProcess>(new RankProcess(pid));
}

RankProcess::~RankProcess() {
  if (!exited_) {
    ::kill(pid_, SIGKILL);
    int st;
    ::waitpid(pid_, &st, 0);
  }
}

void RankProcess::Signal(int sig) {
  if (!exited_) ::kill(pid_, sig);
}

bool RankProcess::Poll() {
  if (exited_) return true;
  int st = 0;
  const pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
  } else if (r < 0 && errno == ECHILD) {
    exited_ = true;
    exit_code_ = 1;
  }
  return exited_;
}

absl::StatusOr<std::unique_ptr<EventPipe>> EventPipe::Create() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  return std::unique_ptr<EventPipe>(new EventPipe(fds[0], fds[1]));
}

EventPipe::~EventPipe() = default;

void EventPipe::CloseWriteEnd() { write_fd_.reset(); }

void EventPipe::ReadLines(std::vector<std::string>* lines) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(read_fd_.get(), buf, sizeof buf);
    if (n <= 0) break;
    partial_.append(buf, static_cast<size_t>(n));
  }
  size_t start = 0, nl;
  while ((nl = partial_.find('\n', start)) != std::string::npos) {
    if (nl > start) lines->push_back(partial_.substr(start, nl - start));
    start = nl + 1;
  }
  partial_.erase(0, start);
}

namespace {

// A process's --job-uid argument and RETINA_ATTEMPT ("" and 0 when absent or unreadable).
std::pair<std::string, int> RankOf(pid_t pid) {
  std::string entry, uid, previous;
  std::ifstream cmdline(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  while (std::getline(cmdline, entry, '\0')) {
    if (previous == "--job-uid") uid = entry;
    previous = entry;
  }
  int attempt = 0;
  if (uid.empty()) return {uid, attempt};
  std::ifstream environ(absl::StrCat("/proc/", pid, "/environ"), std::ios::binary);
  while (std::getline(environ, entry, '\0')) {
    if (absl::StartsWith(entry, "RETINA_ATTEMPT=") && !absl::SimpleAtoi(entry.substr(15), &attempt)) attempt = 0;
  }
  return {uid, attempt};
}

// The inode of a process's network namespace (0 when unreadable).
ino_t NetNamespace(const std::string& pid) {
  struct stat st;
  return ::stat(("/proc/" + pid + "/ns/net").c_str(), &st) == 0 ? st.st_ino : 0;
}

// Gone or a zombie (an orphan's zombie waits for its new parent to reap it).
bool Gone(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(in, stat)) return true;
  const size_t close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z';
}

}  // namespace

std::vector<pid_t> KillEarlierAttempts(const std::string& job_uid, int attempt) {
  std::vector<pid_t> killed;
  if (job_uid.empty()) return killed;
  // "This host" is this network namespace: hosts that share a kernel (test
  // clusters of namespaces, containers) see each other's processes.
  const ino_t here = NetNamespace("self");
  std::error_code ec;
  for (const std::filesystem::directory_entry& e : std::filesystem::directory_iterator("/proc", ec)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &pid) || pid == ::getpid()) continue;
    const auto [uid, a] = RankOf(pid);
    if (uid != job_uid || a <= 0 || a >= attempt || here == 0 || NetNamespace(std::to_string(pid)) != here) continue;
    if (::kill(pid, SIGKILL) == 0) killed.push_back(pid);
  }
  for (int i = 0; i < 500; ++i) {
    if (std::all_of(killed.begin(), killed.end(), Gone)) break;
    ::usleep(10000);
  }
  return killed;
}

}  // namespace retina::worker
