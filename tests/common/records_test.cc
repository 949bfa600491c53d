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
                              "{\"event\":\"eval\",\"step\":3}\n{\"event\":\"step\",\"step\":3}\nnot json\n")
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
  CliFlags f;
  ::unsetenv("RETINA_STORE");
  EXPECT_EQ(f.Store(), ".");
  EXPECT_FALSE(f.HasStore());
  ::setenv("RETINA_STORE", "/lustre/me/retina", 1);
  EXPECT_EQ(f.Store(), "/lustre/me/retina");
  EXPECT_TRUE(f.HasStore());
  f.values["--store"] = "/scratch/s";
  EXPECT_EQ(f.Store(), "/scratch/s");
  ::unsetenv("RETINA_STORE");
}

}  // namespace
}  // namespace retina
