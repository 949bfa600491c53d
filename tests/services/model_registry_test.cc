// The model registry through the service (docs/models.md): automatic and
// explicit registration, the lineage down to the pre-training, model
// references as weights, access by owner/other/admin, a job's checkpoint
// retention that must not touch a registered version, delete's refusals,
// a coordinator SIGKILL and restart, Prometheus counts, and the CLI.
#include <gmock/gmock.h>

#include "absl/strings/str_join.h"
#include "common/checkpoint_store.h"
#include "common/dataset_manifest.h"
#include "common/file_util.h"
#include "common/model_ref.h"
#include "common/records.h"
#include "retina/v1/model_service.grpc.pb.h"
#include "tests/services/cluster.h"

namespace retina::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kAlice[] = "alice-token-0123456789";
constexpr char kBob[] = "bob-token-0123456789ab";
constexpr char kRoot[] = "root-token-0123456789a";
constexpr char kWorker[] = "worker-token-0123456789";

std::string FinetuneYaml(const std::string& init, const std::string& extra = "") {
  return "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
         "data: {dataset: mito, val_dataset: mito-val, loader_threads: 1}\n"
         "finetune: {iters: 4, global_batch: 4, init: " + init + ", save_every_iters: 2, eval_every_iters: 2" + extra +
         "}\n";
}

class Registry {
 public:
  explicit Registry(const Cluster& c) : c_(c), stub_(v1::ModelService::NewStub(*services::MakeChannel(c.address(), ""))) {}
  grpc::Status Register(const std::string& token, const std::string& job, int64_t step, const std::string& name,
                        v1::ModelVersion* out, const std::vector<std::string>& tags = {}) {
    v1::RegisterModelRequest r;
    r.set_job_id(job);
    r.set_step(step);
    r.set_name(name);
    for (const std::string& t : tags) r.add_tags(t);
    return stub_->RegisterModel(c_.Ctx(token, 60).get(), r, out);
  }
  grpc::Status Import(const std::string& token, const std::string& package, const std::string& name,
                      v1::ModelVersion* out) {
    v1::RegisterModelRequest r;
    r.set_package(package);
    r.set_name(name);
    return stub_->RegisterModel(c_.Ctx(token, 60).get(), r, out);
  }
  grpc::Status Get(const std::string& token, const std::string& ref, v1::ModelVersion* out) {
    v1::GetModelRequest r;
    r.set_ref(ref);
    return stub_->GetModel(c_.Ctx(token).get(), r, out);
  }
  std::vector<std::string> List(const std::string& token) {
    v1::ListModelVersionsResponse resp;
    EXPECT_TRUE(stub_->ListModels(c_.Ctx(token).get(), v1::ListModelVersionsRequest(), &resp).ok());
    std::vector<std::string> ids;
    for (const v1::ModelVersion& m : resp.models()) {
      ids.push_back(m.id() + (m.tags().empty() ? "" : "@" + absl::StrJoin(m.tags(), ",")));
    }
    return ids;
  }
  grpc::StatusCode Tag(const std::string& token, const std::string& ref, const std::string& tag, bool remove = false) {
    v1::TagModelRequest r;
    r.set_ref(ref);
    r.set_tag(tag);
    r.set_remove(remove);
    v1::ModelVersion m;
    return stub_->TagModel(c_.Ctx(token).get(), r, &m).error_code();
  }
  grpc::Status Delete(const std::string& token, const std::string& ref) {
    v1::DeleteModelRequest r;
    r.set_ref(ref);
    v1::ModelVersion m;
    return stub_->DeleteModel(c_.Ctx(token).get(), r, &m);
  }

 private:
  const Cluster& c_;
  std::unique_ptr<v1::ModelService::Stub> stub_;
};

bool Ends(Cluster& c, const std::string& id, v1::JobState state) {  // as the admin (tokens are on)
  v1::JobState now = v1::JOB_STATE_UNSPECIFIED;
  WaitFor([&] {
    now = c.Get(id, kRoot).state();
    return now == v1::SUCCEEDED || now == v1::FAILED || now == v1::CANCELLED;
  }, std::chrono::seconds(120));
  return now == state;
}

std::string Sha256Of(const fs::path& p) {
  absl::StatusOr<FileDigest> d = Sha256File(p);
  return d.ok() ? d->sha256 : "unreadable " + p.string();
}

TEST(Models, RegistryLineageReferencesAccessRetentionAndRestart) {
  Cluster c("models");
  c.MakeDataset("em");
  c.MakeBenchmark("mito", "--train 1 --test 1 --shape 4,128,128 --seed 1");
  c.MakeBenchmark("mito-val", "--train 1 --test 1 --shape 4,128,128 --seed 2");
  const fs::path tokens = c.root() / "clients";
  std::ofstream(tokens) << kAlice << " alice\n" << kBob << " bob\n" << kRoot << " root admin\n";
  fs::permissions(tokens, fs::perms::owner_read | fs::perms::owner_write);
  const fs::path worker_token = c.root() / "worker";
  std::ofstream(worker_token) << kWorker << "\n";
  fs::permissions(worker_token, fs::perms::owner_read | fs::perms::owner_write);
  const CoordinatorFlags flags{{"--client-tokens", tokens.string(), "--worker-token", worker_token.string()}};
  c.StartCoordinator(flags);
  c.StartWorker("w1", 2, {"--token-file", worker_token.string()});
  Registry reg(c);

  // A pre-training, then a fine-tune from it that registers itself.
  absl::StatusOr<v1::Job> pre = c.Submit(PretrainYaml(2), 1, 0, kAlice);
  ASSERT_TRUE(pre.ok()) << pre.status();
  ASSERT_TRUE(Ends(c, pre->id(), v1::SUCCEEDED)) << c.Get(pre->id(), kAlice).message();
  // The name belongs to nobody yet; bob's job may not take it later (below).
  absl::StatusOr<v1::Job> ft = c.Submit(FinetuneYaml("jobs/" + pre->id(), ", register: mito-net"), 1, 0, kAlice);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_TRUE(Ends(c, ft->id(), v1::SUCCEEDED)) << c.Get(ft->id(), kAlice).message();
  v1::ModelVersion v1m;
  ASSERT_TRUE(WaitFor([&] { return reg.Get(kAlice, "mito-net", &v1m).ok(); }, std::chrono::seconds(30)))
      << "finetune.register did not register the job; see " << (c.root() / "coordinator.log");
  EXPECT_EQ(v1m.id(), "mito-net:v1");
  EXPECT_EQ(v1m.origin(), "auto");
  EXPECT_EQ(v1m.user(), "alice");

  // The lineage: the fine-tune's final checkpoint, then the pre-training's.
  ASSERT_EQ(v1m.lineage_size(), 2) << v1m.DebugString();
  const v1::LineageStep& top = v1m.lineage(0);
  EXPECT_EQ(top.job_id(), ft->id());
  EXPECT_EQ(top.kind(), "finetune");
  EXPECT_EQ(top.step(), 4);
  EXPECT_THAT(top.code_version(), StartsWith("retina-train "));
  EXPECT_EQ(top.manifest_sha256(), Sha256Of(c.store() / v1m.path() / "MANIFEST"));
  EXPECT_EQ(top.manifest_sha256(), Sha256Of(c.store() / "jobs" / ft->id() / "checkpoints/step-00000004/MANIFEST"));
  EXPECT_THAT(top.config_yaml(), HasSubstr("register: mito-net"));
  EXPECT_THAT(top.scores_json(), HasSubstr("val_iou"));
  absl::StatusOr<DatasetManifest> mito = DatasetManifest::Load(c.store() / "datasets/mito");
  ASSERT_TRUE(mito.ok());
  ASSERT_GE(top.datasets_size(), 2);
  EXPECT_EQ(top.datasets(0).role(), "train");
  EXPECT_EQ(top.datasets(0).name(), "mito");
  EXPECT_EQ(top.datasets(0).version(), 1);
  EXPECT_EQ(top.datasets(0).digest(), mito->VersionDigest(static_cast<int64_t>(mito->shards.size())));
  EXPECT_EQ(top.datasets(1).role(), "val");
  absl::StatusOr<std::string> pre_latest = CheckpointStore(c.store() / "jobs" / pre->id() / "checkpoints").ReadLatestPointer();
  ASSERT_TRUE(pre_latest.ok());
  const std::string pre_ckpt = "jobs/" + pre->id() + "/checkpoints/" + *pre_latest;
  EXPECT_EQ(top.init(), pre_ckpt);
  const v1::LineageStep& root = v1m.lineage(1);
  EXPECT_EQ(root.job_id(), pre->id());
  EXPECT_EQ(root.kind(), "pretrain");
  EXPECT_EQ(root.checkpoint(), pre_ckpt);
  EXPECT_EQ(root.init(), "random");
  EXPECT_EQ(root.manifest_sha256(), Sha256Of(c.store() / pre_ckpt / "MANIFEST"));
  ASSERT_EQ(root.datasets_size(), 1);
  EXPECT_EQ(root.datasets(0).name(), "em");

  // An earlier step, by hand, with a tag; the version's files are hard links.
  v1::ModelVersion v2m;
  ASSERT_TRUE(reg.Register(kAlice, ft->id(), 2, "mito-net", &v2m, {"candidate"}).ok());
  EXPECT_EQ(v2m.id(), "mito-net:v2");
  EXPECT_EQ(v2m.lineage(0).step(), 2);
  EXPECT_EQ(fs::hard_link_count(c.store() / v2m.path() / "model.pt"), 2u);

  // Access: bob reads metadata without the job files; may not register
  // alice's job, take her name, tag or delete; the admin may tag.
  v1::ModelVersion seen;
  ASSERT_TRUE(reg.Get(kBob, "mito-net:v2", &seen).ok());
  EXPECT_TRUE(seen.lineage(0).config_yaml().empty());
  EXPECT_FALSE(seen.lineage(0).manifest_sha256().empty());
  v1::ModelVersion none;
  EXPECT_EQ(reg.Register(kBob, ft->id(), 0, "bobs", &none).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(reg.Tag(kBob, "mito-net:v2", "prod"), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(reg.Delete(kBob, "mito-net:v2").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  absl::StatusOr<v1::Job> bobs = c.Submit(FinetuneYaml("jobs/" + pre->id(), ", register: mito-net"), 1, 0, kBob);
  ASSERT_FALSE(bobs.ok());
  EXPECT_EQ(bobs.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(bobs.status().message(), HasSubstr("finetune.register"));
  EXPECT_EQ(reg.Tag(kRoot, "mito-net:v1", "prod"), grpc::StatusCode::OK);
  EXPECT_EQ(reg.Tag(kAlice, "mito-net:v2", "prod"), grpc::StatusCode::OK);  // moved from v1
  EXPECT_EQ(reg.List(kBob), (std::vector<std::string>{"mito-net:v1", "mito-net:v2@candidate,prod"}));
  absl::StatusOr<std::string> index = ReadFile(ModelIndexPath(c.store(), "mito-net"));
  ASSERT_TRUE(index.ok());
  EXPECT_THAT(*index, HasSubstr("\"prod\": 2"));

  // The job's retention removes step 2 from the job; the version stays whole.
  absl::StatusOr<std::vector<std::string>> removed =
      CheckpointStore(c.store() / "jobs" / ft->id() / "checkpoints").ApplyRetention(1, false);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_THAT(*removed, ::testing::Contains("step-00000002"));
  EXPECT_FALSE(fs::exists(c.store() / "jobs" / ft->id() / "checkpoints/step-00000002"));
  EXPECT_TRUE(CheckpointStore::Verify(c.store() / v2m.path()).ok());

  // References as weights: a fine-tune from a tag, an evaluation of a version.
  EXPECT_FALSE(c.Submit(FinetuneYaml("model:nope"), 1, 0, kAlice).ok());
  absl::StatusOr<v1::Job> ft2 = c.Submit(FinetuneYaml("model:mito-net@candidate"), 1, 0, kBob);  // anyone may read
  ASSERT_TRUE(ft2.ok()) << ft2.status();
  absl::StatusOr<v1::Job> ev = c.Submit(
      "kind: evaluate\nmodel: {name: tiny, image_size: 64, classes: 1}\ndata: {dataset: mito-test}\n"
      "evaluate: {checkpoint: 'model:mito-net:v1', mode: stack}\n", 1, 0, kAlice);
  ASSERT_TRUE(ev.ok()) << ev.status();
  // While a job that names the model is unfinished, delete refuses.
  absl::StatusOr<v1::Job> holder = c.Submit(
      "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\ndata: {dataset: mito, loader_threads: 1}\n"
      "finetune: {iters: 100000, global_batch: 4, init: 'model:mito-net:v1'}\n", 1, 0, kAlice);
  ASSERT_TRUE(holder.ok()) << holder.status();
  const grpc::Status busy = reg.Delete(kAlice, "mito-net:v1");
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << busy.error_message();
  EXPECT_THAT(busy.error_message(), HasSubstr("is named by job"));
  {
    v1::CancelJobRequest cancel;
    cancel.set_id(holder->id());
    v1::Job j;
    ASSERT_TRUE(c.Jobs()->CancelJob(c.Ctx(kAlice).get(), cancel, &j).ok());
  }
  ASSERT_TRUE(Ends(c, ft2->id(), v1::SUCCEEDED)) << c.Get(ft2->id(), kBob).message();
  ASSERT_TRUE(Ends(c, ev->id(), v1::SUCCEEDED)) << c.Get(ev->id(), kAlice).message();
  ASSERT_TRUE(Ends(c, holder->id(), v1::CANCELLED));
  absl::StatusOr<std::string> state = ReadFile(c.store() / "jobs" / ft2->id() / "checkpoints/step-00000004/state.json");
  ASSERT_TRUE(state.ok());
  EXPECT_THAT(*state, HasSubstr("\"init\": \"models/mito-net/v2\""));
  absl::StatusOr<std::string> eval = ReadFile(c.store() / "jobs" / ev->id() / "eval.json");
  ASSERT_TRUE(eval.ok());
  EXPECT_THAT(*eval, HasSubstr("models/mito-net/v1"));

  // Bob's model from alice's: its chain goes through mito-net:v2 to the pre-training.
  v1::ModelVersion bobm;
  ASSERT_TRUE(reg.Register(kBob, ft2->id(), 0, "bob-net", &bobm).ok());
  ASSERT_EQ(bobm.lineage_size(), 3) << bobm.DebugString();
  EXPECT_EQ(bobm.lineage(1).model_id(), "mito-net:v2");
  EXPECT_EQ(bobm.lineage(1).job_id(), ft->id());
  EXPECT_EQ(bobm.lineage(2).job_id(), pre->id());
  EXPECT_EQ(bobm.lineage(1).manifest_sha256(), v2m.lineage(0).manifest_sha256());
  const grpc::Status used = reg.Delete(kAlice, "mito-net:v2");
  EXPECT_EQ(used.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(used.error_message(), HasSubstr("bob-net:v1"));

  // Prometheus counts, then a SIGKILL: the registry survives a restart.
  const std::string exposition = HttpGet(c.metrics_port(), "/metrics");
  EXPECT_EQ(Sample(exposition, "retina_models"), 3);
  EXPECT_EQ(Sample(exposition, "retina_model_changes_total{op=\"register\",result=\"ok\"}"), 3);
  EXPECT_GE(Sample(exposition, "retina_model_changes_total{op=\"tag\",result=\"ok\"}"), 2);
  const std::vector<std::string> before = reg.List(kAlice);
  c.StopCoordinator(SIGKILL);
  c.StartCoordinator(flags);
  c.StartWorker("w2", 2, {"--token-file", worker_token.string()});  // the coordinator's new port
  Registry after(c);
  EXPECT_EQ(after.List(kAlice), before);
  EXPECT_EQ(Sample(HttpGet(c.metrics_port(), "/metrics"), "retina_models"), 3);
  v1::ModelVersion again;
  ASSERT_TRUE(after.Get(kAlice, "mito-net@prod", &again).ok());
  EXPECT_EQ(again.id(), "mito-net:v2");
  EXPECT_EQ(again.lineage_size(), v2m.lineage_size());

  // The CLI prints the chain.
  const fs::path out = c.root() / "show.out";
  const std::string cmd = "RETINA_TOKEN=" + std::string(kAlice) + " " + BinDir() + "/services/retina --address " +
                          c.address() + " models show bob-net --lineage > " + out.string() + " 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  absl::StatusOr<std::string> shown = ReadFile(out);
  ASSERT_TRUE(shown.ok());
  EXPECT_THAT(*shown, HasSubstr("<- model mito-net:v2: job " + ft->id()));
  EXPECT_THAT(*shown, HasSubstr("job " + pre->id() + " (pretrain"));
  EXPECT_THAT(*shown, HasSubstr("data (train) em, version 1"));

  // Deleting: the dependent first, then the parent; the files go too.
  ASSERT_TRUE(after.Delete(kBob, "bob-net:v1").ok());
  EXPECT_FALSE(fs::exists(c.store() / "models/bob-net/v1"));
  const grpc::Status gone = after.Delete(kAlice, "mito-net:v2");
  EXPECT_TRUE(gone.ok()) << gone.error_message();
  EXPECT_FALSE(fs::exists(c.store() / "models/mito-net/v2"));
  EXPECT_EQ(after.List(kAlice), (std::vector<std::string>{"mito-net:v1"}));
  // The tag went with its version: model:mito-net@prod no longer resolves.
  EXPECT_EQ(ResolveModelRef(c.store(), "model:mito-net@prod", "f").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ResolveModelRef(c.store(), "model:mito-net", "f").ok());

  // A BioImage.IO package of mito-net:v1 (retina models export, with its
  // lineage), imported as another model: the chain carries over, and a job
  // uses it (its test tensors checked where it is loaded).
  fs::create_directories(c.store() / "imports");
  const std::string export_cmd = "RETINA_TOKEN=" + std::string(kAlice) + " " + BinDir() + "/services/retina --address " +
                                  c.address() + " models export mito-net:v1 -o " + (c.store() / "imports/mito.zip").string() +
                                  " --store " + c.store().string() + " --author Tester > " +
                                  (c.root() / "export.out").string() + " 2>&1";
  ASSERT_EQ(std::system(export_cmd.c_str()), 0) << *ReadFile(c.root() / "export.out");
  v1::ModelVersion imported;
  const grpc::Status imp = after.Import(kBob, "imports/mito.zip", "imported", &imported);
  ASSERT_TRUE(imp.ok()) << imp.error_message();
  ASSERT_EQ(imported.lineage_size(), 3) << imported.DebugString();
  EXPECT_THAT(imported.lineage(0).note(), HasSubstr("BioImage.IO package"));
  EXPECT_EQ(imported.lineage(0).manifest_sha256(), Sha256Of(c.store() / "imports/mito.zip"));
  EXPECT_EQ(imported.lineage(1).model_id(), "mito-net:v1");
  EXPECT_EQ(imported.lineage(1).job_id(), ft->id());
  EXPECT_EQ(imported.lineage(2).job_id(), pre->id());
  absl::StatusOr<v1::Job> uses = c.Submit(
      "kind: evaluate\nmodel: {name: tiny, image_size: 64, classes: 1}\ndata: {dataset: mito-test}\n"
      "evaluate: {checkpoint: 'model:imported', mode: stack}\n", 1, 0, kBob);
  ASSERT_TRUE(uses.ok()) << uses.status();
  ASSERT_TRUE(Ends(c, uses->id(), v1::SUCCEEDED)) << c.Get(uses->id(), kBob).message();
  std::ofstream(c.store() / "imports/bad.zip") << "not a zip";
  v1::ModelVersion bad;
  EXPECT_EQ(after.Import(kBob, "imports/bad.zip", "bad", &bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(after.Import(kBob, "/etc/hostname", "bad", &bad).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

}  // namespace
}  // namespace retina::testing
