// Coordinator under load from a client in another process on loopback.
//
//   coordinator_load_bench [--submits N] [--clients C] [--watchers W] [--stream-s S] [--sync full|normal]
//                          [--floor SUBMITS_PER_S] [--p99-ceiling MS]
//
// Starts build/services/retina-coordinator as a child (its own SQLite job
// store in a temp dir, no workers so jobs stay QUEUED), then
//   1. C client threads submit N jobs (sync unary calls, each with a
//      request_id), recording every latency: submits/s, p50, p99;
//   2. as reference, the same number of GetJob calls over the same channels
//      (a read that commits nothing): the ratio submit/get shows what the
//      durable commit costs;
//   3. W concurrent WatchJob streams (callback client API) over 10 jobs, each
//      must receive its snapshot; the 10 jobs are then cancelled and every
//      stream must deliver the CANCELLED transition and end OK (after S
//      seconds of steady streaming, default 10). Throughout,
//      a worker on its own channel heartbeats every 200 ms (lease 2 s): the
//      longest gap between its answered heartbeats and the coordinator's
//      retina_worker_lease_misses_total show whether heartbeats queue
//      behind streaming work;
//   4. the coordinator is restarted on its database: the start-up integrity
//      check (PRAGMA quick_check) time over N jobs, from its log.
// Exits non-zero when a stream misses an event or a figure misses its goal.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/worker_service.grpc.pb.h"
#include "bench/http_get.h"
#include "services/rpc_util.h"

namespace fs = std::filesystem;
namespace v1 = retina::v1;
using Clock = std::chrono::steady_clock;
using retina::bench::HttpGet;
using retina::bench::Sample;

namespace {

constexpr char kYaml[] =
    "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
    "pretrain: {epochs: 1, global_batch: 8}\n";

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

class Watcher : public grpc::ClientReadReactor<v1::JobEvent> {
 public:
  Watcher(v1::JobService::Stub* stub, const std::string& id, std::atomic<int>* snapshots, std::atomic<int>* finals,
          std::atomic<int>* done) : snapshots_(snapshots), finals_(finals), done_(done) {
    req_.set_id(id);
    ctx_.set_wait_for_ready(true);
    stub->async()->WatchJob(&ctx_, &req_, this);
    StartRead(&ev_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (ev_.type() == v1::JobEvent::SNAPSHOT) ++*snapshots_;
    if (ev_.type() == v1::JobEvent::STATE && ev_.job().state() == v1::CANCELLED) ++*finals_;
    StartRead(&ev_);
  }
  void OnDone(const grpc::Status& s) override {
    ok_ = s.ok();
    ++*done_;
  }
  bool ok() const { return ok_; }

 private:
  grpc::ClientContext ctx_;
  v1::WatchJobRequest req_;
  v1::JobEvent ev_;
  std::atomic<int>* snapshots_;
  std::atomic<int>* finals_;
  std::atomic<int>* done_;
  std::atomic<bool> ok_{false};
};

struct LoadFlags {
  int submits = 5000, clients = 16, watchers = 1000;
  double floor = 0, ceiling_ms = 0, stream_s = 10;
  std::string sync = "full";
};

int Run(const LoadFlags& f) {
  const int submits = f.submits, clients = f.clients, watchers = f.watchers;
  const double floor = f.floor, ceiling_ms = f.ceiling_ms, stream_s = f.stream_s;
  const std::string& sync = f.sync;

  const fs::path dir = fs::temp_directory_path() / absl::StrCat("retina-load-", ::getpid());
  fs::create_directories(dir / "store" / "datasets" / "em");
  std::ofstream(dir / "store" / "datasets" / "em" / "manifest.json") << "{}";
  const std::string bin = absl::StrCat(RETINA_BINARY_ROOT, "/services/retina-coordinator");
  const pid_t pid = fork();
  if (pid == 0) {
    std::freopen((dir / "coordinator.log").c_str(), "w", stderr);
    execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db",
          (dir / "jobs.db").c_str(), "--store", (dir / "store").c_str(), "--sqlite-sync", sync.c_str(),
          "--heartbeat-s", "0.2", "--lease-s", "2", "--ready-file", (dir / "ready").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0, metrics_port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(dir / "ready");
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object()) {
      port = j.value("grpc_port", 0);
      metrics_port = j.value("metrics_port", 0);
    }
  }
  bool keep_log = false, alive = true;
  auto cleanup = [&] {
    if (alive) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
    if (keep_log) {
      std::ifstream log(dir / "coordinator.log");
      std::fprintf(stderr, "coordinator log:\n%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
    }
    fs::remove_all(dir);
  };
  if (port == 0) {
    std::fprintf(stderr, "coordinator did not start (%s)\n", bin.c_str());
    cleanup();
    return 1;
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  // One channel per client thread (as separate clients would have).
  std::vector<std::unique_ptr<v1::JobService::Stub>> stubs;
  for (int c = 0; c < clients; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", c);  // distinct channels, not one shared subchannel
    auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    // Measure from connected channels (a loaded CI machine may take a while).
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
      std::fprintf(stderr, "channel %d did not connect to %s\n", c, address.c_str());
    }
    stubs.push_back(v1::JobService::NewStub(channel));
  }

  auto load = [&](bool submit, std::vector<double>* latencies_ms) {
    std::atomic<int> next{0}, failures{0};
    std::mutex mu;
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        std::vector<double> mine;
        for (int i; (i = next++) < submits;) {
          grpc::ClientContext ctx;
          ctx.set_wait_for_ready(true);
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
          v1::Job job;
          const auto s0 = Clock::now();
          grpc::Status st;
          if (submit) {
            v1::SubmitJobRequest req;
            req.mutable_spec()->set_config_yaml(kYaml);
            req.mutable_spec()->set_world_size(1);
            req.set_request_id(absl::StrCat("load-", i));
            st = stubs[c]->SubmitJob(&ctx, req, &job);
          } else {
            v1::GetJobRequest req;
            char id[32];
            std::snprintf(id, sizeof id, "job-%06d", i % submits + 1);
            req.set_id(id);
            st = stubs[c]->GetJob(&ctx, req, &job);
          }
          mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s0).count());
          if (!st.ok()) ++failures;
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies_ms->insert(latencies_ms->end(), mine.begin(), mine.end());
      });
    }
    for (auto& t : threads) t.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    return std::make_pair(submits / s, failures.load());
  };
  std::vector<double> submit_ms, get_ms;
  const auto [submit_rate, submit_failures] = load(true, &submit_ms);
  const auto [get_rate, get_failures] = load(false, &get_ms);
  std::printf("SubmitJob: %d calls from %d clients (sqlite synchronous=%s): %.0f/s, p50 %.2f ms, p99 %.2f ms, %d failed\n",
              submits, clients, sync.c_str(), submit_rate, Percentile(submit_ms, 0.5), Percentile(submit_ms, 0.99),
              submit_failures);
  std::printf("GetJob (reference, no commit): %.0f/s, p50 %.2f ms, p99 %.2f ms, %d failed\n", get_rate,
              Percentile(get_ms, 0.5), Percentile(get_ms, 0.99), get_failures);
  std::printf("submit/get throughput ratio: %.2f\n", submit_rate / get_rate);

  // A worker heartbeating on its own channel while the streams open and deliver.
  std::atomic<bool> beating{true};
  double max_gap_s = 0;
  int late = 0, beats = 0;
  // It takes the first queued job (job-000001, watched by W/10 streams),
  // confirms it running and reports 50 step events every 20 ms for it, as a
  // busy rank 0 would, so progress fans out to the streams throughout; when
  // asked to stop it, it completes the task as stopped.
  std::thread heart([&] {
    auto ws = v1::WorkerService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    v1::RegisterWorkerRequest reg;
    reg.set_worker_id("bench-worker");
    reg.set_host("127.0.0.1");
    reg.set_slots(1);
    v1::RegisterWorkerResponse rr;
    grpc::ClientContext rctx;
    ws->RegisterWorker(&rctx, reg, &rr);
    std::mutex task_mu;
    std::optional<v1::TaskRef> task;
    std::thread reporter([&] {
      int64_t step = 0;
      while (beating.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        std::optional<v1::TaskRef> t;
        {
          std::lock_guard<std::mutex> lock(task_mu);
          t = task;
        }
        if (!t) continue;
        v1::ReportEventsRequest req;
        req.set_worker_id("bench-worker");
        req.set_job_id(t->job_id());
        req.set_attempt(t->attempt());
        for (int i = 0; i < 50; ++i) {
          req.add_events_json(absl::StrCat("{\"event\": \"step\", \"step\": ", ++step, ", \"loss\": 0.5}"));
        }
        grpc::ClientContext ctx;
        v1::ReportEventsResponse resp;
        ws->ReportEvents(&ctx, req, &resp);
      }
    });
    auto last = Clock::now();
    while (beating.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::HeartbeatRequest hb;
      hb.set_worker_id("bench-worker");
      {
        std::lock_guard<std::mutex> lock(task_mu);
        if (task) *hb.add_running() = *task;
      }
      v1::HeartbeatResponse resp;
      if (!ws->Heartbeat(&ctx, hb, &resp).ok()) continue;
      const auto now = Clock::now();
      const double gap = std::chrono::duration<double>(now - last).count();
      max_gap_s = std::max(max_gap_s, gap);
      late += gap > 2.0;
      ++beats;
      last = now;
      std::lock_guard<std::mutex> lock(task_mu);
      for (const v1::Assignment& a : resp.assignments()) {
        v1::TaskRef t;
        t.set_job_id(a.job_id());
        t.set_attempt(a.attempt());
        for (int r : a.ranks()) t.add_ranks(r);
        for (int sl : a.slot_ids()) t.add_slot_ids(sl);
        task = t;
      }
      for (const v1::TaskRef& stop : resp.stop()) {
        v1::CompleteTaskRequest done;
        done.set_worker_id("bench-worker");
        done.set_job_id(stop.job_id());
        done.set_attempt(stop.attempt());
        done.set_stopped(true);
        v1::RankExit* x = done.add_exits();
        x->set_rank(0);
        x->set_exit_code(143);
        grpc::ClientContext cctx;
        v1::CompleteTaskResponse cresp;
        ws->CompleteTask(&cctx, done, &cresp);
        task.reset();
      }
    }
    reporter.join();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  // Watch streams.
  std::atomic<int> snapshots{0}, finals{0}, done{0};
  std::vector<std::unique_ptr<Watcher>> ws;
  const auto w0 = Clock::now();
  for (int w = 0; w < watchers; ++w) {
    char id[32];
    std::snprintf(id, sizeof id, "job-%06d", w % 10 + 1);
    ws.push_back(std::make_unique<Watcher>(stubs[w % clients].get(), id, &snapshots, &finals, &done));
  }
  while (snapshots.load() < watchers && Clock::now() - w0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double open_s = std::chrono::duration<double>(Clock::now() - w0).count();
  // Steady streaming (progress fan-out to the watchers of the running job).
  std::this_thread::sleep_for(std::chrono::duration<double>(stream_s));
  const auto c0 = Clock::now();
  for (int j = 1; j <= 10; ++j) {
    grpc::ClientContext ctx;
    v1::CancelJobRequest req;
    char id[32];
    std::snprintf(id, sizeof id, "job-%06d", j);
    req.set_id(id);
    v1::Job job;
    stubs[0]->CancelJob(&ctx, req, &job);
  }
  while (done.load() < watchers && Clock::now() - c0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double deliver_s = std::chrono::duration<double>(Clock::now() - c0).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  beating = false;
  heart.join();
  const std::string exposition = HttpGet(metrics_port, "/metrics");
  const double misses = Sample(exposition, "retina_worker_lease_misses_total");
  std::printf("Heartbeat during the streams: %d answered, longest gap %.3f s (lease 2 s), %d gaps over the lease; "
              "retina_worker_lease_misses_total %.0f, retina_heartbeats_deferred_total %.0f\n", beats, max_gap_s, late,
              misses, Sample(exposition, "retina_heartbeats_deferred_total"));
  int ok = 0;
  for (auto& w : ws) ok += w->ok();
  std::printf("WatchJob: %d streams open with snapshots in %.2f s; cancelling their 10 jobs delivered %d/%d "
              "CANCELLED events, %d/%d streams ended OK, in %.3f s\n",
              watchers, open_s, finals.load(), watchers, ok, watchers, deliver_s);
  int rc = 0;
  if (submit_failures || get_failures || finals.load() != watchers || ok != watchers || misses != 0) {
    std::fprintf(stderr, "FAIL: calls failed or events were lost\n");
    rc = 1;
    keep_log = true;
  }
  // Restart on the same database: the start-up integrity check's time.
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  const pid_t again = fork();
  if (again == 0) {
    std::freopen((dir / "restart.log").c_str(), "w", stderr);
    execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db",
          (dir / "jobs.db").c_str(), "--store", (dir / "store").c_str(), "--ready-file", (dir / "ready2").c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 400 && !fs::exists(dir / "ready2"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    std::ifstream log(dir / "restart.log");
    const std::string text(std::istreambuf_iterator<char>(log), {});
    const size_t q = text.find("quick_check passed in ");
    std::printf("restart over %d jobs: PRAGMA quick_check %s\n", submits,
                q == std::string::npos ? "(not in the log)" : text.substr(q + 22, text.find('\n', q) - q - 22).c_str());
  }
  kill(again, SIGTERM);
  waitpid(again, nullptr, 0);
  alive = false;
  cleanup();
  if (floor > 0 && submit_rate < floor) {
    std::fprintf(stderr, "FAIL: %.0f submits/s is below the floor %.0f\n", submit_rate, floor);
    rc = 1;
  }
  if (ceiling_ms > 0 && Percentile(submit_ms, 0.99) > ceiling_ms) {
    std::fprintf(stderr, "FAIL: p99 %.2f ms is above %.1f ms\n", Percentile(submit_ms, 0.99), ceiling_ms);
    rc = 1;
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  retina::Cli cli("coordinator_load_bench",
                  "Submits, watchers and streams against an in-process coordinator; prints rates and latencies.");
  LoadFlags f;
  CLI::App& app = cli.app();
  app.add_option("--submits", f.submits, "jobs submitted")->check(retina::kPositiveInt);
  app.add_option("--clients", f.clients, "concurrent submitting clients")->check(retina::kPositiveInt);
  app.add_option("--watchers", f.watchers, "concurrent WatchJob streams")->check(retina::kNonNegativeInt);
  app.add_option("--stream-s", f.stream_s, "how long the streams run")->check(retina::kPositiveNumber);
  app.add_option("--sync", f.sync, "SQLite synchronous mode")->check(CLI::IsMember({"full", "normal"}));
  app.add_option("--floor", f.floor, "fail below this many submits/s (0: report only)")->check(retina::kNonNegativeNumber);
  app.add_option("--p99-ceiling", f.ceiling_ms, "fail above this p99 submit latency, ms (0: report only)")
      ->check(retina::kNonNegativeNumber);
  cli.Root([&]() -> absl::StatusOr<int> { return Run(f); });
  return cli.Run(argc, argv);
}
