// retina-train run, as a user runs it: real processes, a store on disk,
// signals. Exact resume after SIGKILL, SIGTERM -> exit 75 with a checkpoint,
// loss going down, fine-tuning from the pre-training checkpoint with the
// encoder frozen, and clear errors before training.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/checkpoint_store.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/tools/synth.h"
#include "trainer/data/formats/writers.h"
#include "trainer/engine/bf16_probe.h"
#include "trainer/scoring/metrics.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/weight_source.h"
#include "trainer/runtime/device.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kTrain = std::string(RETINA_TEST_TRAINER_DIR) + "/retina-train";

pid_t Start(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>(kTrain.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    setenv("OMP_NUM_THREADS", "1", 1);
    execv(kTrain.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Waits until the job has a checkpoint; false after `seconds`.
bool AwaitCheckpoint(const fs::path& ckpts, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (CheckpointStore(ckpts).Latest().ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

class Engine : public ::testing::Test {
 public:  // helpers shared with free functions below
  static void SetUpTestSuite() {
    tmp_ = new retina::testing::ScopedTempDir("engine-");
    const fs::path raw = tmp_->path() / "raw";
    fs::create_directories(raw);
    for (int i = 0; i < 16; ++i) {
      SynthOptions o;
      o.shape = {1, 128, 128};
      o.seed = i;
      ASSERT_TRUE(WriteTiff((raw / absl::StrCat("i", i, ".tif")).string(), Synthesize(o).image, false).ok());
    }
    PackOptions p;
    p.input = raw.string();
    p.out = tmp_->path() / "store/datasets/em";
    p.size = 64;
    ASSERT_TRUE(PackImages(p).ok());
    WriteConfig("pre.yaml", "kind: pretrain\nseed: 3\nmodel: {name: tiny, image_size: 64}\n"
                            "data: {dataset: em, loader_threads: 1}\n"
                            "pretrain: {epochs: 5, global_batch: 8, checkpoint_every_epochs: 1}\n");
  }
  static void TearDownTestSuite() { delete tmp_; }
  static void WriteConfig(const std::string& name, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic(tmp_->path() / name, text).ok());
  }
  static std::vector<std::string> RunArgs(const std::string& config, const std::string& job) {
    return {"run", "--config", (tmp_->path() / config).string(), "--store", (tmp_->path() / "store").string(), "--job", job};
  }
  static fs::path Ckpts(const std::string& job) { return tmp_->path() / "store/jobs" / job / "checkpoints"; }
  static StateDict Final(const std::string& job) {
    absl::StatusOr<CheckpointInfo> latest = CheckpointStore(Ckpts(job)).Latest();
    EXPECT_TRUE(latest.ok()) << latest.status();
    absl::StatusOr<StateDict> d = ReadStateDictFile(latest->dir / "model.pt");
    EXPECT_TRUE(d.ok()) << d.status();
    return *d;
  }
  // `where`, when given, gets the tensor with the largest difference.
  static double MaxRelDiff(const StateDict& a, const StateDict& b, std::string* where = nullptr) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const torch::Tensor x = a[i].second.to(torch::kDouble), y = b[i].second.to(torch::kDouble);
      if (x.numel() == 0) continue;
      const double d = ((x - y).abs().max() / (x.abs().max() + 1e-6)).item<double>();
      if (d > worst && where != nullptr) *where = a[i].first;
      worst = std::max(worst, d);
    }
    return worst;
  }
  // The loss of every step in events.jsonl, at full precision.
  static std::vector<double> EventLosses(const std::string& job) {
    std::vector<double> out;
    std::ifstream in(tmp_->path() / "store/jobs" / job / "events.jsonl");
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      if (j["event"] == "step") out.push_back(j["loss"].get<double>());
    }
    return out;
  }
  static std::vector<double> Losses(const std::string& job) {
    std::vector<double> out;
    std::ifstream in(tmp_->path() / "store/jobs" / job / "metrics.csv");
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ',');
      out.push_back(std::stod(f[2]));
    }
    return out;
  }
  static fs::path Log(const std::string& name) { return tmp_->path() / (name + ".log"); }
  // STORE/datasets/mito: a labelled synthetic benchmark, imported (once).
  static void EnsureLabelledDataset() {
    if (fs::exists(tmp_->path() / "store/datasets/mito/manifest.json")) return;
    for (const char* split : {"train", "test"}) {
      for (const char* sub : {"images", "masks"}) fs::create_directories(tmp_->path() / "bench" / split / sub);
      SynthOptions o;
      o.shape = {4, 128, 128};
      o.seed = split[1] == 'r' ? 7 : 8;
      const SynthVolume v = Synthesize(o);
      ASSERT_TRUE(WriteTiff((tmp_->path() / "bench" / split / "images/v.tif").string(), v.image, false).ok());
      ASSERT_TRUE(WriteTiff((tmp_->path() / "bench" / split / "masks/v.tif").string(), v.mask, false).ok());
    }
    ImportOptions io;
    io.kind = *LookupImportKind("folder");
    io.input = tmp_->path() / "bench";
    io.out = tmp_->path() / "store/datasets/mito";
    io.size = 64;
    ASSERT_TRUE(ImportBenchmark(io).ok());
  }
  static fs::path LogFor(const std::string& name) { return Log(name); }
  static fs::path StoreFor() { return tmp_->path() / "store"; }
  static std::vector<std::string> RunArgsFor(const std::string& c, const std::string& j) { return RunArgs(c, j); }
  static retina::testing::ScopedTempDir* tmp_;
};
retina::testing::ScopedTempDir* Engine::tmp_ = nullptr;

TEST_F(Engine, KilledRunResumesExactlyAndLossGoesDown) {
  ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  const std::vector<double> losses = Losses("whole");
  ASSERT_EQ(losses.size(), 40u);  // 64 patches / 8 = 8 steps x 5 epochs
  double first = 0, last = 0;
  for (int i = 0; i < 8; ++i) first += losses[i] / 8, last += losses[32 + i] / 8;
  EXPECT_LT(last, 0.8 * first) << "reconstruction loss did not go down";

  const pid_t pid = Start(RunArgs("pre.yaml", "killed"), Log("killed"));
  ASSERT_TRUE(AwaitCheckpoint(Ckpts("killed"), 60));
  kill(pid, SIGKILL);
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  absl::StatusOr<CheckpointInfo> at_kill = CheckpointStore(Ckpts("killed")).Latest();
  ASSERT_TRUE(at_kill.ok());
  ASSERT_LT(at_kill->step, 40) << "the run finished before it could be killed";
  ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "killed"), Log("killed"))), 0);  // --resume auto is the default
  // The store's records of the resumed job list each step once, in order,
  // with a wall-clock time; the events likewise.
  const std::vector<double> killed_losses = Losses("killed");
  ASSERT_EQ(killed_losses.size(), 40u) << *ReadFile(tmp_->path() / "store/jobs/killed/metrics.csv");
  {
    std::ifstream in(tmp_->path() / "store/jobs/killed/metrics.csv");
    std::string line;
    std::getline(in, line);
    EXPECT_THAT(line, HasSubstr(",time"));
    int64_t expect = 1;
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ',');
      EXPECT_EQ(std::stoll(f[0]), expect++) << line;
      EXPECT_GT(std::stod(f.back()), 1.7e9) << line;
    }
  }
  std::map<int64_t, int> step_events;
  for (absl::string_view l : absl::StrSplit(*ReadFile(tmp_->path() / "store/jobs/killed/events.jsonl"), '\n', absl::SkipEmpty())) {
    const nlohmann::json e = nlohmann::json::parse(l);
    if (e["event"] == "step") ++step_events[e["step"].get<int64_t>()];
  }
  EXPECT_EQ(step_events.size(), 40u);
  for (const auto& [step, n] : step_events) EXPECT_EQ(n, 1) << "step " << step;
  EXPECT_THAT(*ReadFile(tmp_->path() / "store/jobs/killed/events.jsonl"), HasSubstr("\"resumed\""));
  // Without a terminal, plain progress lines (rate, ETA) and checkpoint notes.
  EXPECT_THAT(*ReadFile(Log("killed")), HasSubstr("steps/s, ETA"));
  EXPECT_THAT(*ReadFile(Log("killed")), HasSubstr("checkpoint written"));
  const double diff = MaxRelDiff(Final("whole"), Final("killed"));
  std::printf("killed at step %lld; resumed final vs uninterrupted: max relative difference %.3g\n",
              static_cast<long long>(at_kill->step), diff);
  EXPECT_LT(diff, 1e-5);
}

TEST_F(Engine, SigtermCheckpointsExits75AndContinuesExactly) {
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  const pid_t pid = Start(RunArgs("pre.yaml", "term"), Log("term"));
  ASSERT_TRUE(AwaitCheckpoint(Ckpts("term"), 60));
  kill(pid, SIGTERM);
  ASSERT_EQ(Wait(pid), 75);
  absl::StatusOr<std::string> events = ReadFile(tmp_->path() / "store/jobs/term/events.jsonl");
  EXPECT_THAT(*events, HasSubstr("\"preempted\""));
  const int64_t stopped = CheckpointStore(Ckpts("term")).Latest()->step;
  EXPECT_LT(stopped, 40);
  ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "term"), Log("term"))), 0);
  EXPECT_LT(MaxRelDiff(Final("whole"), Final("term")), 1e-5);
}

// Every file of a checkpoint is usable from Python PyTorch as PyTorch users
// load files today (weights_only=True), and the optimizer state continues a
// C++ run in Python (tests/trainer/py/checkpoint_peer.py).
TEST_F(Engine, CheckpointFilesLoadInPythonWeightsOnlyAndTrainingContinues) {
  if (const std::string why = retina::testing::PythonMissing("torch"); !why.empty()) GTEST_SKIP() << why;
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  absl::StatusOr<CheckpointInfo> latest = CheckpointStore(Ckpts("whole")).Latest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  std::string out;
  EXPECT_EQ(retina::testing::RunPython("checkpoint_peer.py", latest->dir.string() + " tiny 64 1 1", &out), 0) << out;
  std::printf("%s", out.c_str());
}

TEST_F(Engine, CorruptedLatestFallsBackToThePreviousCheckpoint) {
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  std::vector<CheckpointInfo> all = CheckpointStore(Ckpts("whole")).List();
  ASSERT_GE(all.size(), 2u);
  {
    std::fstream f(all.back().dir / "model.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x42');
  }
  absl::StatusOr<CheckpointInfo> latest = CheckpointStore(Ckpts("whole")).Latest();
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->step, all[all.size() - 2].step);
}

TEST_F(Engine, FinetuneFromThePretrainCheckpointFreezesTheEncoder) {
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  EnsureLabelledDataset();
  WriteConfig("fine.yaml", "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
                           "data: {dataset: mito, val_dataset: mito, loader_threads: 1}\n"
                           "finetune: {iters: 30, global_batch: 4, init: jobs/whole/checkpoints, "
                           "eval_every_iters: 10, save_every_iters: 10, foreground_crop_p: 0.8}\n");
  ASSERT_EQ(Wait(Start(RunArgs("fine.yaml", "fine"), Log("fine"))), 0) << *ReadFile(Log("fine"));
  const std::vector<double> losses = Losses("fine");
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT((losses[27] + losses[28] + losses[29]) / 3, (losses[0] + losses[1] + losses[2]) / 3);
  const StateDict pre = Final("whole"), fine = Final("fine");
  std::map<std::string, torch::Tensor> p(pre.begin(), pre.end());
  int encoder = 0, frozen_equal = 0, decoder_changed = 0;
  for (const auto& [name, t] : fine) {
    if (name.rfind("transformer.encoder", 0) == 0) {
      ++encoder;
      frozen_equal += torch::equal(t, p.at(name));
    }
    if (name.rfind("decoder.", 0) == 0 && name.find("weight") != std::string::npos) decoder_changed += !p.count(name) || !torch::equal(t, p.at(name));
  }
  EXPECT_EQ(encoder, 34);  // tiny: 2 blocks x 16 tensors + encoder_norm (2)
  EXPECT_EQ(frozen_equal, encoder);
  EXPECT_GT(decoder_changed, 0);
  EXPECT_THAT(*ReadFile(tmp_->path() / "store/jobs/fine/events.jsonl"), HasSubstr("\"eval\""));

  // kind: evaluate over the held-out test split that import wrote.
  WriteConfig("eval.yaml", "kind: evaluate\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
                           "data: {dataset: mito-test}\n"
                           "evaluate: {checkpoint: jobs/fine/checkpoints/LATEST, mode: stack, overlap: 0.5}\n");
  ASSERT_EQ(Wait(Start(RunArgs("eval.yaml", "eval"), Log("eval"))), 0) << *ReadFile(Log("eval"));
  const nlohmann::json report = nlohmann::json::parse(*ReadFile(tmp_->path() / "store/jobs/eval/eval.json"));
  const double iou = report["mean_iou"];
  EXPECT_GT(iou, 0.0);
  EXPECT_LE(iou, 1.0);
  EXPECT_EQ(report["items"].size(), 1u);
  EXPECT_THAT(*ReadFile(tmp_->path() / "store/jobs/eval/events.jsonl"), HasSubstr("\"eval\""));
  std::printf("evaluation job: held-out mean IoU %.3f after 30 fine-tuning steps\n", iou);
}

// One resolver for finetune.init, evaluate.checkpoint and retina-infer
// --weights: every documented form names the same checkpoint, relative names
// are found in the store, a damaged model.pt is refused.
TEST_F(Engine, WeightsResolveFromEveryDocumentedForm) {
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  const fs::path store = tmp_->path() / "store";
  absl::StatusOr<CheckpointInfo> latest = CheckpointStore(Ckpts("whole")).Latest();
  ASSERT_TRUE(latest.ok());
  const fs::path want = latest->dir / "model.pt";
  for (const std::string& spec : std::vector<std::string>{"jobs/whole/checkpoints/LATEST", "jobs/whole/checkpoints", "jobs/whole",
                                 (Ckpts("whole") / "LATEST").string(), latest->dir.string(),
                                 "jobs/whole/checkpoints/" + latest->name, "jobs/whole/checkpoints/" + latest->name + "/model.pt"}) {
    absl::StatusOr<WeightSource> w = ResolveWeights(spec, store, "evaluate.checkpoint");
    ASSERT_TRUE(w.ok()) << spec << ": " << w.status();
    EXPECT_EQ(fs::canonical(w->file), fs::canonical(want)) << spec;
    EXPECT_EQ(fs::canonical(w->checkpoint_dir), fs::canonical(latest->dir)) << spec;
  }
  absl::StatusOr<WeightSource> missing = ResolveWeights("jobs/none/model.pt", store, "finetune.init");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("finetune.init 'jobs/none/model.pt'"));
  // A flipped byte in a copy of the checkpoint: its MANIFEST refuses it.
  const fs::path copy = tmp_->path() / "damaged-ckpt";
  fs::remove_all(copy);
  fs::copy(latest->dir, copy);
  {
    std::fstream f(copy / "model.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(300);
    const char c = static_cast<char>(f.get());
    f.seekp(300);
    f.put(static_cast<char>(c ^ 0x01));
  }
  for (const fs::path& spec : std::vector<fs::path>{copy, copy / "model.pt"}) {
    absl::StatusOr<WeightSource> damaged = ResolveWeights(spec.string(), store, "--weights");
    EXPECT_FALSE(damaged.ok()) << spec;
    EXPECT_THAT(std::string(damaged.status().message()), HasSubstr("model.pt")) << spec;
  }
}

// Two Gloo ranks of a long job; `fail` does something to rank 1 once they
// train; returns rank 0's exit status and the seconds it took to stop.
std::pair<int, double> TwoRanksThen(const std::string& job, const std::function<void(pid_t)>& fail) {
  const std::string port = std::to_string(20000 + (::getpid() + static_cast<int>(job.size()) * 7919) % 20000);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", port.c_str(), 1);
  std::vector<std::string> args = Engine::RunArgsFor("two.yaml", job);
  auto with = [&](const char* rank) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--world-size", "2", "--rank", rank});
    return a;
  };
  const pid_t r0 = Start(with("0"), Engine::LogFor(job + "0"));
  const pid_t r1 = Start(with("1"), Engine::LogFor(job + "1"));
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  const fs::path metrics = Engine::StoreFor() / "jobs" / job / "metrics.csv";
  const auto t_start = std::chrono::steady_clock::now();
  while (!fs::exists(metrics) || fs::file_size(metrics) < 200) {
    if (std::chrono::steady_clock::now() - t_start > std::chrono::seconds(60)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  fail(r1);
  const auto t_fail = std::chrono::steady_clock::now();
  const int status = Wait(r0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_fail).count();
  kill(r1, SIGKILL);
  Wait(r1);
  return {status, seconds};
}

// Two Gloo ranks of `config`; rank 1 gets `rank1_args` and RETINA_FAULTS
// `rank1_faults`. Returns rank 0's exit status once it ends (rank 1 is then
// killed, as the worker stops an attempt's other ranks).
int TwoRanksUntilRank0Ends(const std::string& config, const std::string& job, const std::vector<std::string>& rank1_args,
                           const std::string& rank1_faults) {
  const std::string port = std::to_string(20000 + (::getpid() + static_cast<int>(job.size()) * 7919) % 20000);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", port.c_str(), 1);
  std::vector<std::string> args = Engine::RunArgsFor(config, job);
  args.insert(args.end(), {"--world-size", "2", "--rank"});
  std::vector<std::string> args0 = args, args1 = args;
  args0.push_back("0");
  args1.push_back("1");
  args1.insert(args1.end(), rank1_args.begin(), rank1_args.end());
  const pid_t r0 = Start(args0, Engine::LogFor(job + "0"));
  if (!rank1_faults.empty()) setenv("RETINA_FAULTS", rank1_faults.c_str(), 1);
  const pid_t r1 = Start(args1, Engine::LogFor(job + "1"));
  unsetenv("RETINA_FAULTS");
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  const int status = Wait(r0);
  kill(r1, SIGKILL);
  Wait(r1);
  return status;
}

// Hang diagnosis (issue 31): rank 1 stalls just before collective #30 (a
// rank stuck in a read; its monitor still answers). Rank 0's collective
// times out and its error names the rank that never arrived, its host and
// the last collective it was seen at, and is tagged as a collective timeout
// (what the coordinator counts).
TEST_F(Engine, AStalledRankIsNamedWithItsHostAndTheLastCollectiveItReached) {
  WriteConfig("stall.yaml", "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n"
                            "pretrain: {epochs: 50, global_batch: 8}\nruntime: {collective_timeout_s: 3}\n");
  EXPECT_EQ(TwoRanksUntilRank0Ends("stall.yaml", "stall", {}, "collective.stall_at=30,collective.stall_rank=1"), 1);
  const std::string log0 = ReadFile(Log("stall0")).value_or(""), log1 = ReadFile(Log("stall1")).value_or("");
  EXPECT_THAT(log1, HasSubstr("stalling before collective #30"));
  EXPECT_THAT(log0, HasSubstr("gang failure (collective_timeout): rank 0 on "));
  EXPECT_THAT(log0, ::testing::ContainsRegex("rank 1 on [^ ]+ never arrived \\(its last: broadcast #29 \\(parameter [^)]+\\), "
                                             "completed\\); rank 0 waited 3 s"));
  EXPECT_THAT(log0, HasSubstr("flight recorder: the last "));
}

// A rank failing on its own inputs (here: a dataset its node lacks) after
// the gang formed ends the other rank's wait at once with its cause (the
// gang monitor's posted failure), not after the collective timeout (60 s
// here: a rank 0 that waited it out would say collective_timeout instead).
TEST_F(Engine, ARankFailingOnItsOwnInputsStopsTheOthersAtOnceWithItsCause) {
  WriteConfig("peer.yaml", "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n"
                           "pretrain: {epochs: 50, global_batch: 8}\nruntime: {collective_timeout_s: 60}\n");
  EXPECT_EQ(TwoRanksUntilRank0Ends("peer.yaml", "peer", {"--set", "data.dataset=absent"}, ""), 1);
  const std::string log0 = ReadFile(Log("peer0")).value_or(""), log1 = ReadFile(Log("peer1")).value_or("");
  EXPECT_THAT(log1, HasSubstr("data.dataset"));
  EXPECT_THAT(log0, HasSubstr("gang failure (peer_failed): rank 0 on "));
  EXPECT_THAT(log0, ::testing::ContainsRegex("abandoned: rank 1 on [^ ]+ failed: data.dataset"));
  EXPECT_THAT(log0, Not(HasSubstr("collective_timeout")));
}

TEST_F(Engine, ARankDyingOrStallingMidRunStopsTheOtherWithinTheTimeout) {
  WriteConfig("two.yaml", "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n"
                          "pretrain: {epochs: 50, global_batch: 8}\nruntime: {collective_timeout_s: 5}\n");
  auto [died, died_s] = TwoRanksThen("died", [](pid_t p) { kill(p, SIGKILL); });
  EXPECT_EQ(died, 1);
  EXPECT_LT(died_s, 20) << "rank 0 did not notice the dead peer in time";
  EXPECT_THAT(*ReadFile(Log("died0")), ::testing::ContainsRegex("gang failure \\((connection_lost|collective_timeout)\\): rank 0 on "));
  auto [stalled, stalled_s] = TwoRanksThen("stalled", [](pid_t p) { kill(p, SIGSTOP); });
  EXPECT_EQ(stalled, 1);
  EXPECT_LT(stalled_s, 20) << "rank 0 waited past the 5 s collective timeout";
  EXPECT_THAT(*ReadFile(Log("stalled0")), HasSubstr("gang failure (collective_timeout): rank 0 on "));
  EXPECT_THAT(*ReadFile(Log("stalled0")), HasSubstr("rank 0 waited 5 s"));
}

// runtime.precision: bf16 on the CPU, through the program a worker starts:
// where the CPU has bf16 units (and this machine's kernels pass the probe)
// the job trains under autocast, learns, says so in its log and keeps fp32
// weights in its checkpoints; elsewhere it is refused naming the field,
// before any checkpoint.
TEST_F(Engine, Bf16OnTheCpuTrainsWithFp32WeightsWhereTheUnitsAreAndIsRefusedElsewhere) {
  WriteConfig("pre-bf16.yaml", "kind: pretrain\nseed: 3\nmodel: {name: tiny, image_size: 64}\n"
                               "data: {dataset: em, loader_threads: 1}\nruntime: {precision: bf16}\n"
                               "pretrain: {epochs: 3, global_batch: 8, checkpoint_every_epochs: 1}\n");
  const int rc = Wait(Start(RunArgs("pre-bf16.yaml", "bf16"), Log("bf16")));
  const std::string log = ReadFile(Log("bf16")).value_or("");
  const absl::Status probe = DetectCpuBf16Units().any() ? ProbeCpuBf16Training() : absl::OkStatus();
  if (!DetectCpuBf16Units().any() || !probe.ok()) {
    EXPECT_NE(rc, 0) << log;
    EXPECT_THAT(log, HasSubstr("runtime.precision: bf16"));
    EXPECT_FALSE(CheckpointStore(Ckpts("bf16")).Latest().ok());
    GTEST_SKIP() << "no CPU bf16 here (refusal checked): "
                 << (probe.ok() ? "this CPU has neither avx512_bf16 nor amx_bf16" : probe.message());
  }
  ASSERT_EQ(rc, 0) << log;
  EXPECT_THAT(log, HasSubstr("bf16 autocast"));
  const std::vector<double> losses = Losses("bf16");
  ASSERT_EQ(losses.size(), 24u);  // 3 epochs of 64 tiles at batch 8
  for (double l : losses) ASSERT_TRUE(std::isfinite(l)) << log;
  const double first = (losses[0] + losses[1] + losses[2] + losses[3]) / 4;
  const double last = (losses[20] + losses[21] + losses[22] + losses[23]) / 4;
  EXPECT_LT(last, first) << log;
  for (const auto& [name, tensor] : Final("bf16")) {
    if (tensor.is_floating_point()) {
      ASSERT_EQ(tensor.scalar_type(), torch::kFloat) << name;
    }
  }
}

TEST_F(Engine, BadConfigAndMissingDataAreNamedBeforeTraining) {
  WriteConfig("nodata.yaml", "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: nope}\n");
  EXPECT_EQ(Wait(Start(RunArgs("nodata.yaml", "nodata"), Log("nodata"))), 1);
  EXPECT_THAT(*ReadFile(Log("nodata")), HasSubstr("data.dataset"));
  EXPECT_THAT(*ReadFile(Log("nodata")), HasSubstr("datasets/nope/manifest.json"));
  EXPECT_FALSE(fs::exists(tmp_->path() / "store/jobs/nodata"));
  WriteConfig("typo.yaml", "kind: pretrain\ndata: {dataset: em}\npretrain: {epochs: 1, global_bach: 8}\n");
  EXPECT_EQ(Wait(Start(RunArgs("typo.yaml", "typo"), Log("typo"))), 2);
  EXPECT_THAT(*ReadFile(Log("typo")), HasSubstr("pretrain.global_bach: unknown key (did you mean 'global_batch'?)"));
  WriteConfig("odd.yaml", "kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em}\npretrain: {global_batch: 7}\n");
  EXPECT_EQ(Wait(Start({"run", "--config", (tmp_->path() / "odd.yaml").string(), "--store", (tmp_->path() / "store").string(),
                        "--job", "odd", "--world-size", "2", "--rank", "0"}, Log("odd"))), 2);
  EXPECT_THAT(*ReadFile(Log("odd")), HasSubstr("pretrain.global_batch: 7 does not divide by the world size 2"));
}

TEST_F(Engine, RetinaInferSegmentsWithCheckpointNormalisationAndRefusesPretrainWeights) {
  const std::string infer = std::string(RETINA_TEST_TRAINER_DIR) + "/retina-infer";
  if (!fs::exists(Ckpts("whole"))) {
    ASSERT_EQ(Wait(Start(RunArgs("pre.yaml", "whole"), Log("whole"))), 0);
  }
  SynthOptions o;
  o.shape = {3, 40, 70};
  const fs::path input = tmp_->path() / "infer-in.tif";
  ASSERT_TRUE(WriteTiff(input.string(), Synthesize(o).image, false).ok());
  // Two fine-tuning steps give segmentation weights with state.json beside them.
  EnsureLabelledDataset();
  WriteConfig("quick.yaml", "kind: finetune\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
                            "data: {dataset: mito, loader_threads: 1}\nfinetune: {iters: 2, global_batch: 4}\n");
  ASSERT_EQ(Wait(Start(RunArgs("quick.yaml", "quick"), Log("quick"))), 0) << *ReadFile(Log("quick"));
  const fs::path weights = CheckpointStore(Ckpts("quick")).Latest()->dir / "model.pt";
  const fs::path out = tmp_->path() / "infer-out.h5";
  const std::string cmd = infer + " --weights " + weights.string() + " --input " + input.string() + " --out " +
                          out.string() + " --mode orthoplane --probabilities > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  absl::StatusOr<RawArray> labels = ReadHdf5(out.string(), "/labels");
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(labels->shape, (std::array<int64_t, 3>{3, 40, 70}));
  for (uint8_t v : labels->bytes) ASSERT_LE(v, 1);
  auto output_of = [](const std::string& c) {
    std::string text;
    FILE* p = popen((c + " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
    pclose(p);
    return text;
  };
  const fs::path pre = CheckpointStore(Ckpts("whole")).Latest()->dir / "model.pt";
  EXPECT_THAT(output_of(infer + " --weights " + pre.string() + " --input " + input.string() + " --out /tmp/x.tif"),
              HasSubstr("pre-training (reconstruction) checkpoint"));
  const fs::path bare = tmp_->path() / "bare.pt";
  fs::copy_file(weights, bare, fs::copy_options::overwrite_existing);
  EXPECT_THAT(output_of(infer + " --weights " + bare.string() + " --input " + input.string() + " --out /tmp/x.tif"),
              HasSubstr("no --mean/--std"));
}

TEST_F(Engine, RetinaEvalScoresFilesAndRejectsBadInput) {
  const std::string eval = std::string(RETINA_TEST_TRAINER_DIR) + "/retina-eval";
  SynthOptions o;
  o.shape = {4, 48, 48};
  o.classes = 3;
  const SynthVolume a = Synthesize(o);
  o.seed = 9;
  const SynthVolume b = Synthesize(o);
  const fs::path pa = tmp_->path() / "pred.tif", pb = tmp_->path() / "gt.tif", js = tmp_->path() / "eval.json";
  ASSERT_TRUE(WriteTiff(pa.string(), a.mask, false).ok());
  ASSERT_TRUE(WriteTiff(pb.string(), b.mask, false).ok());
  const std::string cmd = eval + " --pred " + pa.string() + " --gt " + pb.string() +
                          " --classes 1,2 --num-classes 3 --spacing 2,1,1 --json " + js.string() + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json j = nlohmann::json::parse(*ReadFile(js));
  Volume gt = b.mask;
  gt.spacing = {2, 1, 1};
  MetricOptions mo;
  mo.classes = {1, 2};
  const std::vector<ClassMetrics> direct = *ComputeMetrics(a.mask, gt, mo);
  ASSERT_EQ(j["classes"].size(), 2u);
  for (int k = 0; k < 2; ++k) {
    EXPECT_DOUBLE_EQ(j["classes"][k]["iou"].get<double>(), direct[k].iou);
    EXPECT_DOUBLE_EQ(j["classes"][k]["mfd"].get<double>(), direct[k].mfd);
  }
  // Shape mismatch, unknown classes, unreadable files: clear errors, non-zero exit.
  auto fails = [&](const std::string& args, const std::string& expect) {
    const std::string c = eval + " " + args + " 2>&1";
    std::string out;
    FILE* p = popen(c.c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    EXPECT_NE(pclose(p), 0) << c;
    EXPECT_THAT(out, HasSubstr(expect)) << c;
  };
  const fs::path small = tmp_->path() / "small.tif";
  o.shape = {4, 40, 48};
  ASSERT_TRUE(WriteTiff(small.string(), Synthesize(o).mask, false).ok());
  fails("--pred " + pa.string() + " --gt " + small.string(), "but ground truth is 4x40x48");
  fails("--pred " + pa.string() + " --gt " + pb.string() + " --num-classes 2", "holds class 2 but --num-classes is 2");
  fails("--pred " + (tmp_->path() / "absent.tif").string() + " --gt " + pb.string(), "absent.tif: no such file");
  fails("--pred " + pa.string() + " --gt " + pb.string() + " --classes 1,x", "--classes: Value x");
}

// `world` Gloo ranks of `config` for `job` with `args` and RETINA_FAULTS
// `faults`; returns every rank's exit status.
std::vector<int> RanksOf(const std::string& config, const std::string& job, int world,
                         const std::vector<std::string>& args, const std::string& faults) {
  static int run = 0;
  const std::string port = std::to_string(20000 + (::getpid() * 13 + 977 * ++run) % 20000);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", port.c_str(), 1);
  if (!faults.empty()) setenv("RETINA_FAULTS", faults.c_str(), 1);
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> a = Engine::RunArgsFor(config, job);
    a.insert(a.end(), {"--world-size", std::to_string(world), "--rank", std::to_string(r)});
    a.insert(a.end(), args.begin(), args.end());
    pids.push_back(Start(a, Engine::LogFor(absl::StrCat(job, "-", world, "-", r))));
  }
  unsetenv("RETINA_FAULTS");
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  std::vector<int> status;
  for (pid_t p : pids) status.push_back(Wait(p));
  return status;
}

// Elastic gangs (issue 32): a job of full size 4 and minimum 2 that loses
// hosts (every rank dies after a step, past its last checkpoint), resumes on
// 2 ranks with 2 micro-batches each, dies again, and grows back to 4 equals
// the uninterrupted 4-rank run in float64: the same final weights to 1e-10
// (gradient accumulation and BatchNorm groups of 2 ranks make the sums the
// same) and the same loss at every step (each step saw the same samples,
// augmented the same way). The resizes are events. float32: measured.
TEST_F(Engine, ElasticRunThatShrinksAndGrowsBackEqualsTheUninterruptedRun) {
  // 16 samples: 2 steps of 8 per epoch.
  const fs::path raw = tmp_->path() / "raw16";
  fs::create_directories(raw);
  for (int i = 0; i < 4; ++i) fs::copy_file(tmp_->path() / "raw" / absl::StrCat("i", i, ".tif"), raw / absl::StrCat("i", i, ".tif"));
  PackOptions p;
  p.input = raw.string();
  p.out = tmp_->path() / "store/datasets/em16";
  p.size = 64;
  ASSERT_TRUE(PackImages(p).ok());
  for (const char* precision : {"fp64", "fp32"}) {
    SCOPED_TRACE(precision);
    WriteConfig("elastic.yaml", absl::StrCat("kind: pretrain\nseed: 5\nmodel: {name: tiny, image_size: 32}\n"
                                             "data: {dataset: em16, loader_threads: 1}\n"
                                             "pretrain: {epochs: 3, global_batch: 8, checkpoint_every_epochs: 1}\n"
                                             "runtime: {precision: ", precision, ", collective_timeout_s: 60}\n"));
    const std::vector<std::string> elastic = {"--elastic", "4:2"};
    const std::string whole = absl::StrCat("whole-", precision), resized = absl::StrCat("resized-", precision);
    EXPECT_EQ(RanksOf("elastic.yaml", whole, 4, elastic, ""), std::vector<int>(4, 0));
    ASSERT_EQ(Losses(whole).size(), 6u) << "3 epochs of 16 samples in global batches of 8";
    // 4 ranks die after step 3 (LATEST: 2); 2 ranks resume, die after 5 (LATEST: 4); 4 finish.
    EXPECT_EQ(RanksOf("elastic.yaml", resized, 4, elastic, "train.crash_after_step=3"), std::vector<int>(4, 137));
    EXPECT_EQ(RanksOf("elastic.yaml", resized, 2, elastic, "train.crash_after_step=5"), std::vector<int>(2, 137));
    EXPECT_EQ(RanksOf("elastic.yaml", resized, 4, elastic, ""), std::vector<int>(4, 0));
    std::string tensor;
    const double weights = MaxRelDiff(Final(whole), Final(resized), &tensor);
    const std::vector<double> a = EventLosses(whole), b = EventLosses(resized);
    ASSERT_EQ(a.size(), b.size());
    double losses = 0;
    for (size_t i = 0; i < a.size(); ++i) losses = std::max(losses, std::abs(a[i] - b[i]) / std::abs(a[i]));
    std::printf("%s: 4 -> 2 -> 4 ranks vs 4 ranks: weights %.3g (%s), per-step losses %.3g (relative)\n", precision,
                weights, tensor.c_str(), losses);
    if (std::string(precision) == "fp64") {
      EXPECT_LT(weights, 1e-10);
      EXPECT_LT(losses, 1e-10);
      const std::string events = ReadFile(StoreFor() / "jobs" / resized / "events.jsonl").value_or("");
      EXPECT_THAT(events, HasSubstr("\"event\":\"resized\",\"v\":1,\"step\":2,\"from_world\":4,\"to_world\":2,"
                                    "\"from_accumulation\":1,\"to_accumulation\":2"));
      EXPECT_THAT(*ReadFile(Log(resized + "-2-0")), HasSubstr("resized: 4 -> 2 ranks, accumulation 1 -> 2 (global batch 8 kept)"));
      EXPECT_THAT(*ReadFile(Log(resized + "-4-0")), HasSubstr("resized: 2 -> 4 ranks, accumulation 2 -> 1"));
    } else {
      // float32: summing micro-batches and BatchNorm groups in another order
      // is round-off, which this training amplifies (GroupNorm biases near
      // zero after weight standardisation); its scale is what the same
      // uninterrupted run does with 2 threads per rank instead of 1.
      // Measured here: elastic 0.019, threads 1.3, both on near-zero
      // GroupNorm biases; per-step losses 2.4e-4. The bound: no worse than
      // twice what a thread count does, and at least 0.1 (5x the elastic
      // figure) for a CPU whose kernels happen to sum the same with 1 and 2
      // threads; losses within 1e-2 (40x). The algorithm is held to 1e-10
      // in float64 above.
      const std::string threads = "whole-fp32-2threads";
      EXPECT_EQ(RanksOf("elastic.yaml", threads, 4, {"--elastic", "4:2", "--set", "runtime.threads=2"}, ""),
                std::vector<int>(4, 0));
      std::string baseline_tensor;
      const double baseline = MaxRelDiff(Final(whole), Final(threads), &baseline_tensor);
      std::printf("fp32: 1 vs 2 threads per rank, uninterrupted: weights %.3g (%s)\n", baseline, baseline_tensor.c_str());
      EXPECT_LT(weights, std::max(0.1, 2 * baseline));
      EXPECT_LT(losses, 1e-2);
    }
  }
  // A size that is not a multiple of the minimum dividing the full size is refused, naming it.
  EXPECT_EQ(RanksOf("elastic.yaml", "three", 3, {"--elastic", "4:2"}, ""), std::vector<int>(3, 2));
  EXPECT_THAT(*ReadFile(Log("three-3-0")), HasSubstr("3 ranks is not a multiple of the minimum 2 that divides the full world size 4"));
}

}  // namespace
}  // namespace retina::trainer
