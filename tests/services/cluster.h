// Test harness: a coordinator and workers as real processes on loopback, a
// store in a temp dir, gRPC stubs, /metrics scraping. Processes are killed
// (SIGKILL) and reaped when the harness goes away.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/http_get.h"
#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "services/rpc_util.h"
#include "tests/trainer/python_peer.h"

namespace retina::testing {

namespace fs = std::filesystem;
namespace v1 = retina::v1;

// A block of 100 rendezvous ports below the kernel's ephemeral range
// (32768-60999), held by this test process for its lifetime through an
// exclusive flock: tests run in parallel, and a block derived from the pid
// collides whenever two concurrent pids agree modulo the block count.
inline std::string RendezvousPortRange() {
  static const std::string range = [] {
    for (int block = 0; block < 120; ++block) {
      const std::string lock = "/tmp/retina-test-ports-" + std::to_string(block) + ".lock";
      const int fd = ::open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0666);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {  // kept open: released when the process exits
        const int base = 20000 + block * 100;
        return std::to_string(base) + "-" + std::to_string(base + 99);
      }
      ::close(fd);
    }
    return std::string("20000-20099");
  }();
  return range;
}

inline std::string BinDir() {
  const char* env = std::getenv("RETINA_TEST_BINARY_ROOT");
  return env ? env : RETINA_TEST_BINARY_ROOT;
}

// A child process (RAII: SIGKILLed and reaped on destruction).
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) {
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::fopen(log.c_str(), "a");
      if (f) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() { Kill(SIGKILL); }
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  // Sends `sig` and waits for the exit; returns the wait status.
  int Kill(int sig) {
    if (pid_ <= 0) return 0;
    kill(pid_, sig);
    int st = 0;
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return st;
  }
  bool Running() {
    if (pid_ <= 0) return false;
    int st;
    return waitpid(pid_, &st, WNOHANG) == 0;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

// A loopback port free now (for a peer's own listener, e.g. Prometheus' API).
inline int FreeLoopbackPort() {
  const int sock = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  close(sock);
  return ntohs(addr.sin_port);
}

// Polls `cond` every 50 ms until true or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& cond, std::chrono::duration<double> timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return cond();
}

inline nlohmann::json ReadReady(const fs::path& p) {
  nlohmann::json j;
  WaitFor([&] { return fs::exists(p); }, std::chrono::seconds(20));
  std::ifstream in(p);
  in >> j;
  return j;
}

// HTTP GET on loopback and exposition samples: shared with the benchmarks.
using retina::bench::HttpGet;
using retina::bench::Sample;

struct CoordinatorFlags {
  std::vector<std::string> extra;
  int port = 0;  // 0 = pick one
};

class Cluster {
 public:
  explicit Cluster(const std::string& name) : dir_("svc-" + name + "-") {
    fs::create_directories(store());
  }
  fs::path root() const { return dir_.path(); }
  fs::path store() const { return dir_.path() / "store"; }

  void StartCoordinator(const CoordinatorFlags& flags = {}) {
    const fs::path ready = root() / "coordinator.ready";
    fs::remove(ready);
    std::vector<std::string> argv = {BinDir() + "/services/retina-coordinator",
                                     "--listen", "127.0.0.1:" + std::to_string(flags.port),
                                     "--metrics-listen", "127.0.0.1:0",
                                     "--db", (root() / "jobs.db").string(),
                                     "--store", store().string(),
                                     "--heartbeat-s", "0.2", "--lease-s", "2",
                                     "--ports", RendezvousPortRange(),
                                     "--ready-file", ready.string()};
    argv.insert(argv.end(), flags.extra.begin(), flags.extra.end());
    coordinator_ = std::make_unique<Child>(argv, root() / "coordinator.log");
    const nlohmann::json j = ReadReady(ready);
    ASSERT_TRUE(j.contains("grpc_port")) << "coordinator did not start; see " << (root() / "coordinator.log");
    grpc_port_ = j["grpc_port"];
    metrics_port_ = j["metrics_port"];
  }
  Child& coordinator() { return *coordinator_; }
  void StopCoordinator(int sig) { coordinator_->Kill(sig); }

  // Starts worker `id` with `slots` CPU slots; returns its metrics port.
  int StartWorker(const std::string& id, int slots, std::vector<std::string> extra = {}) {
    const fs::path ready = root() / (id + ".ready");
    std::vector<std::string> argv = {BinDir() + "/services/retina-worker",
                                     "--coordinator", address(),
                                     "--id", id, "--host", "127.0.0.1",
                                     "--cpu-slots", std::to_string(slots), "--gpus", "none",
                                     "--store", store().string(),
                                     "--grace-s", "5",
                                     "--metrics-listen", "127.0.0.1:0",
                                     "--ready-file", ready.string()};
    if (std::find(extra.begin(), extra.end(), "--trainer") == extra.end()) {
      argv.insert(argv.end(), {"--trainer", BinDir() + "/trainer/retina-train"});
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    workers_[id] = std::make_unique<Child>(argv, root() / (id + ".log"));
    return ReadReady(ready).value("metrics_port", 0);
  }
  Child& worker(const std::string& id) { return *workers_.at(id); }

  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }

  std::unique_ptr<v1::JobService::Stub> Jobs() const {
    return v1::JobService::NewStub(*services::MakeChannel(address(), ""));
  }
  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "", double seconds = 10) const {
    return services::NewCallContext(token, absl::Seconds(seconds));
  }

  // A small packed dataset `name` (synthetic EM) in the store.
  // 4 images of 128^2 = 16 patches of 64^2: 2 steps per epoch at batch 8.
  void MakeDataset(const std::string& name, int images = 4) {
    const fs::path raw = root() / ("raw-" + name);
    const std::string bin = BinDir() + "/trainer/";
    const std::string cmd = bin + "retina-synth images --out " + raw.string() + " --count " + std::to_string(images) +
                            " --size 128 > /dev/null 2>&1 && " + bin + "retina-shard pack --input " + raw.string() +
                            " --out " + (store() / "datasets" / name).string() +
                            " --size 64 --shard-images 256 > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // A labelled synthetic benchmark imported as dataset `name` (and its held-out
  // `name`-test); `synth_args` go to retina-synth benchmark (sizes, seed,
  // spacing). The raw volumes stay in root()/raw-<name>.
  void MakeBenchmark(const std::string& name, const std::string& synth_args) {
    const std::string bin = BinDir() + "/trainer/";
    const fs::path raw = root() / ("raw-" + name);
    const std::string cmd = bin + "retina-synth benchmark --out " + raw.string() + " " + synth_args +
                            " > /dev/null 2>&1 && " + bin + "retina-shard import --kind folder --input " + raw.string() +
                            " --out " + (store() / "datasets" / name).string() + " --size 64 > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  absl::StatusOr<v1::Job> Submit(const std::string& yaml, int world, int max_restarts = 0,
                                 const std::string& token = "") {
    v1::SubmitJobRequest req;
    req.mutable_spec()->set_config_yaml(yaml);
    req.mutable_spec()->set_world_size(world);
    req.mutable_spec()->set_max_restarts(max_restarts);
    v1::Job job;
    auto stub = Jobs();
    const grpc::Status s = stub->SubmitJob(Ctx(token).get(), req, &job);
    if (!s.ok()) return services::FromGrpcStatus(s);
    return job;
  }
  v1::Job Get(const std::string& id, const std::string& token = "") {
    v1::GetJobRequest req;
    req.set_id(id);
    v1::Job job;
    Jobs()->GetJob(Ctx(token).get(), req, &job);
    return job;
  }
  // grpc.health.v1 Check of the coordinator, by Python's grpcio (a real
  // client; raw bytes, so no generated code): SERVING, NOT_SERVING, or what failed.
  std::string Health() const {
    const fs::path out = root() / "health.out";
    const std::string cmd = Python() + " -c \"import grpc, sys; ch = grpc.insecure_channel(sys.argv[1]); "
                            "r = ch.unary_unary('/grpc.health.v1.Health/Check')(b'', timeout=5); "
                            "print({b'\\x08\\x01': 'SERVING', b'\\x08\\x02': 'NOT_SERVING'}.get(r, repr(r)))\" " +
                            address() + " > " + out.string() + " 2>&1";
    (void)std::system(cmd.c_str());
    std::ifstream in(out);
    std::string line;
    std::getline(in, line);
    return line;
  }
  // Runs retina-coordinator on this cluster's database and store expecting
  // it to refuse to start; returns its exit status and output.
  std::pair<int, std::string> CoordinatorRefusal(const std::vector<std::string>& extra = {}) const {
    std::string cmd = BinDir() + "/services/retina-coordinator --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --db " +
                      (root() / "jobs.db").string() + " --store " + store().string();
    for (const std::string& e : extra) cmd += " " + e;
    const fs::path out = root() / "refusal.log";
    const int st = std::system(("timeout 30 " + cmd + " > " + out.string() + " 2>&1").c_str());
    std::ifstream in(out);
    std::stringstream text;
    text << in.rdbuf();
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, text.str()};
  }
  bool WaitState(const std::string& id, v1::JobState state, double seconds) {
    return WaitFor([&] { return Get(id).state() == state; }, std::chrono::duration<double>(seconds));
  }

 private:
  ScopedTempDir dir_;
  std::unique_ptr<Child> coordinator_;
  std::map<std::string, std::unique_ptr<Child>> workers_;
  int grpc_port_ = 0, metrics_port_ = 0;
};

// A tiny pre-training job: `epochs` epochs of 2 steps (16 patches, batch 8).
inline std::string PretrainYaml(int epochs, const std::string& dataset = "em") {
  return "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: " + dataset +
         ", loader_threads: 1}\npretrain: {epochs: " + std::to_string(epochs) +
         ", global_batch: 8, checkpoint_every_epochs: 1}\n";
}

}  // namespace retina::testing
