// Per-user permissions (docs/service.md "Permissions"): every job RPC for
// the job's owner, another user, an admin and the worker token.
#include <gmock/gmock.h>

#include "tests/services/cluster.h"

namespace retina::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kAlice[] = "alice-token-0123456789";
constexpr char kBob[] = "bob-token-0123456789ab";
constexpr char kRoot[] = "root-token-0123456789a";
constexpr char kWorker[] = "worker-token-0123456789";

void Secret(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
}

TEST(Access, EveryJobRpcForOwnerOtherUserAdminAndWorkerToken) {
  Cluster c("access");
  c.MakeDataset("em");
  Secret(c.root() / "clients", std::string("# token user [admin]\n") + kAlice + " alice\n" + kBob + " bob\n" + kRoot +
                                   " root admin\n");
  Secret(c.root() / "worker", std::string(kWorker) + "\n");
  c.StartCoordinator({{"--client-tokens", (c.root() / "clients").string(), "--worker-token",
                       (c.root() / "worker").string()}});
  c.StartWorker("w1", 1, {"--token-file", (c.root() / "worker").string()});
  absl::StatusOr<v1::Job> running = c.Submit(PretrainYaml(40), 1, 0, kAlice);
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_TRUE(WaitFor([&] {
    v1::GetJobRequest g;
    g.set_id(running->id());
    v1::Job j;
    c.Jobs()->GetJob(c.Ctx(kAlice).get(), g, &j);
    return j.progress().step() >= 1;
  }, std::chrono::seconds(60)));
  // Two more of alice's jobs wait behind it (one slot).
  absl::StatusOr<v1::Job> queued1 = c.Submit(PretrainYaml(1), 1, 0, kAlice);
  absl::StatusOr<v1::Job> queued2 = c.Submit(PretrainYaml(1), 1, 0, kAlice);
  ASSERT_TRUE(queued1.ok() && queued2.ok());

  const std::map<std::string, std::string> tokens = {{"owner", kAlice}, {"other", kBob}, {"admin", kRoot}, {"worker", kWorker}};
  const std::map<std::string, grpc::StatusCode> control = {{"owner", grpc::StatusCode::OK},
                                                           {"other", grpc::StatusCode::PERMISSION_DENIED},
                                                           {"admin", grpc::StatusCode::OK},
                                                           {"worker", grpc::StatusCode::PERMISSION_DENIED}};
  auto stub = c.Jobs();
  for (const auto& [who, token] : tokens) {
    SCOPED_TRACE(who);
    const grpc::StatusCode want = control.at(who);
    // GetJob and ListJobs: metadata for every client; the spec only for owner/admin.
    v1::GetJobRequest get;
    get.set_id(running->id());
    v1::Job job;
    const grpc::Status g = stub->GetJob(c.Ctx(token).get(), get, &job);
    v1::ListJobsRequest list;
    v1::ListJobsResponse jobs;
    const grpc::Status l = stub->ListJobs(c.Ctx(token).get(), list, &jobs);
    if (who == "worker") {
      EXPECT_EQ(g.error_code(), grpc::StatusCode::PERMISSION_DENIED);
      EXPECT_EQ(l.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    } else {
      ASSERT_TRUE(g.ok()) << g.error_message();
      ASSERT_TRUE(l.ok()) << l.error_message();
      EXPECT_EQ(job.user(), "alice");
      EXPECT_EQ(job.spec().config_yaml().empty(), who == "other");
      ASSERT_EQ(jobs.jobs_size(), 3);
      for (const v1::Job& j : jobs.jobs()) EXPECT_EQ(j.spec().config_yaml().empty(), who == "other") << j.id();
    }
    // GetJobMetrics, ReadLogs, WatchJob: owner and admin only.
    v1::GetJobMetricsRequest mreq;
    mreq.set_id(running->id());
    v1::JobMetrics m;
    EXPECT_EQ(stub->GetJobMetrics(c.Ctx(token).get(), mreq, &m).error_code(), want);
    v1::ReadLogsRequest lreq;
    lreq.set_id(running->id());
    auto lctx = c.Ctx(token);
    auto logs = stub->ReadLogs(lctx.get(), lreq);
    v1::LogChunk chunk;
    int64_t bytes = 0;
    while (logs->Read(&chunk)) bytes += static_cast<int64_t>(chunk.data().size());
    const grpc::Status ls = logs->Finish();
    EXPECT_EQ(ls.error_code(), want) << ls.error_message();
    EXPECT_EQ(bytes > 0, want == grpc::StatusCode::OK) << "no log bytes reach a caller who may not read them";
    if (who == "other") {
      EXPECT_THAT(ls.error_message(), HasSubstr("belongs to alice"));
    }
    v1::WatchJobRequest wreq;
    wreq.set_id(running->id());
    auto wctx = c.Ctx(token);
    auto watch = stub->WatchJob(wctx.get(), wreq);
    v1::JobEvent ev;
    const bool got = watch->Read(&ev);
    EXPECT_EQ(got, want == grpc::StatusCode::OK);
    if (got) wctx->TryCancel();
    const grpc::Status ws = watch->Finish();
    if (!got) {
      EXPECT_EQ(ws.error_code(), want) << ws.error_message();
    }
  }
  // CancelJob: bob and the worker token may not; alice and root may.
  for (const char* token : {kBob, kWorker}) {
    v1::CancelJobRequest cancel;
    cancel.set_id(queued1->id());
    v1::Job out;
    EXPECT_EQ(stub->CancelJob(c.Ctx(token).get(), cancel, &out).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_EQ(c.Get(queued1->id(), kAlice).state(), v1::QUEUED) << "a denied cancel changes nothing";
  for (const auto& [id, token] : {std::pair<std::string, const char*>{queued1->id(), kAlice}, {queued2->id(), kRoot},
                                  {running->id(), kRoot}}) {
    v1::CancelJobRequest cancel;
    cancel.set_id(id);
    v1::Job out;
    EXPECT_TRUE(stub->CancelJob(c.Ctx(token).get(), cancel, &out).ok()) << id;
  }
  v1::GetJobRequest get;
  get.set_id(queued1->id());
  v1::Job job;
  ASSERT_TRUE(stub->GetJob(c.Ctx(kAlice).get(), get, &job).ok());
  EXPECT_EQ(job.state(), v1::CANCELLED);
  // preemptible=false (never preempted, whatever the priority) is for admins.
  for (const auto& [token, want] : {std::pair<const char*, grpc::StatusCode>{kAlice, grpc::StatusCode::PERMISSION_DENIED},
                                    {kRoot, grpc::StatusCode::OK}}) {
    v1::SubmitJobRequest s;
    s.mutable_spec()->set_config_yaml(PretrainYaml(1));
    (*s.mutable_spec()->mutable_labels())["preemptible"] = "false";
    v1::Job out;
    const grpc::Status st = stub->SubmitJob(c.Ctx(token).get(), s, &out);
    EXPECT_EQ(st.error_code(), want) << st.error_message();
    if (want != grpc::StatusCode::OK) {
      EXPECT_THAT(st.error_message(), HasSubstr("spec.labels: preemptible=false (never preempted) is for admins (you are alice)"));
      continue;
    }
    v1::CancelJobRequest cancel;
    cancel.set_id(out.id());
    EXPECT_TRUE(stub->CancelJob(c.Ctx(kRoot).get(), cancel, &out).ok());
  }
}

}  // namespace
}  // namespace retina::testing
