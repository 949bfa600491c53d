// metrics.csv / events.jsonl as a resumed run leaves them, and the progress
// line's rate after a resume.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "common/cli.h"
#include "common/file_util.h"
#include "common/metrics_csv.h"
#include "common/progress.h"
#include "common/records.h"

namespace retina {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path TempDir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

TEST(MetricsCsv, ColumnsAreReadByNameAndAResumeTruncatesToTheCheckpoint) {
  const fs::path dir = TempDir("metrics-csv");
  // An old file (no time column, other order is fine) with a killed attempt's steps 4, 5 re-logged.
  ASSERT_TRUE(WriteFileAtomic(dir / "metrics.csv",
                              "epoch,step,loss,lr,images_per_s,data_wait_s,allreduce_exposed_s,val_iou\n"
                              "0,1,0.9,0.1,10,0,0,\n0,2,0.8,0.1,10,0,0,0.5\n0,3,0.7,0.1,10,0,0,\n"
                              "0,4,0.6,0.1,10,0,0,\n0,5,0.5,0.1,10,0,0,\n0,4,0.61,0.1,10,0,0,\n")
                  .ok());
  std::vector<MetricsRow> rows = ParseMetricsCsv(*ReadFile(dir / "metrics.csv"));
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[1].step, 2);
  EXPECT_DOUBLE_EQ(*rows[1].val_iou, 0.5);
  EXPECT_FALSE(rows[0].val_iou.has_value());
  EXPECT_DOUBLE_EQ(rows[3].loss, 0.61);  // the last row of a step wins
  ASSERT_TRUE(TruncateMetricsCsv(dir / "metrics.csv", 3).ok());
  const std::string text = *ReadFile(dir / "metrics.csv");
  EXPECT_EQ(text.substr(0, text.find('\n')), kMetricsCsvHeader);
  rows = ParseMetricsCsv(text);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows.back().step, 3);
  MetricsRow r;
  r.step = 4;
  r.time = 1764633600.5;
  const std::vector<MetricsRow> back = ParseMetricsCsv(std::string(kMetricsCsvHeader) + "\n" + FormatMetricsRow(r));
  ASSERT_EQ(back.size(), 1u);
  EXPECT_DOUBLE_EQ(*back[0].time, 1764633600.5);
  EXPECT_TRUE(TruncateMetricsCsv(dir / "absent.csv", 3).ok());
  fs::remove_all(dir);
}

TEST(EventLog, AResumeDropsTheStepAndEvalEventsPastTheCheckpoint) {
  const fs::path dir = TempDir("events");
  ASSERT_TRUE(WriteFileAtomic(dir / "events.jsonl",
                              "{\"event\":\"start\",\"step\":0}\n{\"event\":\"step\",\"step\":1}\n"
                              "{\"event\":\"checkpoint\",\"step\":2}\n{\"event\":\"step\",\"step\":2}\n"
                              "{\"event\":\"eval\",\"step\":3,\"iou\":0.5}\n{\"event\":\"step\",\"step\":3}\nnot json\n")
                  .ok());
  ASSERT_TRUE(TruncateEventLog(dir / "events.jsonl", 2).ok());
  const std::string text = *ReadFile(dir / "events.jsonl");
  EXPECT_THAT(text, HasSubstr("\"checkpoint\",\"step\":2"));
  EXPECT_THAT(text, HasSubstr("\"step\",\"step\":2"));
  EXPECT_EQ(text.find("\"step\":3"), std::string::npos) << text;
  EXPECT_THAT(text, HasSubstr("not json"));  // what it cannot read, it keeps
  fs::remove_all(dir);
}

TEST(Progress, RateAndEtaCountOnlyTheWorkOfThisProcess) {
  // Resumed at step 100 of 200; 10 steps in 5 s: 2 steps/s, 90 left -> 45 s.
  const std::string line = FormatProgressLine("pretrain j", 110, 100, 200, 5.0, "steps", "loss 0.4");
  EXPECT_THAT(line, HasSubstr("110/200 steps (55.0%)"));
  EXPECT_THAT(line, HasSubstr("2 steps/s"));
  EXPECT_THAT(line, HasSubstr("ETA 45s"));
  EXPECT_THAT(line, HasSubstr("loss 0.4"));
  EXPECT_THAT(FormatProgressLine("x", 100, 100, 200, 0.0, "steps", ""), HasSubstr("ETA ?"));
  EXPECT_THAT(FormatProgressLine("x", 200, 0, 200, 10.0, "steps", ""), HasSubstr("ETA 0s"));
}

TEST(Cli, StoreComesFromTheFlagThenRetinaStoreThenTheDefault) {
  auto store_of = [](std::vector<std::string> args) {
    Cli cli("prog", "");
    std::string store = ".";
    AddStoreOption(&cli.app(), &store);
    cli.Root([] { return absl::OkStatus(); });
    EXPECT_EQ(cli.Run(args), 0);
    return store;
  };
  ::unsetenv("RETINA_STORE");
  EXPECT_EQ(store_of({}), ".");
  ::setenv("RETINA_STORE", "/lustre/me/retina", 1);
  EXPECT_EQ(store_of({}), "/lustre/me/retina");
  EXPECT_EQ(store_of({"--store", "/scratch/s"}), "/scratch/s");
  EXPECT_EQ(store_of({"--store=/scratch/t"}), "/scratch/t");
  ::unsetenv("RETINA_STORE");
}

// --- The rank <-> service records (common/records.h) -------------------------

TEST(Records, EveryEventRoundTripsWithItsVersionAndTime) {
  EvalEvent eval;
  eval.step = 40;
  eval.iou = 0.5;
  eval.iou_per_class = {{1, 0.25}, {2, 0.75}};
  StartEvent start;
  start.total_steps = 100;
  start.world_size = 4;
  start.device = "cpu fp32";
  start.backend = "gloo";
  const std::vector<Event> events = {start,
                                     StepEvent{7, 1, 0.125, 0.003, 512.5, 0.01, 0.02},
                                     eval,
                                     CheckpointEvent{40, "/s/jobs/a/checkpoints/step-00000040", {"step-00000010"}},
                                     ResumedEvent{40},
                                     PreemptedEvent{41},
                                     DoneEvent{100},
                                     DoneEvent{},
                                     PredictEvent{3, 10, 2, 3000, 10000, 1234.5}};
  for (const Event& e : events) {
    const std::string line = EncodeEvent(e, 1.5e9);
    EXPECT_THAT(line, HasSubstr("\"v\":1"));
    EXPECT_THAT(line, HasSubstr("\"time\":1500000000"));
    absl::StatusOr<Event> back = DecodeEvent(line);
    ASSERT_TRUE(back.ok()) << back.status() << " " << line;
    EXPECT_EQ(back->index(), e.index());
    EXPECT_EQ(EncodeEvent(*back, 1.5e9), line);  // every field survives
    EXPECT_EQ(EventStep(*back), EventStep(e));
  }
}

TEST(Records, EventReadersNameTheKeyAcceptOlderLinesAndSetAsideNewerOnes) {
  // Written before versions (and before eval events keyed classes by index).
  absl::StatusOr<Event> old = DecodeEvent(R"({"event": "eval", "step": 10, "iou": 0.5, "iou_per_class": [0.4, 0.6]})");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(std::get<EvalEvent>(*old).iou_per_class, (std::map<int, double>{{1, 0.4}, {2, 0.6}}));
  const absl::StatusOr<Event> bad = DecodeEvent(R"({"event": "step", "step": "many"})", "events_json[3]");
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_THAT(bad.status().message(), HasSubstr("events_json[3].step: not an integer"));
  EXPECT_THAT(DecodeEvent(R"({"event": "checkpoint"})").status().message(), HasSubstr("event.step: missing"));
  EXPECT_THAT(DecodeEvent("[1, 2]").status().message(), HasSubstr("not a JSON object"));
  EXPECT_TRUE(absl::IsUnimplemented(DecodeEvent(R"({"event": "warp", "step": 1})").status()));
  EXPECT_TRUE(absl::IsUnimplemented(DecodeEvent(R"({"event": "step", "step": 1, "v": 2})").status()));
}

TEST(Records, CheckpointStateRoundTripsAndAnOlderStateStillResumes) {
  CheckpointState s;
  s.step = 300;
  s.epoch = 2;
  s.sampler_offset = 64;
  s.seed = 1234567890123ull;
  s.world_size = 8;
  s.kind = "finetune";
  s.config_sha256 = "ab12";
  s.model = "r50-vit-b16";
  s.image_size = 224;
  s.classes = 3;
  s.mean = 0.5;
  s.std = 0.125;
  absl::StatusOr<CheckpointState> back = DecodeCheckpointState(EncodeCheckpointState(s), "state.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EncodeCheckpointState(*back), EncodeCheckpointState(s));
  // A state.json of the first releases: no version, no model or normalisation.
  back = DecodeCheckpointState(R"({"step": 5, "epoch": 0, "sampler_offset": 40, "kind": "pretrain"})", "old/state.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->step, 5);
  EXPECT_FALSE(back->mean.has_value());
  EXPECT_TRUE(back->model.empty());
  const absl::Status damaged = DecodeCheckpointState(R"({"step": 5, "epoch": 0})", "ck/state.json").status();
  EXPECT_TRUE(absl::IsDataLoss(damaged)) << damaged;
  EXPECT_THAT(damaged.message(), HasSubstr("ck/state.json.sampler_offset: missing"));
  EXPECT_TRUE(absl::IsDataLoss(DecodeCheckpointState("{truncated", "ck/state.json").status()));
  EXPECT_TRUE(absl::IsUnimplemented(
      DecodeCheckpointState(R"({"v": 9, "step": 5, "epoch": 0, "sampler_offset": 0, "kind": "pretrain"})", "x").status()));
}

TEST(Records, EvalReportRoundTripsWithMissingDistancesAndNamesABadItem) {
  EvalReport r;
  r.checkpoint = "jobs/f/checkpoints/LATEST";
  r.mode = "orthoplane";
  r.overlap = 0.7;
  r.mean_iou = 0.6;
  r.mean_iou_per_class = {{1, 0.5}, {2, 0.7}};
  r.items = {{"vol0.tif", {{1, 0.5, 0.66, 0.7, 0.62, 3.5, std::nullopt}, {2, 0.7, 0.82, 0.8, 0.84, std::nullopt, 1.25}}}};
  absl::StatusOr<EvalReport> back = DecodeEvalReport(EncodeEvalReport(r), "eval.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EncodeEvalReport(*back), EncodeEvalReport(r));
  EXPECT_FALSE(back->items[0].classes[1].mfd.has_value());
  EXPECT_EQ(back->items[0].classes[1].cremi_score, 1.25);
  const absl::Status bad =
      DecodeEvalReport(R"({"mean_iou": 0.5, "items": [{"source": "a", "classes": [{"class": 1}]}]})", "jobs/e/eval.json")
          .status();
  EXPECT_THAT(bad.message(), HasSubstr("jobs/e/eval.json.items[0].classes[0].iou: missing"));
}

TEST(Records, ExitStatusesAreDescribedOneWay) {
  EXPECT_EQ(DescribeExit(0), "ok");
  EXPECT_THAT(DescribeExit(kExitPreempted), HasSubstr("preempted"));
  EXPECT_EQ(DescribeExit(128 + 9), "killed by signal 9");
  EXPECT_EQ(DescribeExit(1), "failed (exit 1)");
  EXPECT_STREQ(ExitResult(75), "preempted");
  EXPECT_STREQ(ExitResult(137), "killed");
  EXPECT_STREQ(ExitResult(2), "failed");
}

}  // namespace
}  // namespace retina
