// common/study: the grid of a study file, its children's job files, and the
// aggregate of their scores.
#include "common/study/study.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/job_config.h"

namespace retina {
namespace {

using ::testing::HasSubstr;

constexpr const char* kStudy = R"(kind: study
seed: 10
model: {name: tiny, image_size: 64, classes: 3}
data: {dataset: mito, test_dataset: mito-test}
finetune: {iters: 6, global_batch: 2, class_weights: [0.1, 1, 1]}
evaluate: {mode: stack, overlap: 0.25}
study:
  inits: [random, "jobs/pre: 1/checkpoints/LATEST"]
  init_names: [random, pretrained]
  seed_count: 3
  eval_at: [2, 4, 6]
  set: ["checkpoint.keep_last=1"]
)";

TEST(StudyPlanTest, GridIsArmsTimesSeedsAndChildrenAreFinetunes) {
  absl::StatusOr<StudyPlan> plan = PlanStudy(kStudy, "study.yaml");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->children.size(), 6u);
  EXPECT_EQ(plan->seeds, (std::vector<int64_t>{10, 11, 12}));  // seed_count counts from `seed`
  EXPECT_EQ(plan->arms[1].name, "pretrained");
  EXPECT_EQ(plan->children[4].arm, 1);
  EXPECT_EQ(plan->children[4].seed, 11);
  absl::StatusOr<std::string> yaml = StudyChildYaml(kStudy, *plan, plan->children[4], "study.yaml");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  absl::StatusOr<JobConfig> child = ParseJobConfig(*yaml, "child");
  ASSERT_TRUE(child.ok()) << child.status() << "\n" << *yaml;
  EXPECT_EQ(child->kind, JobKind::kFinetune);
  EXPECT_EQ(child->seed, 11);
  EXPECT_EQ(child->finetune.init, "jobs/pre: 1/checkpoints/LATEST");  // quoted through the YAML
  EXPECT_EQ(child->finetune.eval_at, (std::vector<double>{2, 4, 6}));
  EXPECT_EQ(child->checkpoint.keep_last, 1);  // study.set
  EXPECT_EQ(child->data.test_dataset, "mito-test");
  EXPECT_EQ(child->evaluate.mode, PredictionMode::kStack);
}

TEST(StudyPlanTest, DatasetsAxisUsesTheirTestSplits) {
  std::string text = kStudy;
  text.replace(text.find("  set:"), 0, "  datasets: [a, b]\n");
  absl::StatusOr<StudyPlan> plan = PlanStudy(text, "s");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->children.size(), 12u);
  EXPECT_EQ(plan->children[7].dataset, "b");
  absl::StatusOr<JobConfig> child = ParseJobConfig(*StudyChildYaml(text, *plan, plan->children[7], "s"), "child");
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(child->data.dataset, "b");
  EXPECT_EQ(child->data.test_dataset, "b-test");
}

TEST(StudyPlanTest, BadStudiesNameTheKey) {
  auto error = [](const std::string& from, const std::string& to) {
    std::string text = kStudy;
    text.replace(text.find(from), from.size(), to);
    absl::StatusOr<StudyPlan> plan = PlanStudy(text, "study.yaml");
    return plan.ok() ? std::string("OK") : std::string(plan.status().message());
  };
  EXPECT_THAT(error("seed_count: 3", "seed_count: 3\n  seeds: [1]"), HasSubstr("study.seeds"));
  EXPECT_THAT(error("eval_at: [2, 4, 6]", "eval_at: [2, 8]"), HasSubstr("past finetune.iters"));
  EXPECT_THAT(error("eval_at: [2, 4, 6]", "eval_at: [4, 2]"), HasSubstr("must be increasing"));
  EXPECT_THAT(error("eval_at: [2, 4, 6]", "eval_at: [2.5]"), HasSubstr("whole numbers"));
  EXPECT_THAT(error("global_batch: 2,", "global_batch: 2, init: random,"), HasSubstr("finetune.init"));
  EXPECT_THAT(error("init_names: [random, pretrained]", "init_names: [x]"), HasSubstr("study.init_names"));
  EXPECT_THAT(error("init_names: [random, pretrained]", "init_names: [x, x]"), HasSubstr("appears twice"));
  EXPECT_THAT(error("test_dataset: mito-test", "val_dataset: mito"), HasSubstr("data.test_dataset"));
  EXPECT_THAT(error("checkpoint.keep_last=1", "checkpoint.keep_lost=1"), HasSubstr("keep_lost"));
  // The grid's own keys are not the study's `set` to change.
  EXPECT_THAT(error("checkpoint.keep_last=1", "seed=7"), HasSubstr("set by the study's grid"));
  EXPECT_THAT(error("checkpoint.keep_last=1", "finetune.eval_at=[2]"), HasSubstr("set by the study's grid"));
  EXPECT_THAT(error("  set:", "  datasets: [a, a]\n  set:"), HasSubstr("appears twice"));
  EXPECT_THAT(error("seed_count: 3", "seed_count: 300"), HasSubstr("600 children; a study has at most 512"));
  // A plain fine-tune with eval_at needs its test split.
  absl::StatusOr<JobConfig> ft =
      ParseJobConfig("kind: finetune\ndata: {dataset: x}\nfinetune: {iters: 5, eval_at: [5]}\n", "ft.yaml");
  EXPECT_THAT(std::string(ft.status().message()), HasSubstr("data.test_dataset"));
}

EvalReport Report(std::map<int, double> iou_by_class) {
  EvalReport r;
  EvalItem item;
  for (const auto& [cls, iou] : iou_by_class) {
    ClassScore c;
    c.cls = cls;
    c.iou = iou;
    c.f1 = 2 * iou / (1 + iou);
    c.precision = c.recall = iou;
    if (cls == 1) c.mfd = 10 * (1 - iou);
    item.classes.push_back(c);
  }
  r.items.push_back(item);
  return r;
}

TEST(StudyAggregateTest, CellsTestsAndMissingRuns) {
  StudyPlan plan = *PlanStudy(kStudy, "s");
  std::vector<StudyChildResult> results;
  for (const StudyChild& child : plan.children) {
    StudyChildResult r;
    r.child = child;
    r.job_id = "job-" + std::to_string(child.index);
    r.state = "SUCCEEDED";
    for (int64_t step : plan.eval_at) {
      // Arm 1 is better; each seed a little different; class 2 a fixed offset.
      const double iou = 0.3 + 0.2 * child.arm + 0.01 * (child.seed - 10) + 0.02 * step;
      r.evals[step] = Report({{1, iou}, {2, iou - 0.1}});
    }
    results.push_back(std::move(r));
  }
  results[5].state = "FAILED";  // arm 1, seed 12
  results[5].message = "attempt 3 failed: exit 1";
  results[5].evals.clear();
  const StudyReport report = AggregateStudy("job-000001", plan, results);
  EXPECT_TRUE(report.complete);
  EXPECT_EQ(report.children_succeeded, 5);
  EXPECT_EQ(report.classes, (std::vector<std::string>{"mean", "1", "2"}));
  {  // class keys in numeric order: 2 before 10
    std::vector<StudyChildResult> ten = results;
    ten[0].evals[6] = Report({{2, 0.5}, {10, 0.4}});
    EXPECT_EQ(AggregateStudy("s", plan, ten).classes, (std::vector<std::string>{"mean", "1", "2", "10"}));
  }
  const StudyCell* random = FindStudyCell(report, "", 0, 6);
  const StudyCell* pre = FindStudyCell(report, "", 1, 6);
  ASSERT_NE(random, nullptr);
  ASSERT_NE(pre, nullptr);
  const Summary& r1 = random->metrics.at("iou").at("1").summary;
  EXPECT_EQ(r1.n, 3);
  EXPECT_NEAR(r1.mean, 0.3 + 0.01 + 0.12, 1e-12);
  EXPECT_NEAR(r1.std, 0.01, 1e-12);
  EXPECT_NEAR(random->metrics.at("iou").at("mean").summary.mean, 0.3 + 0.01 + 0.12 - 0.05, 1e-12);
  const StudyValues& p = pre->metrics.at("iou").at("mean");
  EXPECT_EQ(p.summary.n, 2);  // the failed seed is missing, and said so
  EXPECT_FALSE(p.per_seed[2].has_value());
  ASSERT_EQ(pre->missing.size(), 1u);
  EXPECT_THAT(pre->missing[0], HasSubstr("seed 12: job-5 FAILED (attempt 3 failed: exit 1)"));
  // MFD only where it exists (class 1).
  EXPECT_FALSE(pre->metrics.at("mfd").count("2"));
  // The tests: every metric and class at the last step, arm 0 vs arm 1.
  const StudyTest* iou = nullptr;
  for (const StudyTest& t : report.tests) {
    if (t.metric == "iou" && t.cls == "mean") iou = &t;
    EXPECT_EQ(t.step, 6);
  }
  ASSERT_NE(iou, nullptr);
  EXPECT_EQ(iou->result.n1, 3);
  EXPECT_EQ(iou->result.n2, 2);
  EXPECT_EQ(iou->result.u1, 0);  // every random run below every pre-trained one
  EXPECT_NEAR(iou->result.p, 2.0 / 10, 1e-15);  // 2 of C(5,2) splits as extreme
  EXPECT_EQ(iou->result.rank_biserial, -1);

  // The record round-trips; the CSV has a row per cell x metric x class.
  absl::StatusOr<StudyReport> back = DecodeStudyReport(EncodeStudyReport(report), "study.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EncodeStudyReport(*back), EncodeStudyReport(report));
  const std::string csv = StudyCsv(report);
  EXPECT_THAT(csv, HasSubstr("dataset,init,step,metric,class,n,expected,mean,std,median,min,max,seed_10,seed_11,seed_12\n"));
  EXPECT_THAT(csv, HasSubstr(",pretrained,6,iou,mean,2,3,"));
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 6 * (3 * 4 + 2));  // 4 metrics x 3 keys, mfd x 2
  EXPECT_EQ(DecodeStudyReport("{\"v\": 1}", "study.json").status().code(), absl::StatusCode::kDataLoss);
}

TEST(StudyAggregateTest, PartialWhileRunning) {
  StudyPlan plan = *PlanStudy(kStudy, "s");
  StudyChildResult done;
  done.child = plan.children[0];
  done.job_id = "job-7";
  done.state = "SUCCEEDED";
  done.evals[2] = Report({{1, 0.5}, {2, 0.4}});
  StudyChildResult running;
  running.child = plan.children[1];
  running.job_id = "job-8";
  running.state = "RUNNING";
  const StudyReport report = AggregateStudy("s", plan, {done, running});
  EXPECT_FALSE(report.complete);
  EXPECT_EQ(report.children_ended, 1);
  EXPECT_EQ(report.children[2].state, "NOT_CREATED");
  const StudyCell* c2 = FindStudyCell(report, "", 0, 2);
  EXPECT_EQ(c2->metrics.at("iou").at("mean").summary.n, 1);
  EXPECT_THAT(c2->missing, ::testing::Contains(HasSubstr("seed 11: job-8 RUNNING")));
  // Scored at step 2 but not yet at 4: missing there, with the reason.
  EXPECT_THAT(FindStudyCell(report, "", 0, 4)->missing[0], HasSubstr("without a score at this step"));
}

}  // namespace
}  // namespace retina
