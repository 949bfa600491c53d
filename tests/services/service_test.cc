// Integration tests of the job service on loopback: real retina-coordinator,
// retina-worker and retina-train processes, a real gRPC client, SIGKILLs.
#include <atomic>
#include <cctype>
#include <functional>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>

#include <gmock/gmock.h>

#include "absl/strings/ascii.h"
#include "common/file_util.h"
#include "tests/services/cluster.h"

namespace retina::testing {
namespace {

using ::testing::HasSubstr;

TEST(Service, EndToEndTwoWorkersWatchSeesEveryTransition) {
  Cluster c("e2e");
  c.MakeDataset("em");
  c.StartCoordinator();
  c.StartWorker("w1", 1);
  c.StartWorker("w2", 1);
  absl::StatusOr<v1::Job> job = c.Submit(PretrainYaml(2), 2);
  ASSERT_TRUE(job.ok()) << job.status();

  std::vector<v1::JobState> states;
  int progress = 0;
  auto ctx = c.Ctx("", 120);
  v1::WatchJobRequest req;
  req.set_id(job->id());
  auto stub = c.Jobs();
  auto reader = stub->WatchJob(ctx.get(), req);
  v1::JobEvent ev;
  while (reader->Read(&ev)) {
    if (states.empty() || states.back() != ev.job().state()) states.push_back(ev.job().state());
    progress += ev.type() == v1::JobEvent::PROGRESS;
  }
  ASSERT_TRUE(reader->Finish().ok());
  // The snapshot may already show SCHEDULED (scheduling happens inside SubmitJob).
  if (states.front() == v1::QUEUED) states.erase(states.begin());
  EXPECT_EQ(states, (std::vector<v1::JobState>{v1::SCHEDULED, v1::RUNNING, v1::SUCCEEDED}));
  EXPECT_GE(progress, 4);

  const v1::Job done = c.Get(job->id());
  ASSERT_EQ(done.placement_size(), 2);
  EXPECT_NE(done.placement(0).worker_id(), done.placement(1).worker_id()) << "one rank per 1-slot worker";
  EXPECT_TRUE(fs::exists(c.store() / "jobs" / job->id() / "checkpoints" / "LATEST"));
  EXPECT_TRUE(fs::exists(c.store() / "jobs" / job->id() / "logs" / "attempt-1" / "rank-1.log"));
  v1::GetJobMetricsRequest mreq;
  mreq.set_id(job->id());
  v1::JobMetrics m;
  ASSERT_TRUE(c.Jobs()->GetJobMetrics(c.Ctx().get(), mreq, &m).ok());
  ASSERT_EQ(m.points_size(), 4);  // 2 epochs x 2 steps, each logged once
  EXPECT_EQ(m.points(3).step(), 4);
  EXPECT_EQ(done.progress().total_steps(), 4);
  EXPECT_GT(m.points(0).loss(), 0);
  EXPECT_GT(m.points(3).time_unix_s(), 1.7e9);  // the wall-clock column

  // Every --json of the CLI is JSON a JSON parser reads (Python's json.load).
  const std::string cli = BinDir() + "/services/retina --address " + c.address() + " ";
  const std::string out = (c.root() / "cli.json").string();
  const std::vector<std::pair<std::string, std::string>> checks = {
      {"status " + job->id() + " --json", "d['id']=='" + job->id() + "' and d['state']=='SUCCEEDED'"},
      {"jobs --json", "any(j['id']=='" + job->id() + "' for j in d['jobs'])"},
      {"metrics " + job->id() + " --json", "len(d['points'])==4 and d['points'][3]['step']=='4'"},
      {"workers --json", "len(d['workers'])==2"}};
  for (const auto& [args, assertion] : checks) {
    const std::string cmd = cli + args + " > " + out + " && python3 -c \"import json; d=json.load(open('" + out +
                            "')); assert " + assertion + ", d\"";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  const std::string metrics = HttpGet(c.metrics_port(), "/metrics");
  EXPECT_EQ(Sample(metrics, "retina_jobs{state=\"SUCCEEDED\"}"), 1);
  EXPECT_EQ(Sample(metrics, "retina_jobs_finished_total{result=\"succeeded\"}"), 1);
  EXPECT_EQ(metrics.find("retina_train_step{job_id=\"" + job->id() + "\"}"), std::string::npos)
      << "per-job series are dropped when the job ends";
}

TEST(Service, KilledWorkerRequeuesAndResumesFromLatest) {
  Cluster c("kill");
  c.MakeDataset("em");
  c.StartCoordinator();
  c.StartWorker("w1", 2);
  absl::StatusOr<v1::Job> job = c.Submit(PretrainYaml(30), 2, /*max_restarts=*/2);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(WaitFor([&] { return c.Get(job->id()).progress().last_checkpoint_step() >= 4; }, std::chrono::seconds(60)));
  c.StartWorker("w2", 2);  // where the job goes after w1 dies
  const int64_t checkpoint = c.Get(job->id()).progress().last_checkpoint_step();
  c.worker("w1").Kill(SIGKILL);

  ASSERT_TRUE(c.WaitState(job->id(), v1::SUCCEEDED, 120)) << c.Get(job->id()).DebugString();
  const v1::Job done = c.Get(job->id());
  EXPECT_EQ(done.attempt(), 2);
  for (const auto& p : done.placement()) EXPECT_EQ(p.worker_id(), "w2");
  std::ifstream log(c.store() / "jobs" / job->id() / "logs" / "attempt-2" / "rank-0.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("resumed from"));
  EXPECT_THAT(text.str(), ::testing::Not(HasSubstr("at step 0 ")));
  // The resumed attempt started at or after the checkpoint seen before the kill.
  const size_t at = text.str().find("at step ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_GE(std::stoll(text.str().substr(at + 8)), checkpoint);
  const std::string metrics = HttpGet(c.metrics_port(), "/metrics");
  EXPECT_EQ(Sample(metrics, "retina_job_attempts_total{reason=\"worker_lost\"}"), 1);
  EXPECT_EQ(Sample(metrics, "retina_workers{state=\"lost\"}"), 1);
}

TEST(Service, CoordinatorSigkillDuringConcurrentSubmissionsLosesNoAcknowledgedJob) {
  Cluster c("crash");
  fs::create_directories(c.store() / "datasets" / "em");
  std::ofstream(c.store() / "datasets" / "em" / "manifest.json") << "{}";
  c.StartCoordinator();
  const int port = c.grpc_port();
  std::mutex mu;
  std::map<std::string, std::string> acked;  // request id -> job id
  std::atomic<int> next{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&] {
      auto stub = c.Jobs();
      for (int i; (i = next++) < 200;) {
        v1::SubmitJobRequest req;
        req.mutable_spec()->set_config_yaml(PretrainYaml(1));
        req.mutable_spec()->set_world_size(1);
        req.set_request_id("req-" + std::to_string(i));
        v1::Job job;
        if (stub->SubmitJob(c.Ctx("", 2).get(), req, &job).ok()) {
          std::lock_guard<std::mutex> lock(mu);
          acked[req.request_id()] = job.id();
        }
      }
    });
  }
  WaitFor([&] {
    std::lock_guard<std::mutex> lock(mu);
    return acked.size() >= 60;
  }, std::chrono::seconds(30));
  c.StopCoordinator(SIGKILL);
  for (auto& t : clients) t.join();
  ASSERT_GE(acked.size(), 60u);
  ASSERT_LT(acked.size(), 200u) << "the kill should land mid-way";

  c.StartCoordinator({{}, port});
  for (const auto& [request, id] : acked) {
    EXPECT_EQ(c.Get(id).id(), id) << "acknowledged job lost: " << id;
  }
  // Retries: an acknowledged request returns its job; every request ends with exactly one job.
  std::set<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    v1::SubmitJobRequest req;
    req.mutable_spec()->set_config_yaml(PretrainYaml(1));
    req.mutable_spec()->set_world_size(1);
    req.set_request_id("req-" + std::to_string(i));
    v1::Job job;
    ASSERT_TRUE(c.Jobs()->SubmitJob(c.Ctx().get(), req, &job).ok());
    auto it = acked.find(req.request_id());
    if (it != acked.end()) {
      EXPECT_EQ(job.id(), it->second);
    }
    ids.insert(job.id());
  }
  EXPECT_EQ(ids.size(), 200u);
  v1::ListJobsRequest list;
  list.set_page_size(1000);
  v1::ListJobsResponse all;
  ASSERT_TRUE(c.Jobs()->ListJobs(c.Ctx().get(), list, &all).ok());
  EXPECT_EQ(all.jobs_size(), 200);
}

TEST(Service, CancelStopsRanksWithinGraceAndFreesSlots) {
  Cluster c("cancel");
  c.MakeDataset("em");
  c.StartCoordinator();
  c.StartWorker("w1", 2);
  absl::StatusOr<v1::Job> job = c.Submit(PretrainYaml(200), 2);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(WaitFor([&] { return c.Get(job->id()).progress().step() >= 2; }, std::chrono::seconds(60)));
  v1::CancelJobRequest req;
  req.set_id(job->id());
  v1::Job resp;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(c.Jobs()->CancelJob(c.Ctx().get(), req, &resp).ok());
  EXPECT_TRUE(resp.cancel_requested());
  ASSERT_TRUE(c.WaitState(job->id(), v1::CANCELLED, 5 /*grace*/ + 3));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 8.0);
  v1::ListWorkersResponse workers;
  ASSERT_TRUE(WaitFor([&] {
    c.Jobs()->ListWorkers(c.Ctx().get(), v1::ListWorkersRequest(), &workers);
    return workers.workers_size() == 1 && workers.workers(0).free_slots() == 2;
  }, std::chrono::seconds(3)));
  // Cancelling again is an illegal transition.
  const grpc::Status again = c.Jobs()->CancelJob(c.Ctx().get(), req, &resp);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The ranks are gone: no retina-train of this job remains.
   // (The store path makes the pattern unique: tests running in parallel all have a job-000001.)
  EXPECT_NE(std::system(("pgrep -f '[r]etina-train run .*--store " + c.store().string() + " --job " + job->id() +
                         "' > /dev/null").c_str()), 0);
}

TEST(Service, CoordinatorRestartReattachesRunningRanks) {
  Cluster c("reattach");
  c.MakeDataset("em");
  c.StartCoordinator();
  c.StartWorker("w1", 2);
  absl::StatusOr<v1::Job> job = c.Submit(PretrainYaml(20), 2);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(WaitFor([&] { return c.Get(job->id()).progress().step() >= 2; }, std::chrono::seconds(60)));
  const int port = c.grpc_port();
  c.StopCoordinator(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  c.StartCoordinator({{}, port});
  ASSERT_TRUE(c.WaitState(job->id(), v1::SUCCEEDED, 120)) << c.Get(job->id()).DebugString();
  EXPECT_EQ(c.Get(job->id()).attempt(), 1) << "the ranks kept running and were re-attached";
}

TEST(Service, BadRequestsGetTheRightCodeAndNameTheField) {
  Cluster c("bad");
  c.MakeDataset("em");
  c.StartCoordinator();
  auto code_and_message = [&](const std::string& yaml, int world) {
    absl::StatusOr<v1::Job> r = c.Submit(yaml, world);
    return std::make_pair(r.status().code(), std::string(r.status().message()));
  };
  auto [c1, m1] = code_and_message("kind: [pretrain", 1);
  EXPECT_EQ(c1, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m1, HasSubstr("spec.config_yaml"));
  auto [c2, m2] = code_and_message(PretrainYaml(1) + "optimiser: {lr: 0.1}\n", 1);
  EXPECT_EQ(c2, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m2, HasSubstr("optimiser"));
  EXPECT_THAT(m2, HasSubstr("optimizer"));  // the suggestion
  auto [c3, m3] = code_and_message(PretrainYaml(1), -1);  // 0 means 1, as the proto says
  EXPECT_EQ(c3, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m3, HasSubstr("spec.world_size"));
  auto [c4, m4] = code_and_message(PretrainYaml(1, "nope"), 1);
  EXPECT_EQ(c4, absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(m4, HasSubstr("data.dataset"));
  c.StartWorker("w1", 2);
  ASSERT_TRUE(WaitFor([&] {
    v1::ListWorkersResponse w;
    c.Jobs()->ListWorkers(c.Ctx().get(), v1::ListWorkersRequest(), &w);
    return w.workers_size() == 1;
  }, std::chrono::seconds(10)));
  auto [c5, m5] = code_and_message(PretrainYaml(1), 4);
  EXPECT_EQ(c5, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m5, HasSubstr("spec.world_size"));
  EXPECT_THAT(m5, HasSubstr("have 2"));

  v1::GetJobRequest get;
  get.set_id("job-999999");
  v1::Job job;
  EXPECT_EQ(c.Jobs()->GetJob(c.Ctx().get(), get, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ListJobsRequest list;
  list.set_page_token("garbage");
  v1::ListJobsResponse resp;
  const grpc::Status bad_token = c.Jobs()->ListJobs(c.Ctx().get(), list, &resp);
  EXPECT_EQ(bad_token.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad_token.error_message(), HasSubstr("page_token"));
  list.set_page_token("");
  list.set_filter("colour=red");
  EXPECT_EQ(c.Jobs()->ListJobs(c.Ctx().get(), list, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // ReadLogs: numbers out of range are refused before any work (a negative
  // offset used to stream without end).
  absl::StatusOr<v1::Job> running = c.Submit(PretrainYaml(1), 1);
  ASSERT_TRUE(running.ok()) << running.status();
  for (const auto& [field, set] : std::vector<std::pair<std::string, std::function<void(v1::ReadLogsRequest&)>>>{
           {"offset", [](v1::ReadLogsRequest& r) { r.set_offset(-1); }},
           {"rank", [](v1::ReadLogsRequest& r) { r.set_rank(-1); }},
           {"attempt", [](v1::ReadLogsRequest& r) { r.set_attempt(-2); }}}) {
    v1::ReadLogsRequest logs;
    logs.set_id(running->id());
    set(logs);
    auto ctx = c.Ctx("", 5);
    auto reader = c.Jobs()->ReadLogs(ctx.get(), logs);
    v1::LogChunk chunk;
    int64_t bytes = 0;
    while (reader->Read(&chunk)) bytes += static_cast<int64_t>(chunk.data().size());
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(s.error_message(), HasSubstr(field));
    EXPECT_EQ(bytes, 0) << field;
  }
}

TEST(Service, ListJobsPagesAndFilters) {
  Cluster c("list");
  fs::create_directories(c.store() / "datasets" / "em");
  std::ofstream(c.store() / "datasets" / "em" / "manifest.json") << "{}";
  c.StartCoordinator();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Submit(PretrainYaml(1), 1).ok());
  v1::ListJobsRequest req;
  req.set_page_size(2);
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    v1::ListJobsResponse resp;
    ASSERT_TRUE(c.Jobs()->ListJobs(c.Ctx().get(), req, &resp).ok());
    for (const auto& j : resp.jobs()) seen.push_back(j.id());
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"job-000005", "job-000004", "job-000003", "job-000002", "job-000001"}));
  req.Clear();
  req.set_filter("state=QUEUED kind=PRETRAIN");
  v1::ListJobsResponse resp;
  ASSERT_TRUE(c.Jobs()->ListJobs(c.Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 5);
  req.set_filter("state=RUNNING");
  ASSERT_TRUE(c.Jobs()->ListJobs(c.Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 0);
}

void WriteFile(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

TEST(Service, TokensAreCheckedBeforeAnyWork) {
  Cluster c("auth");
  WriteFile(c.root() / "clients", "# token user\nclient-token-0123456789 alice\n");
  WriteFile(c.root() / "worker", "worker-token-0123456789\n");
  // Secrets readable by others are refused, naming the fix; so is one token for two users.
  fs::permissions(c.root() / "clients", fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  absl::StatusOr<std::unique_ptr<services::Authenticator>> open_file = services::Authenticator::Create(c.root() / "clients", "");
  EXPECT_EQ(open_file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(open_file.status().message()), HasSubstr("chmod 600"));
  EXPECT_FALSE(services::ReadTokenFile(c.root() / "clients").ok());
  WriteFile(c.root() / "twice", "client-token-0123456789 alice\nclient-token-0123456789 bob\n");
  fs::permissions(c.root() / "twice", fs::perms::owner_read | fs::perms::owner_write);
  absl::StatusOr<std::unique_ptr<services::Authenticator>> twice = services::Authenticator::Create(c.root() / "twice", "");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("twice:2: this token is already listed (for alice)"));
  // A user's token that is also the workers' token is refused at start.
  WriteFile(c.root() / "shared-worker", "client-token-0123456789\n");
  for (const char* f : {"clients", "shared-worker"}) fs::permissions(c.root() / f, fs::perms::owner_read | fs::perms::owner_write);
  absl::StatusOr<std::unique_ptr<services::Authenticator>> shared =
      services::Authenticator::Create(c.root() / "clients", c.root() / "shared-worker");
  EXPECT_EQ(shared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(shared.status().message()), HasSubstr("shared-worker: the worker token is also the token of user alice"));
  for (const char* f : {"clients", "worker"}) fs::permissions(c.root() / f, fs::perms::owner_read | fs::perms::owner_write);
  c.StartCoordinator({{"--client-tokens", (c.root() / "clients").string(), "--worker-token",
                       (c.root() / "worker").string()}});
  fs::create_directories(c.store() / "datasets" / "em");
  WriteFile(c.store() / "datasets" / "em" / "manifest.json", "{}");
  EXPECT_EQ(c.Submit(PretrainYaml(1), 1).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(c.Submit(PretrainYaml(1), 1, 0, "wrong-token-0123456789").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(c.Submit(PretrainYaml(1), 1, 0, "worker-token-0123456789").status().code(),
            absl::StatusCode::kPermissionDenied);
  absl::StatusOr<v1::Job> ok = c.Submit(PretrainYaml(1), 1, 0, "client-token-0123456789");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->user(), "alice");
  // Nothing was stored for the rejected calls.
  EXPECT_EQ(ok->id(), "job-000001");

  auto workers = v1::WorkerService::NewStub(*services::MakeChannel(c.address(), ""));
  v1::RegisterWorkerRequest reg;
  reg.set_worker_id("w");
  reg.set_host("127.0.0.1");
  reg.set_slots(1);
  v1::RegisterWorkerResponse rr;
  EXPECT_EQ(workers->RegisterWorker(c.Ctx("client-token-0123456789").get(), reg, &rr).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(workers->RegisterWorker(c.Ctx().get(), reg, &rr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(workers->RegisterWorker(c.Ctx("worker-token-0123456789").get(), reg, &rr).ok());
}

TEST(Service, TlsWithATestCa) {
  Cluster c("tls");
  const fs::path d = c.root();
  const std::string cmd =
      "cd " + d.string() +
      " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"
      " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost"
      " && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ext"
      " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2"
      " -extfile ext > /dev/null 2>&1";
  if (std::system((cmd + " > /dev/null 2>&1").c_str()) != 0) GTEST_SKIP() << "openssl cannot make a test CA here";
  c.StartCoordinator({{"--tls-cert", (d / "server.pem").string(), "--tls-key", (d / "server.key").string()}});
  auto tls = v1::JobService::NewStub(*services::MakeChannel(c.address(), d / "ca.pem"));
  v1::GetJobRequest req;
  req.set_id("job-000001");
  v1::Job job;
  EXPECT_EQ(tls->GetJob(c.Ctx().get(), req, &job).error_code(), grpc::StatusCode::NOT_FOUND) << "TLS call served";
  auto plain = c.Jobs();
  EXPECT_EQ(plain->GetJob(c.Ctx("", 2).get(), req, &job).error_code(), grpc::StatusCode::UNAVAILABLE)
      << "a plaintext client cannot talk to a TLS server";
}

// Every name matching retina_[a-z0-9_]+ in `text`.
std::set<std::string> MetricNames(const std::string& text) {
  std::set<std::string> out;
  static const std::regex name("retina_[a-z0-9_]+");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it) {
    out.insert(it->str());
  }
  return out;
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// A real Prometheus scrapes both services while a fine-tuning job with
// validation and checkpoints runs; every metric that deploy/grafana's
// dashboard and deploy/prometheus' alert rules use is exported by one of the
// services at some point of the job, and every dashboard and alert expression
// is accepted by Prometheus' query API.
TEST(Service, RealPrometheusScrapesBothServicesAndTheDashboardsMetricsExist) {
  const char* prom = "/usr/bin/prometheus";
  if (!fs::exists(prom)) GTEST_SKIP() << "Debian's prometheus is not installed (scripts/setup installs it)";
  Cluster c("prom");
  for (const auto& [name, seed] : {std::pair<std::string, int>{"mito", 1}, {"mito-val", 2}}) {
    c.MakeBenchmark(name, "--train 1 --test 1 --shape 4,96,96 --seed " + std::to_string(seed));
  }
  c.StartCoordinator();
  const int worker_port = c.StartWorker("w1", 1);
  const int prom_port = FreeLoopbackPort();  // Prometheus' own HTTP API
  WriteFile(c.root() / "prometheus.yml",
            "global: {scrape_interval: 1s}\nscrape_configs:\n"
            "  - job_name: retina-coordinator\n    static_configs: [{targets: ['127.0.0.1:" +
                std::to_string(c.metrics_port()) + "']}]\n"
            "  - job_name: retina-worker\n    static_configs: [{targets: ['127.0.0.1:" + std::to_string(worker_port) +
                "']}]\n");
  Child server({prom, "--config.file=" + (c.root() / "prometheus.yml").string(),
                "--storage.tsdb.path=" + (c.root() / "tsdb").string(),
                "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
               c.root() / "prometheus.log");
  auto query = [&](const std::string& q) {
    return nlohmann::json::parse(HttpGet(prom_port, "/api/v1/query?query=" + UrlEncode(q)), nullptr, false);
  };
  const bool up = WaitFor([&] {
    nlohmann::json j = query("up");
    if (!j.is_object() || j.value("status", "") != "success") return false;
    int ones = 0;
    for (const auto& r : j["data"]["result"]) ones += r["value"][1] == "1";
    return ones == 2;
  }, std::chrono::seconds(40));
  ASSERT_TRUE(up) << "both targets up; see " << (c.root() / "prometheus.log");
  nlohmann::json jobs = query("retina_jobs");
  ASSERT_TRUE(jobs.is_object());
  EXPECT_EQ(jobs["data"]["result"].size(), 6u) << jobs.dump();  // one series per state
  nlohmann::json slots = query("retina_worker_slots");
  EXPECT_EQ(slots["data"]["result"].size(), 2u) << slots.dump();

  // Fine-tuning with validation every 10 steps and checkpoints: every
  // per-job family appears while it runs (and is dropped when it ends), so
  // collect the exported names from both endpoints while it does.
  absl::StatusOr<v1::Job> job = c.Submit(
      "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
      "data: {dataset: mito, val_dataset: mito-val, loader_threads: 1}\n"
      "finetune: {iters: 40, global_batch: 2, eval_every_iters: 10, save_every_iters: 10}\n", 1);
  ASSERT_TRUE(job.ok()) << job.status();
  std::set<std::string> exported;
  auto scrape = [&] {
    for (int port : {c.metrics_port(), worker_port}) {
      std::istringstream lines(HttpGet(port, "/metrics"));
      for (std::string line; std::getline(lines, line);) {
        if (line.rfind("# TYPE retina_", 0) == 0) exported.insert(line.substr(7, line.find(' ', 7) - 7));
      }
    }
  };
  const bool ended = WaitFor([&] {
    scrape();
    const v1::JobState st = c.Get(job->id()).state();
    return st == v1::SUCCEEDED || st == v1::FAILED || st == v1::CANCELLED;
  }, std::chrono::seconds(180));
  ASSERT_TRUE(ended);
  ASSERT_EQ(c.Get(job->id()).state(), v1::SUCCEEDED);
  scrape();

  const fs::path deploy = fs::path(RETINA_TEST_SOURCE_DIR) / "deploy";
  absl::StatusOr<std::string> dashboard = ReadFile(deploy / "grafana" / "dashboards" / "retina.json");
  absl::StatusOr<std::string> rules = ReadFile(deploy / "prometheus" / "retina-alerts.yml");
  ASSERT_TRUE(dashboard.ok() && rules.ok());
  const nlohmann::json dash = nlohmann::json::parse(*dashboard, nullptr, false);
  ASSERT_TRUE(dash.is_object()) << "retina.json is not JSON";
  std::vector<std::string> exprs;
  for (const auto& panel : dash["panels"]) {
    for (const auto& t : panel.value("targets", nlohmann::json::array())) exprs.push_back(t.at("expr"));
  }
  std::set<std::string> used = MetricNames(*dashboard);
  for (const std::string& n : MetricNames(*rules)) used.insert(n);
  EXPECT_GE(used.size(), 18u) << "the dashboard and the rules should cover the service's metrics";
  for (std::string name : used) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {  // histogram series of an exported family
      const std::string s(suffix);
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          exported.count(name.substr(0, name.size() - s.size()))) {
        name = name.substr(0, name.size() - s.size());
      }
    }
    EXPECT_TRUE(exported.count(name)) << name << " is used by deploy/ but neither service exported it";
  }
  // Prometheus itself accepts every expression (Grafana's variables filled in).
  const std::regex alert_expr("expr: (.*)");
  for (auto it = std::sregex_iterator(rules->begin(), rules->end(), alert_expr); it != std::sregex_iterator(); ++it) {
    exprs.push_back((*it)[1].str());
  }
  ASSERT_GE(exprs.size(), 20u);
  for (std::string e : exprs) {
    e = std::regex_replace(e, std::regex("\\$__rate_interval"), "1m");
    e = std::regex_replace(e, std::regex("\\$job_id"), ".*");
    const nlohmann::json r = query(e);
    EXPECT_TRUE(r.is_object() && r.value("status", "") == "success") << e << " -> " << r.dump();
  }
  server.Kill(SIGTERM);
}

// Segmentation as a service: fine-tune through the service, then `retina
// predict` an infer job over a 3-rank gang of 1-slot workers; its OME-Zarr
// equals a single-process run's at every level (read by python3-zarr), and
// the watch shows voxels.
TEST(Service, PredictOverAThreeRankGangEqualsOneProcess) {
  if (const std::string why = PythonMissing("zarr, numcodecs, numpy"); !why.empty()) GTEST_SKIP() << why;
  Cluster c("infer");
  const std::string bin = BinDir() + "/trainer/";
  c.MakeBenchmark("mito", "--train 1 --test 1 --shape 9,80,80 --spacing 5,5,5");
  const fs::path bench = c.root() / "raw-mito";
  fs::create_directories(c.store() / "volumes");
  fs::copy_file(bench / "test/images/vol0.tif", c.store() / "volumes/vol0.tif");
  c.StartCoordinator();
  for (const char* w : {"w1", "w2", "w3"}) c.StartWorker(w, 1);
  absl::StatusOr<v1::Job> ft = c.Submit(
      "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\ndata: {dataset: mito, loader_threads: 1}\n"
      "finetune: {iters: 2, global_batch: 2}\n",
      1);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_TRUE(c.WaitState(ft->id(), v1::SUCCEEDED, 120)) << v1::JobState_Name(c.Get(ft->id()).state());

  const std::string weights = "jobs/" + ft->id() + "/checkpoints/LATEST";
  const fs::path watch = c.root() / "predict.log";
  const std::string predict = BinDir() + "/services/retina --address " + c.address() + " predict --weights " + weights +
                              " -i volumes/vol0.tif --world-size 3 --chunks 2,64,64 --probabilities uint8 > " +
                              (c.root() / "predict.id").string() + " 2> " + watch.string();
  ASSERT_EQ(std::system(predict.c_str()), 0) << predict << "\n" << *ReadFile(watch);
  const std::string id = std::string(absl::StripAsciiWhitespace(*ReadFile(c.root() / "predict.id")));
  const v1::Job done = c.Get(id);
  EXPECT_EQ(done.state(), v1::SUCCEEDED);
  EXPECT_EQ(done.spec().kind(), v1::INFER);
  ASSERT_EQ(done.placement_size(), 3);
  EXPECT_EQ(done.progress().step(), 5);  // chunk rows: ceil(9 / 2)
  const std::string watched = *ReadFile(watch);
  EXPECT_THAT(watched, ::testing::HasSubstr("voxels")) << watched;
  std::printf("%s", watched.c_str());
  // The same job in one process, standalone.
  const fs::path yaml = c.root() / "single.yaml";
  ASSERT_TRUE(WriteFileAtomic(yaml, "kind: infer\ninfer: {weights: " + weights +
                                        ", inputs: [volumes/vol0.tif], chunks: [2, 64, 64], probabilities: uint8}\n")
                  .ok());
  const std::string single = bin + "retina-train run --config " + yaml.string() + " --store " + c.store().string() +
                             " --job single > " + (c.root() / "single.log").string() + " 2>&1";
  ASSERT_EQ(std::system(single.c_str()), 0) << *ReadFile(c.root() / "single.log");
  const std::string a = (c.store() / "jobs" / id / "predictions").string();
  const std::string b = (c.store() / "jobs/single/predictions").string();
  const std::string cmd = Python() + " -c \"import zarr, numpy as np, sys\n"
                          "for name in ('vol0.ome.zarr', 'vol0.probabilities.ome.zarr'):\n"
                          "  x, y = zarr.open_group(sys.argv[1] + '/' + name, 'r'), zarr.open_group(sys.argv[2] + '/' + name, 'r')\n"
                          "  keys = sorted(x.array_keys())\n"
                          "  assert keys == sorted(y.array_keys()) and keys, keys\n"
                          "  for k in keys: assert np.array_equal(x[k][:], y[k][:]), (name, k)\n"
                          "print('equal')\" " + a + " " + b + " > " + (c.root() / "compare.log").string() + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << *ReadFile(c.root() / "compare.log");
}

}  // namespace
}  // namespace retina::testing
