// Coordinator under load from a client in another process on loopback.
//
//   coordinator_load_bench [--submits N] [--clients C] [--watchers W] [--sync full|normal]
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
//      stream must deliver the CANCELLED transition and end OK.
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
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "nlohmann/json.hpp"
#include "retina/v1/job_service.grpc.pb.h"
#include "services/rpc_util.h"

namespace fs = std::filesystem;
namespace v1 = retina::v1;
using Clock = std::chrono::steady_clock;

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

int Run(const retina::CliFlags& f) {
  int submits = 5000, clients = 16, watchers = 1000;
  double floor = 0, ceiling_ms = 0;
  (void)f.GetInt("--submits", &submits);
  (void)f.GetInt("--clients", &clients);
  (void)f.GetInt("--watchers", &watchers);
  (void)f.GetDouble("--floor", &floor);
  (void)f.GetDouble("--p99-ceiling", &ceiling_ms);
  const std::string sync = f.Get("--sync", "full");

  const fs::path dir = fs::temp_directory_path() / absl::StrCat("retina-load-", ::getpid());
  fs::create_directories(dir / "store" / "datasets" / "em");
  std::ofstream(dir / "store" / "datasets" / "em" / "manifest.json") << "{}";
  const std::string bin = absl::StrCat(RETINA_BINARY_ROOT, "/services/retina-coordinator");
  const pid_t pid = fork();
  if (pid == 0) {
    std::freopen((dir / "coordinator.log").c_str(), "w", stderr);
    execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--db",
          (dir / "jobs.db").c_str(), "--store", (dir / "store").c_str(), "--sqlite-sync", sync.c_str(),
          "--ready-file", (dir / "ready").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(dir / "ready");
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object()) port = j.value("grpc_port", 0);
  }
  bool keep_log = false;
  auto cleanup = [&] {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
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
  int ok = 0;
  for (auto& w : ws) ok += w->ok();
  std::printf("WatchJob: %d streams open with snapshots in %.2f s; cancelling their 10 jobs delivered %d/%d "
              "CANCELLED events, %d/%d streams ended OK, in %.3f s\n",
              watchers, open_s, finals.load(), watchers, ok, watchers, deliver_s);
  int rc = 0;
  if (submit_failures || get_failures || finals.load() != watchers || ok != watchers) {
    std::fprintf(stderr, "FAIL: calls failed or events were lost\n");
    rc = 1;
    keep_log = true;
  }
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
  absl::StatusOr<retina::CliFlags> f = retina::ParseCliFlags(
      std::vector<std::string>(argv + 1, argv + argc),
      {"--submits", "--clients", "--watchers", "--sync", "--floor", "--p99-ceiling"});
  if (!f.ok()) return retina::ReportStatus("coordinator_load_bench", f.status());
  return Run(*f);
}
