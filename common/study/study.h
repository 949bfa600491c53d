// Studies (docs/evaluation.md "Studies"): the RETINA paper's experiments as
// one job. A `kind: study` file is a fine-tune file plus a `study` section
// that spans a grid datasets x inits x seeds; every cell of the grid is a
// child fine-tune job scored at study.eval_at on its held-out test split
// (finetune.eval_at, jobs/<child>/evals/step-N.json). The coordinator
// expands the grid (PlanStudy, StudyChildYaml), runs the children as
// ordinary jobs and aggregates their scores (AggregateStudy) into
// jobs/<study>/study.json (EncodeStudyReport) and study.csv (StudyCsv).
//
// Aggregation counts the children that SUCCEEDED; every other child is
// listed in its cells' `missing` with its state and message (n is shown per
// cell, nothing is dropped silently). Per pair of inits, at the last eval
// step, each metric and class gets a two-sided Mann-Whitney U test
// (common/study_stats.h).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/records.h"
#include "common/study/study_stats.h"

namespace retina {

struct StudyArm {
  std::string init;      // finetune.init of the arm's children
  std::string name;      // how tables and plots call it
  std::string strategy;  // a loop study's arm: its loop.strategy ("" otherwise)
};
struct StudyChild {
  int index = 0;         // position in the grid: dataset-major, then arm, then seed
  std::string dataset;   // the child's data.dataset ("" = the study file's)
  int arm = 0;           // index into StudyPlan::arms
  int64_t seed = 0;
};
struct StudyPlan {
  std::vector<std::string> datasets;  // the grid's datasets; one "" when the file names one
  std::vector<StudyArm> arms;
  std::vector<int64_t> seeds;
  std::vector<int64_t> eval_at;  // a loop study: the blocks labelled at each round
  std::vector<StudyChild> children;
  bool loop = false;  // a loop study (study.strategies): kind loop children
};

// The most children one study may have (datasets x inits x seeds): the grid
// is expanded and every child validated at submission.
inline constexpr int kStudyMaxChildren = 512;
// Keys a study's `set` may not override: the grid's own (each child's seed,
// init, eval_at and, with a datasets axis, its data.dataset/test_dataset).
bool StudyGridKey(const std::string& key, bool datasets_axis);

// Parses and validates a kind: study job file (`source` names it in errors)
// and lays out its grid.
absl::StatusOr<StudyPlan> PlanStudy(const std::string& yaml_text, const std::string& source);
// The job YAML of one child: the study file without its `study` section,
// kind finetune, the child's seed, init, eval_at, dataset (and <dataset>-test)
// and the study's `set` overrides; validated as a fine-tune job (errors name
// the child). A loop study's child is kind loop with its arm's loop.strategy
// (scored by the loop itself after every round).
absl::StatusOr<std::string> StudyChildYaml(const std::string& yaml_text, const StudyPlan& plan,
                                           const StudyChild& child, const std::string& source);

// --- aggregation ---------------------------------------------------------------
// The metrics a study aggregates, in table order; mfd is better lower.
inline constexpr const char* kStudyMetrics[] = {"iou", "f1", "precision", "recall", "mfd"};
bool StudyMetricLowerIsBetter(const std::string& metric);

struct StudyChildResult {
  StudyChild child;
  std::string job_id;   // "" when the child was never created
  std::string state;    // the job state's name (QUEUED ... CANCELLED)
  std::string message;
  std::map<int64_t, EvalReport> evals;  // eval step -> the child's score there
};

struct StudyValues {
  std::vector<std::optional<double>> per_seed;  // aligned with StudyPlan::seeds; absent = missing
  Summary summary;                              // over the present ones
};
struct StudyCell {
  std::string dataset;
  int arm = 0;
  int64_t step = 0;
  int expected = 0;                   // seeds in the cell
  std::vector<std::string> missing;   // "seed 3: job-000012 FAILED (...)", one per absent seed
  // metric -> class ("mean" over the scored classes, or the class index) -> values
  std::map<std::string, std::map<std::string, StudyValues>> metrics;
};
struct StudyTest {
  std::string dataset, metric, cls;  // cls: "mean" or a class index
  int a = 0, b = 0;                  // arms; the test is a vs b (rank_biserial > 0: a larger)
  int64_t step = 0;
  MannWhitney result;
};
struct StudyChildStatus {
  int index = 0;
  std::string job_id, state, message, dataset;
  int arm = 0;
  int64_t seed = 0;
  std::vector<int64_t> steps;  // the eval steps it has
};
struct StudyReport {
  std::string study;
  std::string state;      // the study job's state when written (RUNNING, SUCCEEDED, FAILED, CANCELLED)
  bool complete = false;  // every child has ended
  int children_total = 0, children_ended = 0, children_succeeded = 0;
  std::vector<std::string> datasets;
  std::vector<StudyArm> arms;
  std::vector<int64_t> seeds, eval_at;
  std::vector<std::string> classes;  // class keys seen, "mean" first
  std::vector<StudyChildStatus> children;
  std::vector<StudyCell> cells;      // datasets x arms x eval_at
  std::vector<StudyTest> tests;      // at the last eval step (a loop study: at every one)
  std::string axis = "iteration";    // what eval_at counts: "iteration", or "blocks labelled" (a loop study)
};

// Terminal job states by name.
bool StudyStateEnded(const std::string& state);
StudyReport AggregateStudy(const std::string& study_id, const StudyPlan& plan,
                           const std::vector<StudyChildResult>& results);
std::string EncodeStudyReport(const StudyReport& r);
absl::StatusOr<StudyReport> DecodeStudyReport(const std::string& text, const std::string& where);
// One row per dataset x init x step x metric x class: n, expected, mean, std,
// median, min, max and the per-seed values ("" where missing).
std::string StudyCsv(const StudyReport& r);
// The cell of (dataset, arm, step), or null.
const StudyCell* FindStudyCell(const StudyReport& r, const std::string& dataset, int arm, int64_t step);

}  // namespace retina
