#include "common/job_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace retina {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kValid[] = R"(kind: finetune
seed: 7
model:
  name: r50-vit-b16
  classes: 3
data:
  dataset: urocell
optimizer:
  lr: 0.01
finetune:
  iters: 3000
  class_weights: [0.1, 1, 1]
  foreground_crop_p: 0.8
)";

TEST(JobConfig, ValidFileLoadsWithDefaults) {
  absl::StatusOr<JobConfig> c = ParseJobConfig(kValid, "job.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, JobKind::kFinetune);
  EXPECT_EQ(c->seed, 7);
  EXPECT_EQ(c->model.classes, 3);
  EXPECT_EQ(c->model.image_size, 224);            // default
  EXPECT_DOUBLE_EQ(c->optimizer.lr, 0.01);
  EXPECT_DOUBLE_EQ(c->optimizer.momentum, 0.9);   // default
  EXPECT_DOUBLE_EQ(c->optimizer.weight_decay, 1e-4);
  EXPECT_EQ(c->finetune.iters, 3000);
  EXPECT_EQ(c->finetune.class_weights, (std::vector<double>{0.1, 1, 1}));
  EXPECT_EQ(c->data.dataset, "urocell");
  EXPECT_FALSE(c->data.mean.has_value());
}

TEST(JobConfig, ResolvedYamlRoundTrips) {
  absl::StatusOr<JobConfig> c = ParseJobConfig(kValid, "job.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string resolved = JobConfigToYaml(*c);
  EXPECT_THAT(resolved, HasSubstr("lr: 0.01\n"));
  EXPECT_THAT(resolved, HasSubstr("weight_decay: 0.0001\n"));
  EXPECT_THAT(resolved, ::testing::Not(HasSubstr("pretrain:")));
  absl::StatusOr<JobConfig> again = ParseJobConfig(resolved, "resolved.yaml");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(JobConfigToYaml(*again), JobConfigToYaml(*c));
}

absl::Status ErrorOf(const std::string& yaml) {
  absl::StatusOr<JobConfig> c = ParseJobConfig(yaml, "bad.yaml");
  EXPECT_FALSE(c.ok()) << "accepted:\n" << yaml;
  return c.status();
}

TEST(JobConfig, SyntaxErrorNamesFileAndLine) {
  absl::Status s = ErrorOf("kind: pretrain\ndata: {dataset: x\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("bad.yaml:"), HasSubstr("YAML syntax error")));
}

// yaml-cpp keeps both entries of a duplicated key and a lookup takes the first,
// so the validator and a reader could disagree: a duplicate is an error.
TEST(JobConfig, DuplicateKeysAreErrorsNamingBothLines) {
  absl::StatusOr<JobConfig> top = ParseJobConfig("kind: pretrain\nkind: finetune\ndata: {dataset: em}\n", "dup.yaml");
  ASSERT_FALSE(top.ok());
  EXPECT_THAT(std::string(top.status().message()), HasSubstr("dup.yaml:2:1: kind: duplicate key (first at line 1)"));
  absl::StatusOr<JobConfig> nested =
      ParseJobConfig("kind: finetune\ndata: {dataset: em}\nfinetune:\n  iters: 5\n  iters: 6\n", "dup.yaml");
  ASSERT_FALSE(nested.ok());
  EXPECT_THAT(std::string(nested.status().message()), HasSubstr("finetune.iters: duplicate key (first at line 4)"));
  // --set replaces a key rather than adding a second one.
  absl::StatusOr<std::string> merged = ApplyConfigOverrides("kind: pretrain\ndata: {dataset: em}\n", {"data.dataset=other"});
  ASSERT_TRUE(merged.ok());
  absl::StatusOr<JobConfig> c = ParseJobConfig(*merged, "merged");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->data.dataset, "other");
  EXPECT_FALSE(ApplyConfigOverrides("kind: pretrain\n", {"nokey"}).ok());
  EXPECT_FALSE(ApplyConfigOverrides("kind: pretrain\n", {"kind.x=1"}).ok());  // kind is not a map
}

TEST(JobConfig, WrongTypeNamesKeyAndLine) {
  absl::Status s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\noptimizer:\n  lr: fast\n");
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("bad.yaml:5:7: optimizer.lr"), HasSubstr("expected a number, got 'fast'")));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\npretrain:\n  epochs: 2.5\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("pretrain.epochs: expected an integer, got '2.5'"));
  s = ErrorOf("kind: pretrain\ndata: [1, 2]\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("data: expected a mapping"));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\ncheckpoint:\n  keep_best: maybe\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("checkpoint.keep_best: expected true or false"));
}

TEST(JobConfig, OutOfRangeNamesKeyAndBound) {
  absl::Status s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\noptimizer:\n  lr: -0.1\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("optimizer.lr: must be > 0, got -0.1"));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\nmodel:\n  image_size: 100\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.image_size: must be a multiple of 16"));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\npretrain:\n  augment:\n    hflip_p: 1.5\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("pretrain.augment.hflip_p: must be <= 1, got 1.5"));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\npretrain:\n  augment:\n    crop_scale: [0.9, 0.1]\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("pretrain.augment.crop_scale: lo must be <= hi"));
}

TEST(JobConfig, UnknownKeySuggestsClosest) {
  absl::Status s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\noptimizer:\n  lrr: 0.1\n");
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("bad.yaml:5:3: optimizer.lrr: unknown key"), HasSubstr("did you mean 'lr'")));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\nmodle:\n  name: tiny\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("modle: unknown key (did you mean 'model'?)"));
  s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\nmodel:\n  name: r50-vit-b17\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("did you mean 'r50-vit-b16'"));
}

TEST(JobConfig, MissingRequiredKey) {
  absl::Status s = ErrorOf("kind: pretrain\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("bad.yaml: data.dataset: required key missing"));
  s = ErrorOf("data:\n  dataset: x\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("kind: required key missing"));
  s = ErrorOf("");
  EXPECT_THAT(std::string(s.message()), HasSubstr("empty file"));
  s = ErrorOf("kind: evaluate\ndata:\n  dataset: x\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("evaluate.checkpoint: required for kind 'evaluate'"));
}

TEST(JobConfig, CrossFieldRules) {
  absl::Status s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\nfinetune:\n  iters: 5\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("finetune: section is for kind 'finetune'"));
  s = ErrorOf("kind: finetune\nmodel:\n  classes: 3\ndata:\n  dataset: x\nfinetune:\n  class_weights: [1, 2]\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("finetune.class_weights: has 2 weights but model.classes is 3"));
}

TEST(JobConfig, ReportsAllErrorsAtOnce) {
  absl::Status s = ErrorOf("kind: pretrain\ndata:\n  dataset: x\noptimizer:\n  lr: -1\n  momentum: 2\n");
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("optimizer.lr"), HasSubstr("optimizer.momentum")));
}

TEST(EditDistance, Basics) {
  EXPECT_EQ(EditDistance("", ""), 0);
  EXPECT_EQ(EditDistance("lr", "lrr"), 1);
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3);
}

}  // namespace
}  // namespace retina
