#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/cli.h"
#include "common/file_util.h"
#include "common/path_policy.h"
#include "common/store_layout.h"
#include "common/thread_plan.h"

namespace retina {
namespace {

TEST(Cli, HelpPrintsUsageToStdoutAndSucceeds) {
  EXPECT_TRUE(AsksForHelp({"--help"}));
  EXPECT_TRUE(AsksForHelp({"run", "-h"}));
  EXPECT_TRUE(AsksForHelp({"help"}));
  EXPECT_FALSE(AsksForHelp({"run", "--config", "help"}));
  EXPECT_FALSE(AsksForHelp({}));
  int calls = 0;
  ::testing::internal::CaptureStdout();
  const int rc = RunCommand("prog", "usage: prog\n", {"--x", "1", "--help"}, [&](const std::vector<std::string>&) {
    ++calls;
    return absl::OkStatus();
  });
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "usage: prog\n");
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(RunCommand("prog", "usage\n", {"--x"}, [](const std::vector<std::string>&) {
              return absl::InvalidArgumentError("--x: needs a value");
            }), 2);
}

TEST(ThreadPlan, Precedence) {
  EXPECT_EQ(PlanThreads(16, 4, nullptr).threads, 4);
  EXPECT_EQ(PlanThreads(2, 4, nullptr).threads, 1);   // never 0
  EXPECT_EQ(PlanThreads(16, 0, nullptr).threads, 16);  // 0 local ranks treated as 1
  EXPECT_EQ(PlanThreads(16, 4, "3").threads, 3);       // the user's OMP_NUM_THREADS wins
  EXPECT_EQ(PlanThreads(16, 4, "zero").threads, 4);    // garbage is ignored
  EXPECT_EQ(PlanThreads(16, 4, "0").threads, 4);
  EXPECT_GE(AvailableCores(), 1);
}

TEST(StoreLayout, PathsAndNames) {
  StoreLayout s("/store");
  EXPECT_EQ(s.CheckpointsDir("job-1").string(), "/store/jobs/job-1/checkpoints");
  EXPECT_EQ(s.RankLogPath("job-1", 2, 5).string(), "/store/jobs/job-1/logs/attempt-2/rank-5.log");
  EXPECT_EQ(s.DatasetDir("cem500k").string(), "/store/datasets/cem500k");
  EXPECT_EQ(s.EventsPath("j").string(), "/store/jobs/j/events.jsonl");
  EXPECT_TRUE(StoreLayout::ValidateName("job_2024-01.a", "job id").ok());
  for (const char* bad : {"", "..", ".hidden", "a/b", "a b", "x\n"}) {
    absl::Status st = StoreLayout::ValidateName(bad, "job id");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("job id"));
  }
}

TEST(FileUtil, Sha256KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Service jobs read only under the store and the allowed roots, whatever the
// spelling: absolute, "..", or a symlink in the store pointing out.
TEST(PathPolicy, ConfinesDatasetsAndWeightsToTheStoreAndAllowedRoots) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / UniqueTempName("policy-");
  const fs::path store = dir / "store", shared = dir / "shared", other = dir / "other";
  for (const fs::path& d : {store / "datasets" / "em", store / "jobs" / "job-000001" / "checkpoints", shared / "cem",
                            other}) {
    ASSERT_TRUE(CreateDirectories(d).ok());
  }
  fs::create_directory_symlink(other, store / "datasets" / "linked");
  const PathPolicy policy(store, {shared});
  auto check = [&](const std::string& field, const fs::path& p) { return policy.Check(field, p); };
  EXPECT_TRUE(check("data.dataset", policy.DatasetPath("em")).ok());
  EXPECT_TRUE(check("data.dataset", policy.DatasetPath((shared / "cem").string())).ok());
  EXPECT_TRUE(check("finetune.init", policy.WeightsPath("jobs/job-000001/checkpoints/LATEST")).ok());
  EXPECT_EQ(policy.WeightsPath("jobs/x"), store / "jobs/x") << "relative paths are taken from the store";
  for (const auto& [field, value] : std::vector<std::pair<std::string, fs::path>>{
           {"finetune.init", "/etc/shadow"},
           {"finetune.init", policy.WeightsPath("../../../etc/passwd")},
           {"data.dataset", policy.DatasetPath("../other/x")},
           {"data.dataset", policy.DatasetPath("linked")},
           {"evaluate.checkpoint", (shared / ".." / "other").string()},
           {"data.dataset", dir / "store-sibling"}}) {
    const absl::Status s = check(field, value);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << value;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(field + ": ")) << value;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("outside the store")) << value;
  }
  JobConfig config;
  config.kind = "finetune";
  config.data.dataset = "em";
  config.finetune.init = "/etc/shadow";
  EXPECT_THAT(std::string(policy.CheckConfig(config).message()), ::testing::HasSubstr("finetune.init: /etc/shadow"));
  config.finetune.init = "random";
  EXPECT_TRUE(policy.CheckConfig(config).ok());
  fs::remove_all(dir);
}

TEST(FileUtil, AtomicWriteReplacesAndReadErrorsNamePath) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / UniqueTempName("fileutil-");
  ASSERT_TRUE(CreateDirectories(dir / "a" / "b").ok());
  const auto path = dir / "a" / "b" / "f.txt";
  ASSERT_TRUE(WriteFileAtomic(path, "one").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "two").ok());
  EXPECT_EQ(*ReadFile(path), "two");
  absl::StatusOr<FileDigest> d = Sha256File(path);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->size, 3u);
  EXPECT_EQ(d->sha256, Sha256Hex("two"));
  absl::StatusOr<std::string> missing = ReadFile(dir / "nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), ::testing::HasSubstr("nope"));
  // Only the final file remains: no temporaries.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "a" / "b")) { (void)e; ++entries; }
  EXPECT_EQ(entries, 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace retina
