// Soak: the job service under mixed load and crashes for a bounded time.
//
//   soak_bench [--seconds 600] [--seed N] [--settle-s 180] [--max-outstanding 8] [--keep]
//
// In a temp dir on loopback: a tiny synthetic dataset in the store (as
// tests/services/cluster.h's MakeDataset), one retina-coordinator (own SQLite
// database, --heartbeat-s 0.2 --lease-s 2, a fixed --listen port so that a
// restart is reached at the same address) and two retina-workers (2 CPU
// slots each, --gpus none). For --seconds, client threads run:
//   submitters  SubmitJob of tiny pretrain jobs (1-3 epochs, world size 1-2,
//               max_restarts 3), each with a unique request_id, retried with
//               that id until acknowledged or the time is up (one first try
//               in ten has a deadline of a few ms, so the retry path runs
//               even while the coordinator is up); at most --max-outstanding
//               acknowledged jobs are unfinished at once;
//   watchers    WatchJob streams cancelled (TryCancel) at random moments;
//   followers   ReadLogs follow=true on running jobs, cancelled after a while;
//   a canceller CancelJob on a random acknowledged job now and then;
//   a monitor   ListJobs once a second (what the others pick from).
// Every client tolerates UNAVAILABLE / DEADLINE_EXCEEDED while the
// coordinator is down. At one random moment in the middle third the
// coordinator is SIGKILLed and restarted with the same flags; at another the
// same happens to one worker (restarted with the same id).
//
// Then submitting stops, jobs get --settle-s to finish, and it prints:
// acknowledged jobs and their states; lost (acknowledged ids GetJob does not
// know); concurrent attempts, found two ways: (a) live: every 100 ms the rank
// processes (RETINA_JOB_ID / RETINA_ATTEMPT in their environment) are listed
// and two attempts of one job alive at once count; (b) from the store: the
// last write (mtime) of every rank log of attempt N must precede the creation
// (statx birth time; the first log line's timestamp where the file system has
// none) of every rank log of the job's next attempt; lost checkpoints (a
// SUCCEEDED job whose checkpoints/LATEST does not name a directory with a
// MANIFEST); the coordinator's RSS (VmRSS) after the warm-up (the first 10%
// of --seconds from the process's start) and at the end; and the counters
// retina_worker_lease_misses_total / retina_db_commit_failures_total from
// /metrics (-1 when the build has no such series; the counters restart with
// the coordinator, so the values just before its kill are printed too).
//
// Exit 0 when nothing is lost, no job ran twice concurrently, no checkpoint
// is lost and the end RSS is within 20% of the warm-up RSS of the same
// coordinator process (the restarted one: its first 10% of --seconds; the
// first process's ratio is printed too); else 1 with the reasons. There are
// no other timing assertions. Idempotency breaches (two jobs with one
// request_id), services that exited on their own and jobs left unfinished are
// printed as findings but do not change the exit status.
//
// Process ownership: this program is a child subreaper, so ranks orphaned by
// a killed worker are reparented here and reaped. Every child forks from the
// main thread (the children's PR_SET_PDEATHSIG(SIGKILL) follows the forking
// thread); at exit every descendant is SIGKILLed by pid and reaped. The temp
// dir is removed unless --keep. SIGINT/SIGTERM end the run early (exit 1).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "retina/v1/job_service.grpc.pb.h"
#include "bench/http_get.h"
#include "services/rpc_util.h"

namespace fs = std::filesystem;
namespace v1 = retina::v1;
using Clock = std::chrono::steady_clock;
using retina::bench::HttpGet;
using retina::bench::Sample;

namespace {

std::atomic<bool> g_interrupted{false};

void OnStopSignal(int) { g_interrupted = true; }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

int64_t WallNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatWallNs(int64_t ns) {
  const time_t s = static_cast<time_t>(ns / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ns / 1000000 % 1000));
  return buf;
}

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

bool Retryable(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED ||
         c == grpc::StatusCode::CANCELLED || c == grpc::StatusCode::ABORTED ||
         c == grpc::StatusCode::RESOURCE_EXHAUSTED || c == grpc::StatusCode::UNKNOWN;
}

const char* CodeName(grpc::StatusCode c) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(c);
  return i >= 0 && i < 17 ? kNames[i] : "?";
}

// ---- processes ----

// Pids of live Child objects: the orphan reaper leaves them to their owner.
std::mutex g_children_mu;
std::set<pid_t> g_children;

// A child process; its stdout and stderr are appended to `log`. RAII: a
// still-running child is SIGKILLed and reaped on destruction. Construct and
// destroy on the main thread only (see the file comment).
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) : argv_(argv) {
    // Everything the child needs is built before fork (no allocation after it).
    std::vector<char*> args;
    for (const std::string& a : argv_) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const std::string log_path = log.string();
    const pid_t parent = getpid();
    std::lock_guard<std::mutex> lock(g_children_mu);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGPIPE, SIG_DFL);
      const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execv(args[0], args.data());
      _exit(127);
    }
    if (pid_ > 0) g_children.insert(pid_);
  }
  ~Child() { Kill(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // SIGKILL and reap; returns the wait status (0 when already gone).
  int Kill() {
    if (pid_ <= 0) return status_;
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    Forget();
    return status_;
  }
  // True while running; once it has exited on its own, `status()` says how.
  bool Running() {
    if (pid_ <= 0) return false;
    if (waitpid(pid_, &status_, WNOHANG) == 0) return true;
    Forget();
    return false;
  }
  int status() const { return status_; }

 private:
  void Forget() {
    std::lock_guard<std::mutex> lock(g_children_mu);
    g_children.erase(pid_);
    pid_ = -1;
  }
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  int status_ = 0;
};

std::string DescribeWait(int st) {
  if (WIFEXITED(st)) return absl::StrCat("exit ", WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return absl::StrCat("signal ", WTERMSIG(st));
  return absl::StrCat("status ", st);
}

std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  const fs::path task = fs::path("/proc") / std::to_string(pid) / "task";
  for (auto it = fs::directory_iterator(task, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::ifstream in(it->path() / "children");
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  return out;
}

std::vector<pid_t> DescendantsOf(pid_t pid) {
  std::vector<pid_t> out = ChildrenOf(pid);
  for (size_t i = 0; i < out.size(); ++i) {
    for (pid_t c : ChildrenOf(out[i])) out.push_back(c);
  }
  return out;
}

// Reaps children that no Child owns (ranks orphaned by a killed worker).
void ReapOrphans() {
  std::lock_guard<std::mutex> lock(g_children_mu);
  for (pid_t c : ChildrenOf(getpid())) {
    if (g_children.count(c)) continue;
    int st;
    waitpid(c, &st, WNOHANG);
  }
}

// SIGKILLs and reaps every remaining descendant, by pid: the children no
// Child owns any more (orphaned ranks) and their children. Call after every
// Child is gone.
void KillOrphans() {
  const auto end = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < end) {
    const std::vector<pid_t> kids = ChildrenOf(getpid());
    if (kids.empty()) break;
    for (pid_t c : kids) {
      for (pid_t d : DescendantsOf(c)) kill(d, SIGKILL);
      kill(c, SIGKILL);
      int st;
      waitpid(c, &st, WNOHANG);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::map<std::string, std::string> EnvironOf(pid_t pid) {
  std::map<std::string, std::string> env;
  std::ifstream in(fs::path("/proc") / std::to_string(pid) / "environ", std::ios::binary);
  std::string kv;
  while (std::getline(in, kv, '\0')) {
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return env;
}

int64_t RssKb(pid_t pid) {
  std::ifstream in(fs::path("/proc") / std::to_string(pid) / "status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

// ---- ports, HTTP ----

// A block of 100 rendezvous ports below the ephemeral range, held for this
// process's lifetime by an flock (the same scheme as tests/services/cluster.h,
// so a soak and the tests never share a block).
std::string RendezvousPortRange() {
  for (int block = 0; block < 120; ++block) {
    const std::string lock = "/tmp/retina-test-ports-" + std::to_string(block) + ".lock";
    const int fd = open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0666);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {  // kept open on purpose
      const int base = 20000 + block * 100;
      return absl::StrCat(base, "-", base + 99);
    }
    close(fd);
  }
  return "20000-20099";
}

// A port the kernel says is free now (bound to port 0, then released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}


// ---- log file times ----

// "I1125 04:51:02.123 ..." (common/logging.h; UTC, no year) -> ns since the
// epoch, the year taken so that the time is not in the future; -1 otherwise.
int64_t LogLineNs(const std::string& line) {
  int mo, d, h, mi, s, ms;
  char sev;
  if (line.size() < 18 || std::sscanf(line.c_str(), "%c%2d%2d %2d:%2d:%2d.%3d", &sev, &mo, &d, &h, &mi, &s, &ms) != 7 ||
      std::strchr("DIWEF", sev) == nullptr) {
    return -1;
  }
  const time_t now = time(nullptr);
  struct tm tm_now;
  gmtime_r(&now, &tm_now);
  for (int year = tm_now.tm_year; year >= tm_now.tm_year - 1; --year) {
    struct tm tm{};
    tm.tm_year = year;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    const time_t t = timegm(&tm);
    if (t <= now + 86400) return static_cast<int64_t>(t) * 1000000000 + static_cast<int64_t>(ms) * 1000000;
  }
  return -1;
}

struct LogTimes {
  bool ok = false;
  int64_t created_ns = 0;  // birth time, else the first timestamped line
  int64_t last_write_ns = 0;
  bool from_birth = false;
};

LogTimes TimesOf(const fs::path& p) {
  LogTimes t;
  struct statx sx;
  if (statx(AT_FDCWD, p.c_str(), 0, STATX_BTIME | STATX_MTIME, &sx) != 0) return t;
  t.ok = true;
  t.last_write_ns = static_cast<int64_t>(sx.stx_mtime.tv_sec) * 1000000000 + sx.stx_mtime.tv_nsec;
  if (sx.stx_mask & STATX_BTIME) {
    t.created_ns = static_cast<int64_t>(sx.stx_btime.tv_sec) * 1000000000 + sx.stx_btime.tv_nsec;
    t.from_birth = true;
    return t;
  }
  std::ifstream in(p);
  std::string line;
  t.created_ns = t.last_write_ns;  // an empty log: no earlier evidence
  while (std::getline(in, line)) {
    const int64_t ns = LogLineNs(line);
    if (ns >= 0) {
      t.created_ns = std::min(ns, t.last_write_ns);
      break;
    }
  }
  return t;
}

// ---- the soak ----

struct Options {
  int seconds = 600;
  int settle_s = 180;
  int max_outstanding = 8;
  uint64_t seed = 0;
  bool keep = false;
};

struct StreamTally {
  std::atomic<int64_t> opened{0}, messages{0}, ended_ok{0}, cancelled{0}, unavailable{0}, not_found{0}, other{0};
  std::atomic<int64_t> protocol_errors{0};  // watch: first message not a SNAPSHOT, or OK before a terminal state
  std::atomic<int64_t> bytes{0};
};

class Soak {
 public:
  explicit Soak(Options o) : o_(o), rng_(o.seed) {}

  int Run();

 private:
  // Services.
  std::vector<std::string> CoordinatorArgv() const;
  std::vector<std::string> WorkerArgv(const std::string& id) const;
  bool StartCoordinator(std::string* why);
  bool StartWorker(const std::string& id, std::string* why);
  nlohmann::json ReadReady(const fs::path& p, double timeout_s);
  bool MakeDataset(std::string* why);

  // Main-thread housekeeping every ~100 ms: orphans, the live attempt scan,
  // the RSS samples, unexpected exits. Sleeps `d` in such ticks.
  void Tick();
  void SleepTicking(Clock::duration d);
  void ScanRanks();

  // Clients.
  std::unique_ptr<v1::JobService::Stub> NewStub() const;
  void Submitter(int index);
  void Watcher(int index);
  void Follower(int index);
  void Canceller();
  void Monitor();
  bool RunStopped() const { return clients_stop_.load() || g_interrupted.load(); }
  int Outstanding();
  std::string RandomAcked(bool prefer_unfinished, std::mt19937_64* rng);
  // Runs `body` on a helper thread and TryCancels `ctx` after `after` (or
  // when the run stops) unless it ended first; returns its status.
  grpc::Status WithRandomCancel(grpc::ClientContext* ctx, std::chrono::milliseconds after,
                                const std::function<grpc::Status()>& body);
  void Count(StreamTally* t, const grpc::Status& s, bool cancelled_by_us);

  // The end.
  bool Settle();
  void PrintEvidence(const std::set<std::string>& jobs);
  std::string Metrics();

  Options o_;
  std::mt19937_64 rng_;  // main thread only
  fs::path dir_;
  std::string ports_;
  int grpc_port_ = 0;
  std::atomic<int> metrics_port_{0};
  std::string address_;
  Clock::time_point t0_, run_end_;

  std::unique_ptr<Child> coordinator_;
  Clock::time_point coordinator_started_;
  std::map<std::string, std::unique_ptr<Child>> workers_;
  std::vector<std::string> findings_;  // unexpected exits and such, printed at the end
  std::set<std::string> planned_down_;  // "coordinator" or a worker id while killed on purpose

  // RSS samples (kB): per coordinator process, the first after its warm-up.
  struct RssSample {
    pid_t pid = 0;
    int64_t kb = -1;
  };
  RssSample rss_first_warm_, rss_current_warm_;

  // Live attempt scan.
  std::map<std::string, std::string> live_violations_;  // job -> description (first seen)
  int64_t rank_scans_ = 0;

  // Shared with the client threads.
  std::atomic<bool> clients_stop_{false};
  std::mutex mu_;
  std::vector<std::string> acked_;                       // job ids in acknowledgement order
  std::map<std::string, std::string> acked_request_;     // job id -> request id
  std::map<std::string, v1::Job> snapshot_;              // the monitor's last ListJobs
  std::set<std::string> cancel_acked_;                   // CancelJob returned OK
  std::atomic<int64_t> submit_calls_{0}, submit_retries_{0}, submit_unacked_{0}, submit_rejected_{0};
  std::atomic<int64_t> submit_short_deadline_{0};
  std::string first_rejection_;
  std::atomic<int64_t> cancel_ok_{0}, cancel_precondition_{0}, cancel_unavailable_{0}, cancel_other_{0};
  std::atomic<int64_t> monitor_ok_{0}, monitor_failed_{0};
  StreamTally watch_, logs_;
};

std::vector<std::string> Soak::CoordinatorArgv() const {
  return {absl::StrCat(RETINA_BINARY_ROOT, "/services/retina-coordinator"),
          "--listen", address_,
          "--metrics-listen", "127.0.0.1:0",
          "--db", (dir_ / "jobs.db").string(),
          "--store", (dir_ / "store").string(),
          "--heartbeat-s", "0.2", "--lease-s", "2",
          "--ports", ports_,
          "--ready-file", (dir_ / "coordinator.ready").string()};
}

std::vector<std::string> Soak::WorkerArgv(const std::string& id) const {
  return {absl::StrCat(RETINA_BINARY_ROOT, "/services/retina-worker"),
          "--coordinator", address_,
          "--id", id, "--host", "127.0.0.1",
          "--cpu-slots", "2", "--gpus", "none",
          "--store", (dir_ / "store").string(),
          "--trainer", absl::StrCat(RETINA_BINARY_ROOT, "/trainer/retina-train"),
          "--grace-s", "5",
          "--metrics-listen", "127.0.0.1:0",
          "--ready-file", (dir_ / (id + ".ready")).string()};
}

nlohmann::json Soak::ReadReady(const fs::path& p, double timeout_s) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  while (Clock::now() < end && !g_interrupted) {
    std::ifstream in(p);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object()) return j;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return nlohmann::json();
}

bool Soak::StartCoordinator(std::string* why) {
  const fs::path ready = dir_ / "coordinator.ready";
  for (int tries = 0; tries < 5; ++tries) {
    fs::remove(ready);
    coordinator_ = std::make_unique<Child>(CoordinatorArgv(), dir_ / "coordinator.log");
    const auto started = Clock::now();
    nlohmann::json j;
    while (Clock::now() - started < std::chrono::seconds(30) && !g_interrupted) {
      std::ifstream in(ready);
      j = nlohmann::json::parse(in, nullptr, false);
      if (j.is_object() || !coordinator_->Running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (j.is_object() && j.contains("metrics_port")) {
      metrics_port_ = j.value("metrics_port", 0);
      coordinator_started_ = Clock::now();
      return true;
    }
    // Not started: the port may be briefly held (it is fixed); try again.
    *why = absl::StrCat("retina-coordinator did not start on ", address_, " (",
                        coordinator_->Running() ? "no ready file in 30 s" : DescribeWait(coordinator_->status()),
                        "); see ", (dir_ / "coordinator.log").string());
    coordinator_.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return false;
}

bool Soak::StartWorker(const std::string& id, std::string* why) {
  const fs::path ready = dir_ / (id + ".ready");
  fs::remove(ready);
  workers_[id] = std::make_unique<Child>(WorkerArgv(id), dir_ / (id + ".log"));
  if (ReadReady(ready, 30).is_object()) return true;
  *why = absl::StrCat("retina-worker ", id, " did not start; see ", (dir_ / (id + ".log")).string());
  return false;
}

bool Soak::MakeDataset(std::string* why) {
  // As Cluster::MakeDataset: 4 images of 128^2 = 16 patches of 64^2, 2 steps per epoch at batch 8.
  const fs::path raw = dir_ / "raw-em";
  const std::string bin = absl::StrCat(RETINA_BINARY_ROOT, "/trainer/");
  const std::string cmd = bin + "retina-synth images --out " + raw.string() + " --count 4 --size 128 > " +
                          (dir_ / "dataset.log").string() + " 2>&1 && " + bin + "retina-shard pack --input " +
                          raw.string() + " --out " + (dir_ / "store" / "datasets" / "em").string() +
                          " --size 64 --shard-images 256 >> " + (dir_ / "dataset.log").string() + " 2>&1";
  if (std::system(cmd.c_str()) == 0) return true;
  *why = "cannot make the dataset: " + cmd;
  return false;
}

std::unique_ptr<v1::JobService::Stub> Soak::NewStub() const {
  auto channel = retina::services::MakeChannel(address_, "");
  return v1::JobService::NewStub(*channel);
}

int Soak::Outstanding() {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const std::string& id : acked_) {
    auto it = snapshot_.find(id);
    n += it == snapshot_.end() || !IsTerminal(it->second.state());
  }
  return n;
}

std::string Soak::RandomAcked(bool prefer_unfinished, std::mt19937_64* rng) {
  std::lock_guard<std::mutex> lock(mu_);
  if (acked_.empty()) return "";
  if (prefer_unfinished) {
    std::vector<std::string> open;
    for (const std::string& id : acked_) {
      auto it = snapshot_.find(id);
      if (it == snapshot_.end() || !IsTerminal(it->second.state())) open.push_back(id);
    }
    if (!open.empty()) return open[(*rng)() % open.size()];
  }
  return acked_[(*rng)() % acked_.size()];
}

void Soak::Submitter(int index) {
  std::mt19937_64 rng(o_.seed * 1000003 + 11 + index);
  auto stub = NewStub();
  for (int n = 0; !RunStopped(); ++n) {
    if (Outstanding() >= o_.max_outstanding) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    const int epochs = 1 + static_cast<int>(rng() % 3);
    const int world = 1 + static_cast<int>(rng() % 2);
    v1::SubmitJobRequest req;
    req.mutable_spec()->set_config_yaml(absl::StrCat(
        "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n"
        "pretrain: {epochs: ",
        epochs, ", global_batch: 8, checkpoint_every_epochs: 1}\n"));
    req.mutable_spec()->set_world_size(world);
    req.mutable_spec()->set_max_restarts(3);
    req.mutable_spec()->set_name(absl::StrCat("soak ", epochs, "ep x", world));
    req.set_request_id(absl::StrCat("soak-", getpid(), "-", index, "-", n));
    bool acked = false;
    for (int tries = 0; !acked && !RunStopped(); ++tries) {
      if (tries > 0) {
        ++submit_retries_;
        std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 300));
      }
      // One first try in ten gets a deadline of a few ms: whether the job was
      // committed is then unknown to us, and the retry must return it.
      const bool short_deadline = tries == 0 && rng() % 10 == 0;
      auto ctx = retina::services::NewCallContext(
          "", short_deadline ? absl::Milliseconds(1 + rng() % 20) : absl::Seconds(5));
      v1::Job job;
      ++submit_calls_;
      submit_short_deadline_ += short_deadline;
      const grpc::Status s = stub->SubmitJob(ctx.get(), req, &job);
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!acked_request_.count(job.id())) acked_.push_back(job.id());
        acked_request_[job.id()] = req.request_id();
        acked = true;
      } else if (!Retryable(s.error_code())) {
        ++submit_rejected_;
        std::lock_guard<std::mutex> lock(mu_);
        if (first_rejection_.empty()) first_rejection_ = absl::StrCat(CodeName(s.error_code()), ": ", s.error_message());
        break;
      }
    }
    if (!acked) ++submit_unacked_;
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 1500));
  }
}

grpc::Status Soak::WithRandomCancel(grpc::ClientContext* ctx, std::chrono::milliseconds after,
                                    const std::function<grpc::Status()>& body) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  std::thread reader([&] {
    grpc::Status s = body();
    std::lock_guard<std::mutex> lock(m);
    status = s;
    done = true;
    cv.notify_all();
  });
  const auto deadline = Clock::now() + after;
  {
    std::unique_lock<std::mutex> lock(m);
    while (!done && Clock::now() < deadline && !RunStopped()) cv.wait_for(lock, std::chrono::milliseconds(100));
  }
  ctx->TryCancel();  // harmless when the call has ended
  reader.join();
  return status;
}

void Soak::Count(StreamTally* t, const grpc::Status& s, bool cancelled_by_us) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK: ++t->ended_ok; break;
    case grpc::StatusCode::CANCELLED: ++(cancelled_by_us ? t->cancelled : t->other); break;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: ++t->unavailable; break;
    case grpc::StatusCode::NOT_FOUND: ++t->not_found; break;
    default: ++t->other;
  }
}

void Soak::Watcher(int index) {
  std::mt19937_64 rng(o_.seed * 1000003 + 101 + index);
  auto stub = NewStub();
  while (!RunStopped()) {
    const std::string id = RandomAcked(rng() % 10 < 7, &rng);
    if (id.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    auto ctx = retina::services::NewCallContext("", absl::Seconds(120));
    v1::WatchJobRequest req;
    req.set_id(id);
    ++watch_.opened;
    const auto after = std::chrono::milliseconds(100 + rng() % 5000);
    const grpc::Status s = WithRandomCancel(ctx.get(), after, [&]() -> grpc::Status {
      auto reader = stub->WatchJob(ctx.get(), req);
      v1::JobEvent ev;
      bool first = true, terminal = false;
      while (reader->Read(&ev)) {
        ++watch_.messages;
        if (first && ev.type() != v1::JobEvent::SNAPSHOT) ++watch_.protocol_errors;
        first = false;
        terminal |= IsTerminal(ev.job().state());
      }
      grpc::Status st = reader->Finish();
      if (st.ok() && !terminal) ++watch_.protocol_errors;
      return st;
    });
    Count(&watch_, s, s.error_code() == grpc::StatusCode::CANCELLED);
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 500));
  }
}

void Soak::Follower(int index) {
  std::mt19937_64 rng(o_.seed * 1000003 + 201 + index);
  auto stub = NewStub();
  while (!RunStopped()) {
    std::string id;
    int world = 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<const v1::Job*> running;
      for (const auto& [jid, job] : snapshot_) {
        if (job.state() == v1::RUNNING) running.push_back(&job);
      }
      if (!running.empty()) {
        const v1::Job* j = running[rng() % running.size()];
        id = j->id();
        world = std::max(1, j->spec().world_size());
      }
    }
    if (id.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      continue;
    }
    auto ctx = retina::services::NewCallContext("", absl::Seconds(120));
    v1::ReadLogsRequest req;
    req.set_id(id);
    req.set_rank(static_cast<int>(rng() % world));
    req.set_follow(true);
    ++logs_.opened;
    const auto after = std::chrono::milliseconds(1000 + rng() % 5000);
    const grpc::Status s = WithRandomCancel(ctx.get(), after, [&]() -> grpc::Status {
      auto reader = stub->ReadLogs(ctx.get(), req);
      v1::LogChunk chunk;
      while (reader->Read(&chunk)) {
        ++logs_.messages;
        logs_.bytes += static_cast<int64_t>(chunk.data().size());
      }
      return reader->Finish();
    });
    Count(&logs_, s, s.error_code() == grpc::StatusCode::CANCELLED);
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 500));
  }
}

void Soak::Canceller() {
  std::mt19937_64 rng(o_.seed * 1000003 + 301);
  auto stub = NewStub();
  while (!RunStopped()) {
    const auto wait_until = Clock::now() + std::chrono::milliseconds(4000 + rng() % 6000);
    while (Clock::now() < wait_until && !RunStopped()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (RunStopped()) break;
    const std::string id = RandomAcked(true, &rng);
    if (id.empty()) continue;
    auto ctx = retina::services::NewCallContext("", absl::Seconds(5));
    v1::CancelJobRequest req;
    req.set_id(id);
    v1::Job job;
    const grpc::Status s = stub->CancelJob(ctx.get(), req, &job);
    if (s.ok()) {
      ++cancel_ok_;
      std::lock_guard<std::mutex> lock(mu_);
      cancel_acked_.insert(id);
    } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      ++cancel_precondition_;  // already finished
    } else if (Retryable(s.error_code())) {
      ++cancel_unavailable_;
    } else {
      ++cancel_other_;
    }
  }
}

void Soak::Monitor() {
  auto stub = NewStub();
  while (!RunStopped()) {
    std::map<std::string, v1::Job> all;
    std::string token;
    bool ok = true;
    do {
      auto ctx = retina::services::NewCallContext("", absl::Seconds(5));
      v1::ListJobsRequest req;
      req.set_page_size(1000);
      req.set_page_token(token);
      v1::ListJobsResponse resp;
      if (!stub->ListJobs(ctx.get(), req, &resp).ok()) {
        ok = false;
        break;
      }
      for (const v1::Job& j : resp.jobs()) all[j.id()] = j;
      token = resp.next_page_token();
    } while (!token.empty());
    if (ok) {
      ++monitor_ok_;
      std::lock_guard<std::mutex> lock(mu_);
      snapshot_ = std::move(all);
    } else {
      ++monitor_failed_;
    }
    for (int i = 0; i < 10 && !RunStopped(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Soak::ScanRanks() {
  ++rank_scans_;
  // job -> attempt -> pids
  std::map<std::string, std::map<std::string, std::vector<pid_t>>> alive;
  for (pid_t p : DescendantsOf(getpid())) {
    std::ifstream stat(fs::path("/proc") / std::to_string(p) / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const size_t paren = text.rfind(')');
    if (paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z') continue;
    const auto env = EnvironOf(p);
    auto job = env.find("RETINA_JOB_ID");
    auto attempt = env.find("RETINA_ATTEMPT");
    if (job == env.end() || attempt == env.end()) continue;
    alive[job->second][attempt->second].push_back(p);
  }
  for (const auto& [job, attempts] : alive) {
    if (attempts.size() < 2 || live_violations_.count(job)) continue;
    std::vector<std::string> parts;
    for (const auto& [a, pids] : attempts) {
      std::vector<std::string> who;
      for (pid_t p : pids) {
        std::ifstream stat(fs::path("/proc") / std::to_string(p) / "stat");
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        int ppid = 0;
        const size_t paren = text.rfind(')');
        if (paren != std::string::npos) std::sscanf(text.c_str() + paren + 2, "%*c %d", &ppid);
        who.push_back(absl::StrCat("pid ", p, " (parent ", ppid, ppid == getpid() ? ": orphaned" : "", ")"));
      }
      parts.push_back(absl::StrCat("attempt ", a, ": ", absl::StrJoin(who, ", ")));
    }
    live_violations_[job] = absl::StrCat("at ", FormatWallNs(WallNs()), " UTC ", absl::StrJoin(parts, "; "));
    std::printf("[%6.1fs] CONCURRENT ATTEMPTS %s: %s\n", Seconds(Clock::now() - t0_), job.c_str(),
                live_violations_[job].c_str());
    std::fflush(stdout);
  }
}

void Soak::Tick() {
  ReapOrphans();
  ScanRanks();
  const auto warm = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(0.1 * o_.seconds));
  if (coordinator_ && coordinator_->pid() > 0) {
    const pid_t pid = coordinator_->pid();
    if (rss_current_warm_.pid != pid && Clock::now() - coordinator_started_ >= warm) {
      rss_current_warm_ = {pid, RssKb(pid)};
      if (rss_first_warm_.pid == 0) rss_first_warm_ = rss_current_warm_;
      std::printf("[%6.1fs] coordinator pid %d RSS after warm-up: %lld kB\n", Seconds(Clock::now() - t0_), pid,
                  static_cast<long long>(rss_current_warm_.kb));
      std::fflush(stdout);
    }
  }
  if (coordinator_ && !planned_down_.count("coordinator") && !coordinator_->Running()) {
    const std::string what = absl::StrCat("retina-coordinator exited on its own (", DescribeWait(coordinator_->status()),
                                          ") at ", Seconds(Clock::now() - t0_), " s; restarted");
    std::printf("[%6.1fs] FINDING: %s\n", Seconds(Clock::now() - t0_), what.c_str());
    findings_.push_back(what);
    std::string why;
    if (!StartCoordinator(&why)) findings_.push_back(why);
  }
  for (auto& [id, w] : workers_) {
    if (w && !planned_down_.count(id) && !w->Running()) {
      const std::string what = absl::StrCat("retina-worker ", id, " exited on its own (", DescribeWait(w->status()),
                                            ") at ", Seconds(Clock::now() - t0_), " s; restarted");
      std::printf("[%6.1fs] FINDING: %s\n", Seconds(Clock::now() - t0_), what.c_str());
      findings_.push_back(what);
      std::string why;
      if (!StartWorker(id, &why)) findings_.push_back(why);
    }
  }
}

void Soak::SleepTicking(Clock::duration d) {
  const auto end = Clock::now() + d;
  while (Clock::now() < end && !g_interrupted) {
    Tick();
    std::this_thread::sleep_for(std::min<Clock::duration>(std::chrono::milliseconds(100), end - Clock::now()));
  }
}

std::string Soak::Metrics() { return metrics_port_ > 0 ? HttpGet(metrics_port_, "/metrics") : ""; }

bool Soak::Settle() {
  auto stub = NewStub();
  const auto end = Clock::now() + std::chrono::seconds(o_.settle_s);
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ids = acked_;
  }
  std::set<std::string> open(ids.begin(), ids.end());
  while (!open.empty() && Clock::now() < end && !g_interrupted) {
    for (auto it = open.begin(); it != open.end();) {
      auto ctx = retina::services::NewCallContext("", absl::Seconds(5));
      v1::GetJobRequest req;
      req.set_id(*it);
      v1::Job job;
      const grpc::Status s = stub->GetJob(ctx.get(), req, &job);
      // NOT_FOUND is settled too: counted as lost below.
      if ((s.ok() && IsTerminal(job.state())) || s.error_code() == grpc::StatusCode::NOT_FOUND) {
        it = open.erase(it);
      } else {
        ++it;
      }
    }
    if (!open.empty()) SleepTicking(std::chrono::seconds(1));
  }
  return open.empty();
}

// Lines of the services' logs naming `jobs` (at most 40 per job and file).
void Soak::PrintEvidence(const std::set<std::string>& jobs) {
  std::vector<fs::path> logs = {dir_ / "coordinator.log"};
  for (const auto& [id, w] : workers_) logs.push_back(dir_ / (id + ".log"));
  for (const std::string& job : jobs) {
    for (const fs::path& p : logs) {
      std::ifstream in(p);
      std::string line;
      int n = 0;
      while (std::getline(in, line) && n < 40) {
        if (line.find(job) != std::string::npos) {
          std::printf("  %s: %s\n", p.filename().c_str(), line.c_str());
          ++n;
        }
      }
    }
  }
}

int Soak::Run() {
  std::printf("soak_bench: %d s, seed %llu\n", o_.seconds, static_cast<unsigned long long>(o_.seed));
  dir_ = fs::temp_directory_path() / absl::StrCat("retina-soak-", getpid());
  fs::remove_all(dir_);
  fs::create_directories(dir_ / "store");
  ports_ = RendezvousPortRange();
  grpc_port_ = FreePort();
  address_ = absl::StrCat("127.0.0.1:", grpc_port_);
  std::vector<std::string> failures;
  int rc = 1;
  [&] {
    std::string why;
    if (!MakeDataset(&why) || !StartCoordinator(&why) || !StartWorker("soak-w1", &why) ||
        !StartWorker("soak-w2", &why)) {
      failures.push_back(why);
      return;
    }
    std::printf("coordinator %s (metrics port %d, rendezvous ports %s), workers soak-w1 soak-w2, dir %s\n",
                address_.c_str(), metrics_port_.load(), ports_.c_str(), dir_.c_str());
    std::fflush(stdout);

    // The chaos schedule: both in the middle third, at least 10% of the run apart.
    const double T = o_.seconds;
    std::uniform_real_distribution<double> mid(T / 3, 2 * T / 3);
    const double kill_coordinator_s = mid(rng_);
    double kill_worker_s = mid(rng_);
    for (int i = 0; i < 100 && std::abs(kill_worker_s - kill_coordinator_s) < 0.1 * T; ++i) kill_worker_s = mid(rng_);
    const std::string victim = rng_() % 2 ? "soak-w1" : "soak-w2";
    const double coordinator_down_s = 0.5 + static_cast<double>(rng_() % 2500) / 1000;  // 0.5-3 s
    const double worker_down_s = static_cast<double>(rng_() % 4000) / 1000;             // 0-4 s: before or after the lease
    std::printf("schedule: kill -9 coordinator at %.1f s (down %.1f s), kill -9 %s at %.1f s (down %.1f s)\n",
                kill_coordinator_s, coordinator_down_s, victim.c_str(), kill_worker_s, worker_down_s);
    std::fflush(stdout);

    t0_ = Clock::now();
    run_end_ = t0_ + std::chrono::seconds(o_.seconds);
    std::vector<std::thread> clients;
    for (int i = 0; i < 2; ++i) clients.emplace_back([this, i] { Submitter(i); });
    for (int i = 0; i < 3; ++i) clients.emplace_back([this, i] { Watcher(i); });
    clients.emplace_back([this] { Follower(0); });
    clients.emplace_back([this] { Canceller(); });
    clients.emplace_back([this] { Monitor(); });

    bool coordinator_done = false, worker_done = false;
    std::string before_kill_metrics;
    while (Clock::now() < run_end_ && !g_interrupted) {
      const double now_s = Seconds(Clock::now() - t0_);
      if (!coordinator_done && now_s >= kill_coordinator_s) {
        coordinator_done = true;
        before_kill_metrics = Metrics();
        const pid_t pid = coordinator_->pid();
        planned_down_.insert("coordinator");
        coordinator_->Kill();
        std::printf("[%6.1fs] killed coordinator pid %d (SIGKILL)\n", Seconds(Clock::now() - t0_), pid);
        std::fflush(stdout);
        SleepTicking(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(coordinator_down_s)));
        std::string why2;
        if (!StartCoordinator(&why2)) {
          failures.push_back("the coordinator did not restart: " + why2);
          break;
        }
        planned_down_.erase("coordinator");
        std::printf("[%6.1fs] restarted coordinator pid %d on %s (metrics port %d)\n", Seconds(Clock::now() - t0_),
                    coordinator_->pid(), address_.c_str(), metrics_port_.load());
        std::fflush(stdout);
      }
      if (!worker_done && now_s >= kill_worker_s) {
        worker_done = true;
        const pid_t pid = workers_[victim]->pid();
        planned_down_.insert(victim);
        workers_[victim]->Kill();
        std::printf("[%6.1fs] killed %s pid %d (SIGKILL)\n", Seconds(Clock::now() - t0_), victim.c_str(), pid);
        std::fflush(stdout);
        SleepTicking(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(worker_down_s)));
        std::string why2;
        if (!StartWorker(victim, &why2)) {
          failures.push_back("the worker did not restart: " + why2);
          break;
        }
        planned_down_.erase(victim);
        std::printf("[%6.1fs] restarted %s pid %d\n", Seconds(Clock::now() - t0_), victim.c_str(),
                    workers_[victim]->pid());
        std::fflush(stdout);
      }
      SleepTicking(std::chrono::milliseconds(100));
    }
    clients_stop_ = true;
    for (auto& t : clients) t.join();
    const double ran_s = Seconds(Clock::now() - t0_);
    std::printf("[%6.1fs] clients stopped; settling (up to %d s)\n", ran_s, o_.settle_s);
    std::fflush(stdout);
    if (g_interrupted) {
      failures.push_back("interrupted");
      return;
    }
    const bool settled = Settle();
    std::printf("[%6.1fs] %s\n", Seconds(Clock::now() - t0_),
                settled ? "all acknowledged jobs settled" : "some jobs did not settle in time");

    // Final states of the acknowledged jobs.
    auto stub = NewStub();
    std::vector<std::string> ids;
    std::map<std::string, std::string> requests;
    std::set<std::string> cancel_acked;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ids = acked_;
      requests = acked_request_;
      cancel_acked = cancel_acked_;
    }
    std::map<std::string, v1::Job> final_jobs;
    std::vector<std::string> lost, unreadable;
    for (const std::string& id : ids) {
      grpc::Status s;
      v1::Job job;
      for (int tries = 0; tries < 30; ++tries) {
        auto ctx = retina::services::NewCallContext("", absl::Seconds(5));
        v1::GetJobRequest req;
        req.set_id(id);
        s = stub->GetJob(ctx.get(), req, &job);
        if (s.ok() || !Retryable(s.error_code())) break;
        SleepTicking(std::chrono::seconds(1));
      }
      if (s.ok()) {
        final_jobs[id] = job;
      } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        lost.push_back(id);
      } else {
        unreadable.push_back(absl::StrCat(id, " (", CodeName(s.error_code()), ": ", s.error_message(), ")"));
      }
    }
    std::map<v1::JobState, int> states;
    int attempts_total = 0, restarted_jobs = 0;
    for (const auto& [id, job] : final_jobs) {
      ++states[job.state()];
      attempts_total += job.attempt();
      restarted_jobs += job.attempt() > 1;
    }
    // Every job the coordinator knows (also ones whose acknowledgement was lost).
    std::map<std::string, v1::Job> all;
    {
      std::string token;
      do {
        auto ctx = retina::services::NewCallContext("", absl::Seconds(10));
        v1::ListJobsRequest req;
        req.set_page_size(1000);
        req.set_page_token(token);
        v1::ListJobsResponse resp;
        if (!stub->ListJobs(ctx.get(), req, &resp).ok()) break;
        for (const v1::Job& j : resp.jobs()) all[j.id()] = j;
        token = resp.next_page_token();
      } while (!token.empty());
    }
    std::map<std::string, std::vector<std::string>> by_request;
    for (const auto& [id, job] : all) {
      if (!job.request_id().empty()) by_request[job.request_id()].push_back(id);
    }
    int duplicate_requests = 0;
    std::vector<std::string> duplicates;
    for (const auto& [rid, jobs] : by_request) {
      if (jobs.size() > 1) {
        ++duplicate_requests;
        duplicates.push_back(absl::StrCat(rid, " -> ", absl::StrJoin(jobs, ",")));
      }
    }
    int unacked_known = 0;
    for (const auto& [id, job] : all) unacked_known += !requests.count(id);

    // Attempts from the store's rank logs.
    const fs::path store = dir_ / "store";
    std::vector<std::string> overlaps;
    std::set<std::string> overlap_jobs;
    int attempt_pairs = 0, multi_attempt_jobs = 0, births_from_stat = 0, births_from_line = 0;
    std::set<std::string> job_dirs;
    for (const auto& [id, job] : all) job_dirs.insert(id);
    for (const std::string& id : ids) job_dirs.insert(id);
    for (const std::string& id : job_dirs) {
      std::map<int, std::pair<int64_t, int64_t>> span;  // attempt -> (min created, max last write)
      std::error_code ec;
      for (auto it = fs::directory_iterator(store / "jobs" / id / "logs", ec); !ec && it != fs::directory_iterator();
           it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind("attempt-", 0) != 0) continue;
        const int attempt = std::atoi(name.c_str() + 8);
        std::error_code ec2;
        for (auto f = fs::directory_iterator(it->path(), ec2); !ec2 && f != fs::directory_iterator();
             f.increment(ec2)) {
          const LogTimes t = TimesOf(f->path());
          if (!t.ok) continue;
          (t.from_birth ? births_from_stat : births_from_line)++;
          auto [s, inserted] = span.try_emplace(attempt, t.created_ns, t.last_write_ns);
          if (!inserted) {
            s->second.first = std::min(s->second.first, t.created_ns);
            s->second.second = std::max(s->second.second, t.last_write_ns);
          }
        }
      }
      if (span.size() > 1) ++multi_attempt_jobs;
      for (auto it = span.begin(); it != span.end() && std::next(it) != span.end(); ++it) {
        const auto next = std::next(it);
        ++attempt_pairs;
        if (it->second.second > next->second.first) {
          overlap_jobs.insert(id);
          overlaps.push_back(absl::StrCat(id, ": attempt ", it->first, " last wrote a rank log at ",
                                          FormatWallNs(it->second.second), " UTC, after attempt ", next->first,
                                          "'s first rank log was created at ", FormatWallNs(next->second.first),
                                          " (", (it->second.second - next->second.first) / 1000000, " ms overlap)"));
        }
      }
    }
    for (const auto& [job, what] : live_violations_) overlap_jobs.insert(job);

    // Checkpoints of the succeeded jobs.
    std::vector<std::string> lost_checkpoints;
    int succeeded_checked = 0;
    for (const auto& [id, job] : all) {
      if (job.state() != v1::SUCCEEDED) continue;
      ++succeeded_checked;
      const fs::path ckpt = store / "jobs" / id / "checkpoints";
      std::ifstream in(ckpt / "LATEST");
      std::string name;
      std::getline(in, name);
      while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
      if (name.empty()) {
        lost_checkpoints.push_back(absl::StrCat(id, ": no checkpoints/LATEST"));
      } else if (!fs::is_directory(ckpt / name)) {
        lost_checkpoints.push_back(absl::StrCat(id, ": LATEST names ", name, ", which is not a directory"));
      } else if (!fs::exists(ckpt / name / "MANIFEST")) {
        lost_checkpoints.push_back(absl::StrCat(id, ": ", name, " has no MANIFEST"));
      }
    }

    // Cancels that were acknowledged: how those jobs ended.
    std::map<v1::JobState, int> cancelled_states;
    for (const std::string& id : cancel_acked) {
      auto it = final_jobs.find(id);
      if (it != final_jobs.end()) ++cancelled_states[it->second.state()];
    }

    const std::string exposition = Metrics();
    const double lease_misses = Sample(exposition, "retina_worker_lease_misses_total");
    const double commit_failures = Sample(exposition, "retina_db_commit_failures_total");
    const double lease_misses_before = Sample(before_kill_metrics, "retina_worker_lease_misses_total");
    const double commit_failures_before = Sample(before_kill_metrics, "retina_db_commit_failures_total");

    const pid_t cpid = coordinator_ ? coordinator_->pid() : 0;
    const int64_t rss_end = cpid > 0 ? RssKb(cpid) : -1;
    const RssSample same = rss_current_warm_.pid == cpid ? rss_current_warm_ : RssSample{};
    const double ratio_same = same.kb > 0 && rss_end > 0 ? static_cast<double>(rss_end) / same.kb : 0;
    const double ratio_first =
        rss_first_warm_.kb > 0 && rss_end > 0 ? static_cast<double>(rss_end) / rss_first_warm_.kb : 0;

    auto S = [&](v1::JobState s) { return states.count(s) ? states[s] : 0; };
    std::printf("\n--- counts ---\n");
    std::printf("run: %.1f s of load, seed %llu\n", ran_s, static_cast<unsigned long long>(o_.seed));
    std::printf("submits: %lld calls (%lld with a few-ms deadline), %lld retries, %zu acknowledged, "
                "%lld not acknowledged by the end, %lld rejected%s%s\n",
                static_cast<long long>(submit_calls_.load()), static_cast<long long>(submit_short_deadline_.load()),
                static_cast<long long>(submit_retries_.load()),
                ids.size(), static_cast<long long>(submit_unacked_.load()),
                static_cast<long long>(submit_rejected_.load()), first_rejection_.empty() ? "" : " (first: ",
                first_rejection_.empty() ? "" : (first_rejection_ + ")").c_str());
    std::printf("acknowledged jobs: %zu: SUCCEEDED %d, FAILED %d, CANCELLED %d, QUEUED %d, SCHEDULED %d, RUNNING %d\n",
                ids.size(), S(v1::SUCCEEDED), S(v1::FAILED), S(v1::CANCELLED), S(v1::QUEUED), S(v1::SCHEDULED),
                S(v1::RUNNING));
    std::printf("attempts: %d over %zu jobs, %d jobs restarted at least once\n", attempts_total, final_jobs.size(),
                restarted_jobs);
    std::printf("lost (acknowledged, unknown to GetJob): %zu%s%s\n", lost.size(), lost.empty() ? "" : ": ",
                absl::StrJoin(lost, " ").c_str());
    if (!unreadable.empty()) std::printf("GetJob failed for: %s\n", absl::StrJoin(unreadable, "; ").c_str());
    std::printf("jobs known to the coordinator: %zu (%d without an acknowledged submit), request ids with >1 job: %d%s%s\n",
                all.size(), unacked_known, duplicate_requests, duplicates.empty() ? "" : ": ",
                absl::StrJoin(duplicates, "; ").c_str());
    std::printf("concurrent attempts: live scan %zu (%lld scans), rank-log times %zu (%d attempt pairs in %d jobs; "
                "creation from birth time %d files, from the first line %d)\n",
                live_violations_.size(), static_cast<long long>(rank_scans_), overlaps.size(), attempt_pairs,
                multi_attempt_jobs, births_from_stat, births_from_line);
    for (const auto& [job, what] : live_violations_) std::printf("  live: %s %s\n", job.c_str(), what.c_str());
    for (const std::string& o : overlaps) std::printf("  logs: %s\n", o.c_str());
    std::printf("checkpoints: %d SUCCEEDED jobs checked, %zu lost\n", succeeded_checked, lost_checkpoints.size());
    for (const std::string& l : lost_checkpoints) std::printf("  %s\n", l.c_str());
    std::printf("cancels: %lld acknowledged (ended SUCCEEDED %d, FAILED %d, CANCELLED %d, unfinished %d), "
                "%lld already finished, %lld unavailable, %lld other\n",
                static_cast<long long>(cancel_ok_.load()), cancelled_states[v1::SUCCEEDED],
                cancelled_states[v1::FAILED], cancelled_states[v1::CANCELLED],
                cancelled_states[v1::QUEUED] + cancelled_states[v1::SCHEDULED] + cancelled_states[v1::RUNNING],
                static_cast<long long>(cancel_precondition_.load()), static_cast<long long>(cancel_unavailable_.load()),
                static_cast<long long>(cancel_other_.load()));
    auto tally = [](const char* what, const StreamTally& t) {
      std::printf("%s: %lld streams, %lld messages, %lld bytes; ended OK %lld, cancelled by us %lld, "
                  "unavailable %lld, NOT_FOUND %lld, other %lld; protocol errors %lld\n",
                  what, static_cast<long long>(t.opened.load()), static_cast<long long>(t.messages.load()),
                  static_cast<long long>(t.bytes.load()), static_cast<long long>(t.ended_ok.load()),
                  static_cast<long long>(t.cancelled.load()), static_cast<long long>(t.unavailable.load()),
                  static_cast<long long>(t.not_found.load()), static_cast<long long>(t.other.load()),
                  static_cast<long long>(t.protocol_errors.load()));
    };
    tally("WatchJob", watch_);
    tally("ReadLogs follow", logs_);
    std::printf("ListJobs monitor: %lld ok, %lld failed\n", static_cast<long long>(monitor_ok_.load()),
                static_cast<long long>(monitor_failed_.load()));
    std::printf("coordinator RSS: warm-up %lld kB (pid %d), end %lld kB (pid %d): end/warm-up of the same process "
                "%.3f; of the first process %lld kB (pid %d): %.3f\n",
                static_cast<long long>(same.kb), same.pid, static_cast<long long>(rss_end), cpid, ratio_same,
                static_cast<long long>(rss_first_warm_.kb), rss_first_warm_.pid, ratio_first);
    std::printf("retina_worker_lease_misses_total %g (before the coordinator kill %g), "
                "retina_db_commit_failures_total %g (before the kill %g)\n",
                lease_misses, lease_misses_before, commit_failures, commit_failures_before);
    for (const std::string& f : findings_) std::printf("finding: %s\n", f.c_str());

    if (!lost.empty()) failures.push_back(absl::StrCat(lost.size(), " acknowledged jobs lost"));
    if (!overlap_jobs.empty()) {
      failures.push_back(absl::StrCat(overlap_jobs.size(), " jobs ran two attempts concurrently: ",
                                      absl::StrJoin(overlap_jobs, " ")));
    }
    if (!lost_checkpoints.empty()) failures.push_back(absl::StrCat(lost_checkpoints.size(), " checkpoints lost"));
    if (ratio_same <= 0) {
      failures.push_back("no RSS samples of the final coordinator process (run longer)");
    } else if (std::abs(ratio_same - 1) > 0.2) {
      failures.push_back(absl::StrCat("coordinator RSS changed by ", static_cast<int>((ratio_same - 1) * 100),
                                      "% from warm-up to end (bound 20%)"));
    }
    if (!unreadable.empty()) failures.push_back(absl::StrCat(unreadable.size(), " jobs could not be read at the end"));
    std::set<std::string> evidence = overlap_jobs;
    evidence.insert(lost.begin(), lost.end());
    if (!evidence.empty()) {
      std::printf("\nservice log lines naming the offending jobs:\n");
      PrintEvidence(evidence);
    }
    std::printf("\nSUMMARY: %s: %zu acknowledged, %d succeeded, %d failed, %d cancelled, %d unfinished, %zu lost, "
                "%zu concurrent, %zu checkpoints lost, %d duplicated request ids, RSS x%.2f, lease misses %g, "
                "commit failures %g\n",
                failures.empty() ? "PASS" : "FAIL", ids.size(), S(v1::SUCCEEDED), S(v1::FAILED), S(v1::CANCELLED),
                S(v1::QUEUED) + S(v1::SCHEDULED) + S(v1::RUNNING), lost.size(), overlap_jobs.size(),
                lost_checkpoints.size(), duplicate_requests, ratio_same, lease_misses, commit_failures);
    rc = failures.empty() ? 0 : 1;
  }();
  std::fflush(stdout);
  // Ranks first (SIGKILL: no checkpoint written while the dir goes away),
  // then the services, then whatever was orphaned meanwhile.
  {
    std::set<pid_t> owned;
    if (coordinator_) owned.insert(coordinator_->pid());
    for (const auto& [id, w] : workers_) owned.insert(w->pid());
    for (pid_t p : DescendantsOf(getpid())) {
      if (!owned.count(p)) kill(p, SIGKILL);
    }
  }
  coordinator_.reset();
  workers_.clear();
  KillOrphans();
  for (const std::string& f : failures) std::fprintf(stderr, "FAIL: %s\n", f.c_str());
  if (o_.keep) {
    std::fprintf(stderr, "kept %s\n", dir_.c_str());
  } else {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  return failures.empty() ? rc : 1;
}

}  // namespace

int main(int argc, char** argv) {
  retina::Cli cli("soak_bench", "Runs a coordinator, workers and ranks under random submits, cancels and kills, and\n"
                                "checks the service's invariants throughout.");
  Options o;
  int64_t seed = static_cast<int64_t>(std::random_device()() & 0x7fffffff);
  CLI::App& app = cli.app();
  app.add_option("--seconds", o.seconds, "chaos duration")->check(CLI::Range(10, 1 << 30));
  app.add_option("--settle-s", o.settle_s, "then wait this long for every job to end")->check(retina::kPositiveInt);
  app.add_option("--max-outstanding", o.max_outstanding, "jobs in flight at most")->check(retina::kPositiveInt);
  app.add_option("--seed", seed, "the chaos schedule's seed (default: random, printed)")->check(retina::kNonNegativeInt);
  app.add_flag("--keep", o.keep, "keep the run's directory");
  cli.Root([&]() -> absl::StatusOr<int> {
    o.seed = static_cast<uint64_t>(seed);
    // Orphaned ranks come here (and are reaped) rather than to init.
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    Soak soak(o);
    return soak.Run();
  });
  return cli.Run(argc, argv);
}
