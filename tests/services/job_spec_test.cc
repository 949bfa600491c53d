// SubmitJob's spec check and ListJobs' query (services/coordinator/job_spec.h,
// job_query.h), in process: no server, no clock.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "common/file_util.h"
#include "services/coordinator/job_query.h"
#include "services/coordinator/job_spec.h"

namespace retina::coordinator {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class JobSpecCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = fs::temp_directory_path() / ("jobspec-" + std::to_string(::getpid()));
    fs::create_directories(store_ / "datasets/em");
    ASSERT_TRUE(WriteFileAtomic(store_ / "datasets/em/manifest.json", "{}").ok());
  }
  void TearDown() override { fs::remove_all(store_); }
  v1::JobSpec Spec(const std::string& yaml, int world = 1) {
    v1::JobSpec s;
    s.set_config_yaml(yaml);
    s.set_world_size(world);
    return s;
  }
  fs::path store_;
};

const char kPretrain[] = "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
                         "pretrain: {epochs: 1, global_batch: 8}\n";

TEST_F(JobSpecCheck, DefaultsAreFilledAndTheKindComesFromTheYaml) {
  v1::JobSpec s = Spec(kPretrain, 2);
  ASSERT_TRUE(ValidateJobSpec(&s, store_, {}).ok());
  EXPECT_EQ(s.kind(), v1::PRETRAIN);
  EXPECT_EQ(s.slots_per_rank(), 1);
  v1::JobSpec unset = Spec(kPretrain, 0);  // world_size and slots_per_rank: "1 when 0", as the proto says
  ASSERT_TRUE(ValidateJobSpec(&unset, store_, {}).ok());
  EXPECT_EQ(unset.world_size(), 1);
  EXPECT_EQ(KindFromConfig(JobKind::kFinetune), v1::FINETUNE);
  EXPECT_EQ(KindFromConfig(JobKind::kEvaluate), v1::EVALUATE);
}

TEST_F(JobSpecCheck, EveryRefusalNamesItsField) {
  struct Case {
    v1::JobSpec spec;
    const char* expected;
  };
  std::vector<Case> cases;
  cases.push_back({Spec(kPretrain, 3), "spec.world_size: pretrain.global_batch 8 does not divide by 3"});
  cases.push_back({Spec(kPretrain, -1), "spec.world_size: must be between 1"});
  cases.push_back({Spec(kPretrain, 4097), "spec.world_size: must be between 1"});
  cases.push_back({Spec(""), "spec.config_yaml: empty"});
  cases.push_back({Spec("kind: pretrain\nnot yaml: [\n"), "spec.config_yaml"});
  v1::JobSpec wrong_kind = Spec(kPretrain);
  wrong_kind.set_kind(v1::FINETUNE);
  cases.push_back({wrong_kind, "spec.kind: FINETUNE does not match the config's kind 'pretrain'"});
  v1::JobSpec priority = Spec(kPretrain);
  priority.set_priority(1 << 20);
  cases.push_back({priority, "spec.priority: must be between"});
  v1::JobSpec infer = Spec(kPretrain);
  infer.set_kind(v1::INFER);
  cases.push_back({infer, "spec.kind: INFER does not match the config's kind 'pretrain'"});
  for (Case& c : cases) {
    const absl::Status s = ValidateJobSpec(&c.spec, store_, {});
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr(c.expected));
  }
  v1::JobSpec missing = Spec("kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: nope}\n");
  const absl::Status s = ValidateJobSpec(&missing, store_, {});
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("data.dataset: no dataset 'nope'"));
  v1::JobSpec outside = Spec("kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: /etc}\n");
  EXPECT_TRUE(absl::IsPermissionDenied(ValidateJobSpec(&outside, store_, {})));
  // Infer jobs: inputs (a glob by its directory) and weights are read paths,
  // the output must be in the store.
  for (const auto& [yaml, field] : std::vector<std::pair<std::string, std::string>>{
           {"kind: infer\ninfer: {weights: m.pt, inputs: [/etc/*.tif]}\n", "infer.inputs[0]: /etc/"},
           {"kind: infer\ninfer: {weights: /etc/m.pt, inputs: [a.tif]}\n", "infer.weights: /etc/m.pt"},
           {"kind: infer\ninfer: {weights: m.pt, inputs: [a.tif], output: /tmp/out}\n", "infer.output: /tmp/out"}}) {
    v1::JobSpec spec = Spec(yaml);
    const absl::Status denied = ValidateJobSpec(&spec, store_, {});
    EXPECT_TRUE(absl::IsPermissionDenied(denied)) << denied;
    EXPECT_THAT(denied.message(), HasSubstr(field));
  }
  v1::JobSpec infer_ok = Spec("kind: infer\ninfer: {weights: m.pt, inputs: [volumes/*.tif]}\n");
  EXPECT_TRUE(ValidateJobSpec(&infer_ok, store_, {}).ok());
  EXPECT_EQ(infer_ok.kind(), v1::INFER);
}

// Weights that name a file must be a zip archive (torch.save .pt, .npz):
// a TIFF as finetune.init, evaluate.checkpoint, infer.weights or a study's
// init is refused at submit naming the field, not by every rank later.
TEST_F(JobSpecCheck, AnImageGivenAsWeightsIsRefusedNamingTheField) {
  ASSERT_TRUE(WriteFileAtomic(store_ / "v.tif", std::string("II*\0", 4) + std::string(60, '\0')).ok());
  ASSERT_TRUE(WriteFileAtomic(store_ / "m.pt", std::string("PK\x03\x04", 4) + std::string(60, '\0')).ok());
  const std::string finetune = "kind: finetune\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\n"
                               "finetune: {iters: 1, global_batch: 2, init: ";
  for (const auto& [yaml, field] : std::vector<std::pair<std::string, std::string>>{
           {finetune + "v.tif}\n", "finetune.init: " + (store_ / "v.tif").string() + " is not a weights file (a TIFF image)"},
           {"kind: infer\ninfer: {weights: v.tif, inputs: [a.tif]}\n", "infer.weights: "},
           {"kind: evaluate\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, test_dataset: em}\n"
            "evaluate: {checkpoint: v.tif}\n", "evaluate.checkpoint: "}}) {
    v1::JobSpec spec = Spec(yaml);
    const absl::Status s = ValidateJobSpec(&spec, store_, {});
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << yaml << s;
    EXPECT_THAT(s.message(), HasSubstr(field));
    EXPECT_THAT(s.message(), HasSubstr("is not a weights file"));
  }
  v1::JobSpec zip = Spec(finetune + "m.pt}\n");
  EXPECT_TRUE(ValidateJobSpec(&zip, store_, {}).ok());
  v1::JobSpec study = Spec("kind: study\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
                           "data: {dataset: em, test_dataset: em}\nfinetune: {iters: 2, global_batch: 2}\n"
                           "study:\n  inits: [random, v.tif]\n  seed_count: 1\n  eval_at: [2]\n");
  ASSERT_TRUE(ValidateJobSpec(&study, store_, {}).ok());  // the study's own fields
  const absl::Status children = StudyChildSpecs(study, "study", store_, {}).status();
  EXPECT_TRUE(absl::IsInvalidArgument(children)) << children;
  EXPECT_THAT(children.message(), HasSubstr("finetune.init: "));
  EXPECT_THAT(children.message(), HasSubstr("is not a weights file (a TIFF image)"));
}

TEST(JobQuery, FiltersMatchEveryTermAndBadTermsAreNamed) {
  v1::Job job;
  job.set_state(v1::RUNNING);
  job.set_user("ana");
  job.mutable_spec()->set_kind(v1::FINETUNE);
  job.mutable_spec()->set_name("uro");
  (*job.mutable_spec()->mutable_labels())["study"] = "s1";
  struct Case {
    const char* filter;
    bool matches;
  };
  for (const Case& c : std::vector<Case>{{"", true},
                                         {"state=RUNNING", true},
                                         {"state=RUNNING,kind=FINETUNE user=ana", true},
                                         {"name=uro label.study=s1", true},
                                         {"state=QUEUED", false},
                                         {"user=bob", false},
                                         {"label.study=s2", false},
                                         {"label.other=s1", false}}) {
    absl::StatusOr<JobFilter> f = ParseJobFilter(c.filter);
    ASSERT_TRUE(f.ok()) << c.filter << ": " << f.status();
    EXPECT_EQ(f->Matches(job), c.matches) << c.filter;
  }
  for (const auto& [filter, expected] : std::vector<std::pair<std::string, std::string>>{
           {"state", "'state' is not key=value"},
           {"state=SLEEPING", "unknown state 'SLEEPING'"},
           {"kind=TRAIN", "unknown kind 'TRAIN'"},
           {"colour=red", "unknown key 'colour'"},
           {std::string(5000, 'x'), "characters; the limit is"}}) {
    EXPECT_THAT(ParseJobFilter(filter).status().message(), HasSubstr(expected)) << filter.substr(0, 20);
  }
}

TEST(JobQuery, PageTokensRoundTripAndForeignOnesAreRefused) {
  EXPECT_EQ(*ParsePageToken(""), INT64_MAX);
  EXPECT_EQ(*ParsePageToken(PageToken(42)), 42);
  for (const char* bad : {"s", "x42", "s-1", "s0", "s12abc"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ParsePageToken(bad).status())) << bad;
  }
}

}  // namespace
}  // namespace retina::coordinator
