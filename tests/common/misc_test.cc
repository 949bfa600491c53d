#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>

#include "common/cli.h"
#include "common/file_util.h"
#include "common/job_identity.h"
#include "common/logging.h"
#include "common/path_policy.h"
#include "common/rank_launch.h"
#include "common/store_layout.h"
#include "common/thread_plan.h"

namespace retina {
namespace {

// A program with a root flag, a group and two subcommands, as the mains build them.
struct Program {
  Cli cli{"prog", "A test program.", "extra 1"};
  int n = 1;
  std::string word;
  std::vector<std::string> sets;
  std::vector<std::string> ran;
  absl::Status result = absl::OkStatus();
  Program() {
    CLI::App* group = cli.Group("model", "model tools");
    CLI::App* info = cli.Command("info", "info", [this] {
      ran.push_back("info");
      return result;
    }, group);
    info->add_option("--n", n, "a count")->check(kPositiveInt);
    AddSetOption(info, &sets);
    cli.Command("exit", "own exit code", [this]() -> absl::StatusOr<int> {
      ran.push_back("exit");
      return 75;
    });
    cli.Command("throw", "a library throws", []() -> absl::Status {
      throw std::runtime_error("c10 says no\nException raised from somewhere");
    });
  }
  int Run(std::vector<std::string> args) { return cli.Run(args); }
};

TEST(Cli, HelpAndVersionPrintToStdoutAndSucceedWithoutRunning) {
  Program p;
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(p.Run({"model", "info", "--help"}), 0);
  const std::string help = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(help, ::testing::HasSubstr("--n"));
  EXPECT_THAT(help, ::testing::HasSubstr("a count"));
  Program q;
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(q.Run({"--version"}), 0);
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), std::string("prog ") + RETINA_VERSION + " (extra 1)\n");
  EXPECT_TRUE(p.ran.empty());
  EXPECT_TRUE(q.ran.empty());
}

TEST(Cli, FlagsTakeBothSpellingsAndRepeat) {
  Program p;
  EXPECT_EQ(p.Run({"model", "info", "--n=3", "--set", "a=1", "--set=b=2"}), 0);
  EXPECT_EQ(p.n, 3);
  EXPECT_THAT(p.sets, ::testing::ElementsAre("a=1", "b=2"));
  EXPECT_THAT(p.ran, ::testing::ElementsAre("info"));
}

TEST(Cli, ExitCodesFollowTheTable) {
  auto rc = [](std::vector<std::string> args, absl::Status result = absl::OkStatus()) {
    Program p;
    p.result = result;
    ::testing::internal::CaptureStderr();
    const int code = p.Run(args);
    ::testing::internal::GetCapturedStderr();
    return code;
  };
  EXPECT_EQ(rc({"model", "info", "--bogus"}), 2);      // unknown flag
  EXPECT_EQ(rc({"model", "info", "--n", "0"}), 2);     // fails its check
  EXPECT_EQ(rc({"model", "info", "--n", "x"}), 2);     // not an integer
  EXPECT_EQ(rc({}), 2);                                // a subcommand is required
  EXPECT_EQ(rc({"model"}), 2);                         // so is one of the group's
  EXPECT_EQ(rc({"model", "info"}, absl::InvalidArgumentError("bad")), 2);
  EXPECT_EQ(rc({"model", "info"}, absl::NotFoundError("gone")), 1);
  EXPECT_EQ(rc({"exit"}), 75);                         // an action's own code
  EXPECT_EQ(rc({"throw"}), 1);
}

TEST(Cli, ErrorsNameTheProgramAndOnlyALibraryMessagesFirstLine) {
  Program p;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(p.Run({"throw"}), 1);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "prog: c10 says no\n");
  Program q;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(q.Run({"model", "info", "--n", "0"}), 2);
  // CLI11 2.1 says "not in range 1 to N", 2.4 "not in range [1 - N]": the
  // program, the flag, the value, one line of the library's and our hint
  // are ours to guarantee.
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, ::testing::StartsWith("prog: --n: Value 0 not in range"));
  EXPECT_THAT(err, ::testing::EndsWith("\n(run prog --help for the flags)\n"));
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 2) << err;
}

TEST(Cli, KeyValuesNameTheFlag) {
  using KV = std::pair<std::string, std::string>;
  EXPECT_THAT(*ParseKeyValues("a=1,b=x=y", "--labels"), ::testing::ElementsAre(KV{"a", "1"}, KV{"b", "x=y"}));
  EXPECT_THAT(std::string(ParseKeyValues("a=1,b", "--labels").status().message()), ::testing::HasSubstr("--labels"));
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
  config.kind = JobKind::kFinetune;
  config.data.dataset = "em";
  config.finetune.init = "/etc/shadow";
  EXPECT_THAT(std::string(policy.CheckConfig(config).message()), ::testing::HasSubstr("finetune.init: /etc/shadow"));
  config.finetune.init = "random";
  EXPECT_TRUE(policy.CheckConfig(config).ok());
  fs::remove_all(dir);
}

// Outputs of a service job: inside its own directory (not its checkpoints/)
// or under an output root; never another user's job directory, a dataset
// or the store's top level, however spelled (relative, "..", a symlink in
// the job's own directory), and whatever the output roots say.
TEST(PathPolicy, OutputsGoOnlyIntoTheJobsOwnDirectoryOrAnOutputRoot) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / UniqueTempName("outputs-");
  const fs::path store = dir / "store", results = dir / "results";
  for (const fs::path& d : {store / "datasets" / "em", store / "jobs" / "job-000001" / "checkpoints",
                            store / "jobs" / "job-000002" / "predictions", store / "outputs", results}) {
    ASSERT_TRUE(CreateDirectories(d).ok());
  }
  fs::create_directory_symlink(store / "jobs" / "job-000002", store / "jobs" / "job-000001" / "theirs");
  for (const bool store_is_a_root : {false, true}) {
    SCOPED_TRACE(store_is_a_root ? "the store itself an output root" : "an output root beside the store");
    const PathPolicy policy(store, {}, store_is_a_root ? std::vector<fs::path>{store} : std::vector<fs::path>{results});
    const std::string own = "job-000001";
    auto out = [&](const std::string& value, const std::string& job) {
      return policy.CheckOutput("infer.output", policy.WeightsPath(value), job);
    };
    EXPECT_TRUE(out("jobs/job-000001/predictions", own).ok());
    EXPECT_TRUE(out("jobs/job-000001/run2/deeper", own).ok());
    EXPECT_EQ(out((results / "x").string(), "").ok(), !store_is_a_root) << "at submit: only an output root";
    EXPECT_EQ(out("outputs/mine", "").ok(), store_is_a_root);
    for (const auto& [value, job, why] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"jobs/job-000002", own, "another job's directory"},
             {"jobs/job-000002/checkpoints", own, "another job's directory"},
             {"jobs/job-000001/theirs/predictions", own, "another job's directory"},  // a symlink out
             {"jobs/job-000001/../job-000002/x", own, "another job's directory"},
             {"jobs/job-000001/predictions", "", "another job's directory"},  // at submit nobody's own yet
             {"jobs/job-000001", own, "this job's directory or its checkpoints"},
             {"jobs/job-000001/checkpoints", own, "this job's directory or its checkpoints"},
             {"datasets/em", own, "inside a dataset"},
             {"datasets/new", own, "inside a dataset"},
             {".", own, "the store's top level"},
             {"jobs", own, "the store's top level"},
             {"/etc", own, "not inside this job's directory or an output root"}}) {
      const absl::Status s = out(value, job);
      EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << value;
      EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("infer.output: ")) << value;
      EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(why)) << value;
    }
  }
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

// What a failed rank's job message carries: the first error line of its
// log (an E/F line or the program's final refusal), escaped and bounded.
// jobs/<id>/ATTEMPT fences a stale attempt off the store: it only moves
// forward, a newer claim supersedes every older attempt, and an older
// attempt can neither claim nor pass the check once a newer one started.
TEST(AttemptFence, ANewerAttemptSupersedesOlderOnesAndTheFenceNeverMovesBack) {
  const StoreLayout store(std::filesystem::path(::testing::TempDir()) / UniqueTempName("fence-"));
  EXPECT_TRUE(CheckAttemptCurrent(store, "j", 1).ok()) << "no ATTEMPT yet: nothing newer";
  ASSERT_TRUE(ClaimAttempt(store, "j", 1).ok());
  EXPECT_TRUE(ClaimAttempt(store, "j", 1).ok()) << "every rank of an attempt claims it";
  EXPECT_TRUE(CheckAttemptCurrent(store, "j", 1).ok());
  ASSERT_TRUE(ClaimAttempt(store, "j", 3).ok());
  const absl::Status stale = CheckAttemptCurrent(store, "j", 1);
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(stale.message()), ::testing::HasSubstr("attempt 1 of job j is superseded: attempt 3"));
  EXPECT_THAT(std::string(stale.message()), ::testing::HasSubstr((store.JobDir("j") / "ATTEMPT").string()));
  EXPECT_EQ(ClaimAttempt(store, "j", 2).code(), absl::StatusCode::kAborted) << "a late start of attempt 2";
  EXPECT_EQ(ReadFile(store.JobDir("j") / "ATTEMPT").value_or(""), "3\n") << "the fence moved back";
  EXPECT_TRUE(CheckAttemptCurrent(store, "j", 0).ok()) << "a standalone run is not fenced";
  EXPECT_TRUE(ClaimAttempt(store, "j", 0).ok());
  ASSERT_TRUE(WriteFileAtomic(store.JobDir("j") / "ATTEMPT", "x\n").ok());
  EXPECT_EQ(CheckAttemptCurrent(store, "j", 3).code(), absl::StatusCode::kDataLoss);
}

TEST(FirstErrorLine, TheFirstErrorOrRefusalEscapedAndBounded) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / UniqueTempName("firsterr-");
  ASSERT_TRUE(CreateDirectories(dir).ok());
  const auto log = dir / "rank-0.log";
  ASSERT_TRUE(WriteFileAtomic(log, "I1206 10:00:00.000 rank=0 trainer.cc:1] starting\n"
                                   "W1206 10:00:00.100 rank=0 trainer.cc:2] slow disk\n"
                                   "E1206 10:00:01.000 rank=0 shards.cc:9] sample 3: bad \x1b[31mcolour\t\n"
                                   "retina-train: data.dataset: damaged\n").ok());
  EXPECT_EQ(FirstErrorLine(log, "retina-train"), "E1206 10:00:01.000 rank=0 shards.cc:9] sample 3: bad \\x1b[31mcolour\\x09");
  ASSERT_TRUE(WriteFileAtomic(log, "I1206 10:00:00.000 rank=0 x.cc:1] starting\nEverything fine\n"
                                   "retina-train: infer.inputs[0]: /x is outside the store\n").ok());
  EXPECT_EQ(FirstErrorLine(log, "retina-train"), "retina-train: infer.inputs[0]: /x is outside the store");
  ASSERT_TRUE(WriteFileAtomic(log, "retina-train: " + std::string(2000, 'x') + "\n").ok());
  const std::string cut = FirstErrorLine(log, "retina-train", 100);
  EXPECT_EQ(cut.size(), 100u);
  EXPECT_EQ(cut.substr(97), "...");
  ASSERT_TRUE(WriteFileAtomic(log, "I1206 10:00:00.000 x.cc:1] all good\n").ok());
  EXPECT_EQ(FirstErrorLine(log, "retina-train"), "");
  EXPECT_EQ(FirstErrorLine(dir / "absent.log", "retina-train"), "");
  std::filesystem::remove_all(dir);
}

// The rank-launch contract (common/rank_launch.h) every launcher uses; the
// Slurm script's side is checked by running it (slurm_commands_test.cc).
TEST(RankLaunch, ArgvAndEnvironmentOfAServiceRank) {
  RankLaunch l;
  l.config = "/s/jobs/j/job.yaml";
  l.store = "/s";
  l.job_id = "j";
  l.job_uid = "u";
  l.attempt = 3;
  l.allowed_roots = {"/data"};
  l.output_roots = {"/out"};
  l.rank = 1;
  l.world_size = 4;
  l.local_rank = 0;
  l.local_world_size = 2;
  l.master_addr = "198.18.0.2";
  l.master_port = 29500;
  EXPECT_EQ(l.RunArgs(), (std::vector<std::string>{"run", "--config", "/s/jobs/j/job.yaml", "--store", "/s", "--job", "j",
                                                   "--resume", "auto", "--job-uid", "u", "--confine", "--allowed-root",
                                                   "/data", "--output-root", "/out"}));
  l.events_fd3 = true;
  EXPECT_EQ(l.RunArgs().back(), "fd:3");
  const std::map<std::string, std::string> env = l.Env();
  EXPECT_EQ(env.at("RANK"), "1");
  EXPECT_EQ(env.at("WORLD_SIZE"), "4");
  EXPECT_EQ(env.at("LOCAL_RANK"), "0");
  EXPECT_EQ(env.at("LOCAL_WORLD_SIZE"), "2");
  EXPECT_EQ(env.at("MASTER_ADDR"), "198.18.0.2");
  EXPECT_EQ(env.at("MASTER_PORT"), "29500");
  EXPECT_EQ(env.at("RETINA_JOB_ID"), "j");
  EXPECT_EQ(env.at("RETINA_ATTEMPT"), "3");
  EXPECT_EQ(ShellQuoteArgs({"a b", "it's"}), "'a b' 'it'\\''s'");
}

}  // namespace
}  // namespace retina
