// The Slurm executor's pure parts (services/coordinator/slurm_commands.h):
// the sbatch command, scontrol's output, the state mapping, the commands'
// timeout. The executor itself runs on a real Slurm in
// tests/deploy/slurm_service_test.sh.
#include "services/coordinator/slurm_commands.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace retina::coordinator {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

TEST(SlurmCommands, JobNamesRoundTrip) {
  std::string id;
  int attempt = 0;
  EXPECT_EQ(SlurmJobName("job-000012", 3), "retina-job-000012-3");
  ASSERT_TRUE(ParseSlurmJobName("retina-job-000012-3", &id, &attempt));
  EXPECT_EQ(id, "job-000012");
  EXPECT_EQ(attempt, 3);
  EXPECT_FALSE(ParseSlurmJobName("someone-elses-job", &id, &attempt));
  EXPECT_FALSE(ParseSlurmJobName("retina-", &id, &attempt));
  EXPECT_FALSE(ParseSlurmJobName("retina-job-x", &id, &attempt));
}

TEST(SlurmCommands, SbatchAsksForTheGangAndPassesTheJob) {
  SlurmOptions o;
  o.script = "/opt/retina/deploy/slurm/retina-slurm.sh";
  o.trainer_dir = "/opt/retina/bin";
  o.partition = "cpu";
  o.time_limit = "1:00:00";
  o.extra_args = {"--constraint=a100"};
  SlurmAttempt a;
  a.job_id = "job-000007";
  a.job_uid = "u1";
  a.attempt = 2;
  a.world_size = 8;
  a.slots_per_rank = 1;
  a.gpu = true;
  a.config = "/store/jobs/job-000007/job.yaml";
  a.store = "/store";
  a.allowed_roots = {"/data"};
  a.labels = {{"slurm.partition", "gpu"}, {"slurm.qos", "high"}};
  const SlurmCommand c = SbatchCommand(o, a);
  EXPECT_EQ(c.argv[0], "sbatch");
  for (const char* want : {"--parsable", "--job-name=retina-job-000007-2", "--ntasks=8", "--gpus-per-task=1",
                           "--requeue", "--signal=B:USR1@300", "--partition=gpu", "--qos=high", "--time=1:00:00",
                           "--constraint=a100", "--output=/store/jobs/job-000007/logs/slurm-%j.out"}) {
    EXPECT_THAT(c.argv, Contains(std::string(want)));
  }
  EXPECT_EQ(c.argv.back(), "--wrap=exec bash '/opt/retina/deploy/slurm/retina-slurm.sh' '/store/jobs/job-000007/job.yaml'");
  EXPECT_EQ(c.env.at("RETINA_JOB_ID"), "job-000007");
  EXPECT_EQ(c.env.at("RETINA_ATTEMPT_BASE"), "1");
  EXPECT_EQ(c.env.at("RETINA_TRAIN_ARGS"), "'--job-uid' 'u1' '--confine' '--allowed-root' '/data'");
  EXPECT_EQ(c.env.at("RETINA_BIN"), "/opt/retina/bin");
  EXPECT_EQ(c.env.count("RETINA_ELASTIC"), 0u) << "not elastic";
  // An elastic job: the whole allocation at world_size, the ranks told W:M
  // (their BatchNorm groups and, on a smaller allocation, accumulation).
  a.min_world_size = 2;
  EXPECT_EQ(SbatchCommand(o, a).env.at("RETINA_ELASTIC"), "8:2");
  EXPECT_THAT(SbatchCommand(o, a).argv, Contains(std::string("--ntasks=8")));
  a.min_world_size = 0;
  // CPU slots: cpus per task; a quote in a path stays one shell word.
  a.gpu = false;
  a.slots_per_rank = 4;
  a.config = "/store/it's/job.yaml";
  const SlurmCommand cpu = SbatchCommand(o, a);
  EXPECT_THAT(cpu.argv, Contains(std::string("--cpus-per-task=4")));
  EXPECT_THAT(cpu.argv.back(), HasSubstr("'/store/it'\\''s/job.yaml'"));
}

// The rank-launch contract (common/rank_launch.h) round trip: the argv
// deploy/slurm/retina-slurm.sh execs for a rank, built from the environment
// SbatchCommand gives it, is exactly RankLaunch::RunArgs, also for roots
// with spaces and quotes (RETINA_TRAIN_ARGS used to be split on spaces).
TEST(SlurmCommands, TheScriptLaunchesARankWithTheRecordsArgv) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "rank-launch";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "store/jobs/job-000003");
  const std::filesystem::path fake = dir / "retina-train", out = dir / "argv";
  std::ofstream(fake) << "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > " << out << "\n";
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  SlurmOptions o;
  o.script = std::string(RETINA_TEST_SOURCE_DIR) + "/deploy/slurm/retina-slurm.sh";
  SlurmAttempt a;
  a.job_id = "job-000003";
  a.job_uid = "0123abcd";
  a.attempt = 2;
  a.config = dir / "store/jobs/job-000003/job.yaml";
  std::ofstream(a.config) << "kind: pretrain\n";
  a.store = dir / "store";
  a.allowed_roots = {"/data/EM volumes", "/mnt/it's here"};
  a.output_roots = {"/out/$HOME;`x`"};
  const SlurmCommand c = SbatchCommand(o, a);
  std::string env;
  for (const auto& [k, v] : c.env) env += k + "=" + ShellQuote(v) + " ";
  // What _retina_main exports before it starts the ranks.
  env += "RETINA_CONFIG=" + ShellQuote(a.config.string()) + " RETINA_TRAIN=" + ShellQuote(fake.string()) +
         " RETINA_ATTEMPT=2 SLURM_PROCID=0 ";
  const std::string cmd = "env -i PATH=/usr/bin:/bin " + env + "bash " + o.script.string() + " --rank";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out, std::ios::binary);
  std::vector<std::string> argv;
  for (std::string arg; std::getline(in, arg, '\0');) argv.push_back(arg);
  EXPECT_EQ(argv, LaunchOf(a).RunArgs());
  EXPECT_TRUE(std::filesystem::exists(dir / "store/jobs/job-000003/logs/attempt-2/rank-0.log"));
}

TEST(SlurmCommands, ScontrolOneLinePerJob) {
  const std::string text =
      "JobId=41 JobName=retina-job-000001-1 UserId=root(0) GroupId=root(0) Priority=1 JobState=COMPLETED "
      "Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 RunTime=00:00:09\n"
      "JobId=42 JobName=retina-job-000002-1 JobState=PENDING Reason=BeginTime Restarts=1 ExitCode=0:15\n"
      "JobId=43 JobName=other JobState=FAILED Reason=NonZeroExitCode Restarts=0 ExitCode=1:0\n";
  const std::vector<SlurmJobInfo> jobs = ParseScontrolJobs(text);
  ASSERT_EQ(jobs.size(), 3u);
  EXPECT_EQ(jobs[0].slurm_id, "41");
  EXPECT_EQ(jobs[0].name, "retina-job-000001-1");
  EXPECT_EQ(jobs[0].state, "COMPLETED");
  EXPECT_EQ(jobs[1].reason, "BeginTime");
  EXPECT_EQ(jobs[1].restarts, 1);
  EXPECT_EQ(jobs[1].exit_signal, 15);
  EXPECT_EQ(jobs[2].exit_code, 1);
  EXPECT_TRUE(ParseScontrolJobs("No jobs in the system\n").empty());
}

TEST(SlurmCommands, StatesMapToOurs) {
  EXPECT_EQ(MapSlurmState("PENDING"), SlurmPhase::kPending);
  EXPECT_EQ(MapSlurmState("REQUEUED"), SlurmPhase::kPending);
  EXPECT_EQ(MapSlurmState("CONFIGURING"), SlurmPhase::kPending);
  EXPECT_EQ(MapSlurmState("RUNNING"), SlurmPhase::kRunning);
  EXPECT_EQ(MapSlurmState("COMPLETING"), SlurmPhase::kRunning);
  EXPECT_EQ(MapSlurmState("COMPLETED"), SlurmPhase::kSucceeded);
  EXPECT_EQ(MapSlurmState("CANCELLED"), SlurmPhase::kCancelled);
  for (const char* s : {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}) {
    EXPECT_EQ(MapSlurmState(s), SlurmPhase::kFailed) << s;
  }
}

TEST(SlurmCommands, CommandsReportTheirOutputExitAndTimeout) {
  absl::StatusOr<CommandResult> r = RunCommand({"sh", "-c", "echo out; echo err >&2; echo $X; exit 3"}, {{"X", "x1"}},
                                               absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->output, "out\nerr\nx1\n");
  EXPECT_EQ(RunCommand({"sleep", "30"}, {}, absl::Milliseconds(200)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(RunCommand({"no-such-command-retina"}, {}, absl::Seconds(5)).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace retina::coordinator
