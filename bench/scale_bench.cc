// The coordinator's cost as the cluster grows (docs/service.md, "Scale").
//
//   scale_bench [--workers 1000] [--jobs 10000] [--slots 8] [--seconds 20] [--heartbeat-s 1]
//               [--queues 1000,10000,100000] [--clients 16] [--coordinator PATH]
//
//   1. Placement, the pure decision (placement.h PlanPass) in this process:
//      one pass over a queue of Q jobs (gangs of 1/2/4/8 ranks, 3 priorities,
//      10 users) on 100 and on `workers` workers of a saturated cluster (0-7
//      free slots each). Prints the time per pass, per queued job, and the
//      growth t(10Q)/t(Q): ~10 is linear, ~11.5 is Q log Q.
//   2. Starts build/services/retina-coordinator, or --coordinator (another
//      build's binary, for a before/after in one run) (SQLite synchronous=full, its
//      production heartbeat period), submits `jobs` jobs from `clients`
//      threads: submits/s (each one SQLite commit), database size, the
//      coordinator's RSS per job.
//   3. `workers` simulated workers (a thread each, 16 shared channels) register
//      `slots` slots and heartbeat at the production period for `seconds`,
//      accepting every assignment (listing it as running; no ranks start):
//      heartbeats/s sustained, p50/p99/max latency, jobs placed and running,
//      the coordinator's RSS per worker.
//   4. kill -9 of the coordinator and a restart on its database: the time
//      until it serves again (recovery over `jobs` jobs).
// Goals (printed with each figure): heartbeat p99 < 50 ms at 1,000 workers,
// placement linear or better in the queue length, recovery < 5 s at 10,000 jobs.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "services/coordinator/placement.h"
#include "services/rpc_util.h"

namespace fs = std::filesystem;
namespace v1 = retina::v1;
namespace rc = retina::coordinator;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kYaml[] =
    "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
    "pretrain: {epochs: 1, global_batch: 8}\n";

struct Flags {
  int workers = 1000, jobs = 10000, slots = 8, clients = 16;
  double seconds = 20, heartbeat_s = 1;
  std::string queues = "1000,10000,100000";
  std::string coordinator;  // empty: this build's retina-coordinator
};

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// The resident set of `pid` in MiB (/proc/<pid>/status VmRSS).
double RssMiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

// 1. PlanPass over a saturated cluster.
void Placement(const Flags& f) {
  std::printf("== 1. placement (PlanPass, this process): one pass over a saturated cluster\n");
  std::printf("%8s %8s %12s %14s %8s\n", "workers", "queued", "us/pass", "ns/queued job", "growth");
  std::vector<int> queues;
  for (absl::string_view q : absl::StrSplit(f.queues, ',', absl::SkipEmpty())) queues.push_back(std::stoi(std::string(q)));
  for (int workers : {100, f.workers}) {
    double last = 0;
    for (int q : queues) {
      std::mt19937 gen(7);
      std::vector<rc::FreeWorker> free;
      for (int w = 0; w < workers; ++w) {
        free.push_back({absl::StrCat("w", w), rc::SlotKind::kCpu, static_cast<int>(gen() % 8)});
      }
      std::vector<rc::QueuedJob> queue;
      const int gangs[] = {8, 1, 2, 4};  // the head is big: it blocks (no backfill) once the cluster is full
      for (int j = 0; j < q; ++j) {
        rc::QueuedJob job;
        job.id = absl::StrCat("job-", j);
        job.priority = static_cast<int>(gen() % 3);
        job.seq = j;
        job.world_size = gangs[gen() % 4] * (j < 3 ? 64 : 1);
        job.user = absl::StrCat("user", gen() % 10);
        queue.push_back(std::move(job));
      }
      rc::FairShare share;
      for (int u = 0; u < 10; ++u) share.running_slots[absl::StrCat("user", u)] = static_cast<int>(gen() % 100);
      int reps = std::max(3, 2000000 / q);
      const auto t0 = Clock::now();
      size_t placed = 0;
      for (int r = 0; r < reps; ++r) placed += rc::PlanPass(queue, free, share).size();
      const double us = Seconds(t0, Clock::now()) / reps * 1e6;
      std::printf("%8d %8d %12.1f %14.1f %8s  (%zu placed per pass)\n", workers, q, us, us * 1e3 / q,
                  last > 0 ? absl::StrFormat("%.1fx", us / last).c_str() : "-", placed / reps);
      last = us;
    }
  }
}

class Coordinator {
 public:
  Coordinator(const fs::path& dir, const Flags& f, const std::string& ready) {
    const double heartbeat_s = f.heartbeat_s;
    const std::string bin =
        f.coordinator.empty() ? absl::StrCat(RETINA_BINARY_ROOT, "/services/retina-coordinator") : f.coordinator;
    fs::remove(dir / ready);
    const std::string hb = absl::StrCat(heartbeat_s), lease = absl::StrCat(heartbeat_s * 10);
    start_ = Clock::now();
    pid_ = fork();
    if (pid_ == 0) {
      std::freopen((dir / (ready + ".log")).c_str(), "w", stderr);
      execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db",
            (dir / "jobs.db").c_str(), "--store", (dir / "store").c_str(), "--heartbeat-s", hb.c_str(), "--lease-s",
            lease.c_str(), "--ready-file", (dir / ready).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 6000 && port_ == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::ifstream in(dir / ready);
      nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
      if (j.is_object()) port_ = j.value("grpc_port", 0);
    }
    ready_s_ = Seconds(start_, Clock::now());
  }
  ~Coordinator() { Kill(SIGTERM); }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  double ready_s() const { return ready_s_; }

 private:
  pid_t pid_ = 0;
  int port_ = 0;
  Clock::time_point start_;
  double ready_s_ = 0;
};

int Run(const Flags& f) {
  Placement(f);
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("retina-scale-", ::getpid());
  fs::create_directories(dir / "store" / "datasets" / "em");
  std::ofstream(dir / "store" / "datasets" / "em" / "manifest.json") << "{}";
  int rc_code = 0;
  {
    auto coordinator = std::make_unique<Coordinator>(dir, f, "ready");
    if (coordinator->port() == 0) {
      std::fprintf(stderr, "the coordinator did not start; see %s\n", (dir / "ready.log").c_str());
      return 1;
    }
    const std::string address = absl::StrCat("127.0.0.1:", coordinator->port());
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    for (int c = 0; c < 16; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", c);
      channels.push_back(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      channels.back()->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30));
    }

    // 2. Submissions.
    const double rss0 = RssMiB(coordinator->pid());
    std::atomic<int> next{0}, failed{0};
    const auto t0 = Clock::now();
    {
      std::vector<std::thread> threads;
      for (int c = 0; c < f.clients; ++c) {
        threads.emplace_back([&, c] {
          auto stub = v1::JobService::NewStub(channels[c % channels.size()]);
          for (int i; (i = next++) < f.jobs;) {
            v1::SubmitJobRequest req;
            req.mutable_spec()->set_config_yaml(kYaml);
            req.mutable_spec()->set_world_size(1 << (i % 4));  // gangs of 1, 2, 4, 8
            req.mutable_spec()->set_priority(i % 3);
            req.set_request_id(absl::StrCat("scale-", i));
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
            v1::Job job;
            if (!stub->SubmitJob(&ctx, req, &job).ok()) ++failed;
          }
        });
      }
      for (auto& t : threads) t.join();
    }
    const double submit_s = Seconds(t0, Clock::now());
    const double rss_jobs = RssMiB(coordinator->pid());
    std::error_code ec;
    const double db_mib = (fs::file_size(dir / "jobs.db", ec) + fs::file_size(dir / "jobs.db-wal", ec)) / 1048576.0;
    std::printf("\n== 2. %d submissions from %d clients (SQLite synchronous=full): %.0f submits/s = commits/s; "
                "%d failed\n   database %.1f MiB (%.2f KiB per job); coordinator RSS %.1f -> %.1f MiB (%.2f KiB per job)\n",
                f.jobs, f.clients, f.jobs / submit_s, failed.load(), db_mib, db_mib * 1024 / f.jobs, rss0, rss_jobs,
                (rss_jobs - rss0) * 1024 / f.jobs);

    // 3. Simulated workers.
    std::mutex mu;
    // All; the first 5 s (registrations, the first placements and their
    // confirmations: the start-up burst); after the first 5 s.
    std::vector<double> latencies, burst, steady;
    std::atomic<int64_t> beats{0}, beat_failures{0}, accepted{0};
    std::atomic<bool> stop{false};
    const auto period = std::chrono::duration<double>(f.heartbeat_s);
    std::vector<std::thread> workers;
    const auto w0 = Clock::now();
    const auto end = w0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(f.seconds));
    for (int w = 0; w < f.workers; ++w) {
      workers.emplace_back([&, w] {
        auto stub = v1::WorkerService::NewStub(channels[w % channels.size()]);
        const std::string id = absl::StrFormat("sim-%04d", w);
        v1::RegisterWorkerRequest reg;
        reg.set_worker_id(id);
        reg.set_host(id + ".sim");
        reg.set_slot_type(v1::SLOT_CPU);
        reg.set_slots(f.slots);
        {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
          v1::RegisterWorkerResponse resp;
          if (!stub->RegisterWorker(&ctx, reg, &resp).ok()) ++beat_failures;
        }
        std::vector<v1::TaskRef> running;
        std::vector<double> mine, mine_burst, mine_steady;
        // Spread the first heartbeats over one period, as real agents start apart.
        auto due = Clock::now() + std::chrono::duration_cast<Clock::duration>(period * ((w * 7919) % 1000) / 1000.0);
        while (!stop && Clock::now() < end) {
          std::this_thread::sleep_until(due);
          due += std::chrono::duration_cast<Clock::duration>(period);
          v1::HeartbeatRequest hb;
          hb.set_worker_id(id);
          for (const auto& t : running) *hb.add_running() = t;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
          v1::HeartbeatResponse resp;
          const auto s = Clock::now();
          const grpc::Status status = stub->Heartbeat(&ctx, hb, &resp);
          mine.push_back(Seconds(s, Clock::now()) * 1e3);
          (Seconds(w0, s) > 5 ? mine_steady : mine_burst).push_back(mine.back());
          ++beats;
          if (!status.ok()) {
            ++beat_failures;
            continue;
          }
          for (const auto& a : resp.assignments()) {  // accepted: listed as running from now on
            v1::TaskRef t;
            t.set_job_id(a.job_id());
            t.set_attempt(a.attempt());
            *t.mutable_ranks() = a.ranks();
            *t.mutable_slot_ids() = a.slot_ids();
            running.push_back(t);
            ++accepted;
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
        burst.insert(burst.end(), mine_burst.begin(), mine_burst.end());
        steady.insert(steady.end(), mine_steady.begin(), mine_steady.end());
      });
    }
    for (auto& t : workers) t.join();
    const double run_s = Seconds(w0, Clock::now());
    const double rss_workers = RssMiB(coordinator->pid());
    v1::ListJobsRequest lreq;
    lreq.set_filter("state=RUNNING");
    lreq.set_page_size(1000);
    int running_jobs = 0;
    for (auto stub = v1::JobService::NewStub(channels[0]);;) {
      grpc::ClientContext ctx;
      v1::ListJobsResponse resp;
      if (const grpc::Status st = stub->ListJobs(&ctx, lreq, &resp); !st.ok()) {
        std::fprintf(stderr, "ListJobs: %s (the RUNNING count below is incomplete)\n", st.error_message().c_str());
        rc_code = 1;
        break;
      }
      running_jobs += resp.jobs_size();
      if (resp.next_page_token().empty()) break;
      lreq.set_page_token(resp.next_page_token());
    }
    const double p99 = Percentile(steady, 0.99);
    std::printf("\n== 3. %d simulated workers x %d slots, heartbeat every %.1f s for %.0f s\n"
                "   %.0f heartbeats/s sustained (%lld, %lld failed)\n"
                "   latency, whole run:        p50 %.2f ms, p99 %.2f ms, max %.1f ms (with the start-up burst: %d registrations,"
                " ~2,100 placements and their confirmations)\n"
                "   latency, burst (t <= 5 s): p50 %.2f ms, p99 %.2f ms, max %.1f ms over %zu heartbeats (goal p99 < 50 ms: %s)\n"
                "   latency, steady (t > 5 s): p50 %.2f ms, p99 %.2f ms, max %.1f ms over %zu heartbeats (goal p99 < 50 ms: %s)\n"
                "   %lld assignments accepted, %d jobs RUNNING; coordinator RSS %.1f MiB (+%.1f KiB per worker)\n",
                f.workers, f.slots, f.heartbeat_s, f.seconds, beats.load() / run_s, static_cast<long long>(beats.load()),
                static_cast<long long>(beat_failures.load()), Percentile(latencies, 0.5), Percentile(latencies, 0.99),
                Percentile(latencies, 1.0), f.workers, Percentile(burst, 0.5), Percentile(burst, 0.99),
                Percentile(burst, 1.0), burst.size(), !burst.empty() && Percentile(burst, 0.99) < 50 ? "met" : "MISSED",
                Percentile(steady, 0.5), p99, Percentile(steady, 1.0),
                steady.size(), !steady.empty() && p99 < 50 ? "met" : "MISSED", static_cast<long long>(accepted.load()),
                running_jobs, rss_workers, (rss_workers - rss_jobs) * 1024 / f.workers);
    if (beat_failures > 0 || failed > 0) rc_code = 1;

    // 4. kill -9 and recovery.
    coordinator->Kill(SIGKILL);
    coordinator.reset();
    Coordinator again(dir, f, "ready2");
    std::printf("\n== 4. kill -9, restart on the database of %d jobs: serving again after %.2f s (goal < 5 s: %s)\n",
                f.jobs, again.ready_s(), again.port() != 0 && again.ready_s() < 5 ? "met" : "MISSED");
    if (again.port() == 0) rc_code = 1;
  }
  fs::remove_all(dir);
  return rc_code;
}

}  // namespace

int main(int argc, char** argv) {
  retina::Cli cli("scale_bench", "The coordinator against simulated workers and a deep queue; prints its costs.");
  Flags f;
  CLI::App& app = cli.app();
  app.add_option("--workers", f.workers, "simulated workers")->check(retina::kPositiveInt);
  app.add_option("--jobs", f.jobs, "jobs submitted")->check(retina::kPositiveInt);
  app.add_option("--slots", f.slots, "CPU slots per worker")->check(retina::kPositiveInt);
  app.add_option("--clients", f.clients, "submitting client threads")->check(retina::kPositiveInt);
  app.add_option("--seconds", f.seconds, "how long the workers heartbeat")->check(retina::kPositiveNumber);
  app.add_option("--heartbeat-s", f.heartbeat_s, "the heartbeat period asked of workers")->check(retina::kPositiveNumber);
  app.add_option("--coordinator", f.coordinator, "the retina-coordinator binary to measure (default: this build's)");
  app.add_option("--queues", f.queues, "queue lengths of the placement curve, comma-separated");
  cli.Root([&]() -> absl::StatusOr<int> { return Run(f); });
  return cli.Run(argc, argv);
}
